#!/usr/bin/env python
"""`rifscale tune` over 13 λ against scikit-learn's ``LogisticRegressionCV(cv=5)`` over the
same 13 values, on the same corpus (issue 18: tune ≥ 3x faster than the cross-validation,
and ≤ 13 x one ``rifscale run``).

One synthetic corpus (``_synth.py``, float32, 5 000 test rows, default ingest chunking),
then, each once (``--repeats`` for more), in child processes timed from the outside
(imports, reading the corpus and writing the outputs included: what a user waits for):

* ``rifscale tune CORPUS --out TUNE`` with the default grid (13 values over
  1e-3..1e3 x E‖x‖²) and ``--exact-loo N`` (default 100, at the chosen λ), and the same
  with ``--exact-loo 0``;
* ``rifscale run CORPUS --out RUN --lam <chosen>``: one run at the chosen λ;
* scikit-learn ``LogisticRegressionCV(Cs=[1/λ of the grid], cv=5,
  scoring="neg_log_loss")`` (C = 1/λ is the same sum-form objective, intercept
  unpenalised; solver ``--sklearn-solver``, default lbfgs, scikit-learn's default), on
  the training rows read from the corpus into memory in the child (its read time is
  reported apart), ``max_iter`` ``--sklearn-max-iter`` (default 1000, so that small λ
  converge);
* and ``LogisticRegressionCV(Cs=13, cv=5)`` as the issue words it: scikit-learn's own
  grid (C over 1e-4..1e4), accuracy scoring, ``max_iter=100``.

Reported: wall times, the ratios, each side's chosen λ and the test log-loss at it (from
the tune's table for rifscale; ``predict_proba`` of the refitted model for scikit-learn).

    .venv-peers/bin/python benchmarks/bench_tune.py --rifscale .venv/bin/rifscale
    .venv/bin/python benchmarks/bench_tune.py --n 3000 --d 16 --quick   # smoke run

Writes ``benchmarks/results/tune-<date>[-quick].json`` and a Markdown summary beside it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _synth import write_corpus  # noqa: E402
from bench_engine import OtherLoad, _blas, _cpu_model, say, source_info, wait_quiet  # noqa: E402

SEED = 2026

SKLEARN_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, zarr
from sklearn.linear_model import LogisticRegressionCV
spec = json.loads(sys.argv[1])
g = zarr.open_group(spec["corpus"], mode="r")
X, y = np.asarray(g["train/X"][...]), np.asarray(g["train/y"][...])
Xt, yt = np.asarray(g["test/X"][...]), np.asarray(g["test/y"][...])
t1 = time.perf_counter()
if spec["defaults"]:  # the issue's words: its own grid (13 C over 1e-4..1e4), accuracy, max_iter 100
    cv = LogisticRegressionCV(Cs=13, cv=5, n_jobs=spec["n_jobs"])
else:
    cv = LogisticRegressionCV(Cs=[1.0 / lam for lam in spec["lams"]], cv=5, scoring="neg_log_loss",
                              solver=spec["solver"], max_iter=spec["max_iter"], n_jobs=spec["n_jobs"])
cv.fit(X, y)
t2 = time.perf_counter()
p = np.clip(cv.predict_proba(Xt)[:, 1], 1e-300, 1 - 1e-16)
test_logloss = float(-np.mean(yt * np.log(p) + (1 - yt) * np.log1p(-p)))
import sklearn
print(json.dumps({"read_s": t1 - t0, "fit_s": t2 - t1, "lam": 1.0 / float(cv.C_[0]),
                  "n_iter_max": int(np.max(cv.n_iter_)), "test_logloss": test_logloss,
                  "sklearn": sklearn.__version__}))
"""


def timed(cmd: list[str], *, env=None) -> tuple[float, str, dict]:
    """Wall time of a child process, its stdout, and the other processes' load."""
    wait_quiet()
    with OtherLoad() as load:
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout, load.record()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--exact-loo", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--rifscale", default=str(Path(sys.executable).parent / "rifscale"),
                    help="the rifscale console script (default: this interpreter's)")
    ap.add_argument("--peers-python", default=sys.executable, help="python with scikit-learn (default: this one)")
    ap.add_argument("--sklearn-solver", default="lbfgs")
    ap.add_argument("--sklearn-max-iter", type=int, default=1000)
    ap.add_argument("--sklearn-jobs", type=int, default=None, help="LogisticRegressionCV n_jobs (default None: 1)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine before each timing")
    ap.add_argument("--quick", action="store_true", help="name the result -quick (a smoke run)")
    ap.add_argument("--tmpdir", help="where the corpus and outputs go (default: a temporary directory)")
    ap.add_argument("--out", help="result JSON (default benchmarks/results/tune-<date>[-quick].json)")
    args = ap.parse_args(argv)
    if args.no_wait:
        import bench_engine

        bench_engine.WAIT_FOR_QUIET = False
    date = _dt.date.today().isoformat()
    out = Path(args.out or HERE / "results" / f"tune-{date}{'-quick' if args.quick else ''}.json")
    tmp = Path(tempfile.mkdtemp(prefix="bench-tune-", dir=args.tmpdir))
    try:
        corpus = tmp / "corpus.zarr"
        say(f"writing a {args.n} x {args.d} corpus")
        write_corpus(corpus, args.n, args.d, seed=SEED)
        rows = []
        for rep in range(args.repeats):
            row = {"repeat": rep}
            for name, extra in (("tune", ["--exact-loo", str(args.exact_loo)]),
                                ("tune_no_exact", ["--exact-loo", "0"])):
                target = tmp / f"{name}-{rep}"
                say(f"rifscale tune {' '.join(extra)}")
                wall, _, load = timed([args.rifscale, "tune", str(corpus), "--out", str(target), "-q", *extra])
                manifest = json.loads((target / "manifest.json").read_text())
                row[name] = {"wall_s": wall, "load": load, "lam": manifest["best"]["lam"],
                             "lams": manifest["grid"]["lams"], "timings": manifest["timings"]}
                if name == "tune":
                    import pandas as pd

                    table = pd.read_parquet(target / "table.parquet")
                    best = table[table["selected"]].iloc[0]
                    row[name] |= {"test_logloss": float(best["test_logloss"]),
                                  "loo_logloss": float(best["loo_logloss"]),
                                  "exact_logloss": float(best["exact_logloss"]),
                                  "sample_logloss": float(best["sample_logloss"]),
                                  "exact_seconds": float(best["exact_seconds"]),
                                  "fit_passes": [int(v) for v in table["fit_passes"]],
                                  "step_seconds": [round(float(v), 3) for v in table["seconds"]]}
            lam = row["tune"]["lam"]
            say(f"rifscale run --lam {lam:.6g}")
            wall, _, load = timed([args.rifscale, "run", str(corpus), "--out", str(tmp / f"run-{rep}"), "--lam",
                                   repr(lam), "-q"])
            row["run"] = {"wall_s": wall, "load": load}
            for name, defaults in (("sklearn", False), ("sklearn_defaults", True)):
                spec = {"corpus": str(corpus), "lams": row["tune"]["lams"], "solver": args.sklearn_solver,
                        "max_iter": args.sklearn_max_iter, "n_jobs": args.sklearn_jobs, "defaults": defaults}
                say(f"scikit-learn LogisticRegressionCV (cv=5, {'Cs=13, its defaults' if defaults else 'our grid'})")
                wall, stdout, load = timed([args.peers_python, "-c", SKLEARN_CHILD, json.dumps(spec)])
                row[name] = {"wall_s": wall, "load": load, **json.loads(stdout.strip().splitlines()[-1])}
            row["ratios"] = {"sklearn_over_tune": row["sklearn"]["wall_s"] / row["tune"]["wall_s"],
                             "sklearn_defaults_over_tune": row["sklearn_defaults"]["wall_s"] / row["tune"]["wall_s"],
                             "tune_over_run": row["tune"]["wall_s"] / row["run"]["wall_s"],
                             "tune_no_exact_over_run": row["tune_no_exact"]["wall_s"] / row["run"]["wall_s"]}
            rows.append(row)
            say(json.dumps(row["ratios"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"date": date, "n": args.n, "d": args.d, "seed": SEED, "exact_loo": args.exact_loo,
              "sklearn_solver": args.sklearn_solver, "sklearn_n_jobs": args.sklearn_jobs,
              "sklearn_max_iter": args.sklearn_max_iter,
              "machine": {"cpu_model": _cpu_model(), "cpus": len(os.sched_getaffinity(0)), "blas": _blas(),
                          "loadavg_at_end": os.getloadavg()},
              "source": source_info(), "repeats": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    say(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def markdown(res: dict) -> str:
    lines = [f"# rifscale tune vs scikit-learn LogisticRegressionCV, {res['date']}", "",
             f"Machine: {res['machine']['cpu_model']}, {res['machine']['cpus']} CPUs (shared with other users: "
             "see the load columns). Code: commit "
             f"{(res['source']['commit'] or '?')[:10]}{' + local changes' if res['source']['rifscale_locally_modified'] else ''}.",
             f"Data: `_synth.py` seed {res['seed']}, n = {res['n']:,}, d = {res['d']}, float32, 5,000 test rows. "
             "Wall time of each child process (imports, reading and writing included). scikit-learn: "
             f"`LogisticRegressionCV(Cs=[1/λ of rifscale's grid], cv=5, scoring='neg_log_loss', "
             f"solver='{res['sklearn_solver']}', max_iter={res.get('sklearn_max_iter', 1000)}, "
             f"n_jobs={res['sklearn_n_jobs']})`, tol 1e-4 (its default); and, as the issue words it, "
             "`LogisticRegressionCV(Cs=13, cv=5)` (its own grid C = 1e-4..1e4, accuracy scoring, max_iter 100).", "",
             "| repeat | tune (exact LOO {0}) s | tune (no exact) s | run s | sklearn CV, our grid s | "
             "sklearn `Cs=13, cv=5` s | sklearn / tune (our grid, Cs=13) | tune / run | "
             "other load (tune, run, sklearn, sklearn Cs=13) |".format(res["exact_loo"]),
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["repeats"]:
        names = ("tune", "run", "sklearn", "sklearn_defaults")
        loads = ", ".join(f"{r[k]['load']['other_processes_cpu_share']:.0%}" for k in names if k in r)
        lines.append(f"| {r['repeat']} | {r['tune']['wall_s']:.1f} | {r['tune_no_exact']['wall_s']:.1f} | "
                     f"{r['run']['wall_s']:.1f} | {r['sklearn']['wall_s']:.1f} | "
                     f"{r['sklearn_defaults']['wall_s']:.1f} | {r['ratios']['sklearn_over_tune']:.1f}x, "
                     f"{r['ratios']['sklearn_defaults_over_tune']:.1f}x | {r['ratios']['tune_over_run']:.1f}x | "
                     f"{loads} |")
    r = res["repeats"][-1]
    t, s = r["tune"], r["sklearn"]
    lines += ["", f"* chosen λ: rifscale {t['lam']:.4g} (test log-loss {t['test_logloss']:.5f}; approximate LOO "
              f"log-loss {t['loo_logloss']:.5f}), scikit-learn {s['lam']:.4g} (test log-loss {s['test_logloss']:.5f}).",
              f"* exact LOO of {res['exact_loo']} rows at the chosen λ: log-loss {t['exact_logloss']:.5f} vs approximate "
              f"{t['sample_logloss']:.5f} on the same rows; it took {t['exact_seconds']:.1f} s of the tune.",
              f"* tune: Newton passes per λ (ascending λ) {t['fit_passes']}; seconds per λ {t['step_seconds']}.",
              f"* scikit-learn: read {s['read_s']:.1f} s, fit {s['fit_s']:.1f} s (most iterations {s['n_iter_max']}).",
              f"* scikit-learn `Cs=13, cv=5`: fit {r['sklearn_defaults']['fit_s']:.1f} s, chose λ = 1/C = "
              f"{r['sklearn_defaults']['lam']:.4g} (test log-loss {r['sklearn_defaults']['test_logloss']:.5f}; most "
              f"iterations {r['sklearn_defaults']['n_iter_max']}).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
