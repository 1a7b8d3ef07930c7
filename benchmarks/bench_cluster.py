#!/usr/bin/env python
"""rifscale on a Dask cluster: every execution mode side by side, and scale-out.

Three tables from one run; every timing is repeated with the sides interleaved in each
repeat, and the tables show medians and ratios of medians.

* **modes**, per case n x d (default 2e5x384): ``rifscale run CORPUS --out RUN --lam 1``
  as a user types it, in a subprocess (imports, connect, fit, factor, scores, store), in
  each mode users run: ``threads`` (the default), ``--processes`` (a LocalCluster of
  single-threaded worker processes), and ``external`` (``--scheduler FILE`` against a
  ``dask scheduler`` + ``W`` x ``dask worker --nthreads 1`` started here once per case
  and kept warm, as a long-lived cluster is; one unrecorded run warms it up). Beside them
  the in-memory float64 floor of ``bench_scale.py`` (one Hessian GEMM + one leverage GEMM
  on all cores). ``W`` = the number of cores.
* **strong scaling**: the same corpus on external clusters of 1, 2, 4, ... workers x 1
  thread (``--workers``), in process (``profile_cluster.py``'s breakdown: attribute +
  write, after a warm-up run on the same cluster), with speed-up and efficiency against
  1 worker, and the bytes the client sent and received per pass over the data.
* **weak scaling**: ``--rows-per-worker`` rows per worker (n = W x rows), same columns.
* **session**: two attributions on one corpus, each on the path and through one
  ``rifscale.Session``, with the bytes the workers read per call.
* **validate** (``--validate NxD``): ``rifscale validate`` on threads and on the external
  cluster.

The client's traffic per pass is counted at distributed's TCP frame layer in the client
process; it must stay ``<= 4 W p^2 8`` bytes (+ small messages) and not grow with n.

More workers than cores would time contention, not scale-out: the script refuses them
(exit 2) unless ``--oversubscribe``. The same command runs on a bigger machine:

    .venv/bin/python benchmarks/bench_cluster.py --cases 2e5x384 --workers 1,2 --repeats 3
    .venv/bin/python benchmarks/bench_cluster.py --cases 2e5x384,1e6x384 --workers 1,2,4,8,16 \\
        --rows-per-worker 1e5 --out benchmarks/results/cluster-<date>.json

Writes ``benchmarks/results/cluster-<date>.json`` (or ``--out``) and a Markdown summary beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bench_engine  # siblings
import bench_scale
import profile_cluster
from bench_engine import say, source_info, summary
from bench_scale import LAM, make_corpus, measure, ratios, run_child, run_rifscale

HERE = Path(__file__).resolve().parent
PROFILE = HERE / "profile_cluster.py"
MODES = ("threads", "processes", "external")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def check_workers(counts, oversubscribe: bool) -> None:
    """More single-threaded workers than cores measure contention: refuse with the reason."""
    too_many = [w for w in counts if w > cores()]
    if too_many and not oversubscribe:
        raise SystemExit(
            f"bench_cluster.py: --workers {','.join(map(str, counts))} asks for {max(too_many)} single-threaded "
            f"workers on a machine with {cores()} cores: the timings would measure CPU contention, not scale-out. "
            f"Use at most {cores()} workers here (run the same command on a bigger machine), or pass --oversubscribe "
            "to time it anyway.")


@contextlib.contextmanager
def external_cluster(workers: int, tmp: Path):
    """``dask scheduler`` + ``workers`` x ``dask worker --nthreads 1`` on 127.0.0.1, with the
    stack sampler every 100 ms as deploy/ starts them; yields the scheduler file once every
    worker is there."""
    from distributed import Client

    with profile_cluster.external_cluster(workers, 1, tmp, "auto", "100ms") as sched:
        with Client(scheduler_file=sched, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield Path(sched)


def mode_args(mode: str, sched: Path | None) -> list[str]:
    return {"threads": [], "processes": ["--processes"], "external": ["--scheduler", str(sched)]}[mode]


def bench_modes(n: int, d: int, tmp: Path, repeats: int, workers: int) -> dict:
    corpus, entry = make_corpus(n, d, tmp, None)
    runs = {m: [] for m in MODES}
    floors = []
    with external_cluster(workers, tmp) as sched:
        run_rifscale(corpus, tmp / "warm", LAM, tmp, f"warm-external-{n}x{d}", extra=mode_args("external", sched))
        for k in range(repeats):
            for mode in MODES:
                rec = run_rifscale(corpus, tmp / f"run-{mode}", LAM, tmp, f"{mode}-{n}x{d}-{k}",
                                   extra=mode_args(mode, sched))
                runs[mode].append(rec)
            floors.append(run_child("floor", {"corpus": str(corpus), "seed": bench_scale.SEED}, tmp, f"floor-{n}x{d}-{k}"))
            say(f"{n:,} x {d}: repeat {k + 1}/{repeats}: " + ", ".join(
                f"{m} {runs[m][-1]['wall_s']:.2f} s (fit {runs[m][-1]['manifest']['timings']['fit']:.2f}, "
                f"scores {runs[m][-1]['manifest']['timings']['scores']:.2f})" for m in MODES)
                + f"; floor {floors[-1]['child']['floor_s']:.2f} s")
    shutil.rmtree(corpus)
    wall = {m: [r["wall_s"] for r in runs[m]] for m in MODES}
    floor_s = [f["child"]["floor_s"] for f in floors]
    entry.update({
        "workers": workers,
        "wall_s": {m: summary(v) for m, v in wall.items()},
        "fit_s": {m: summary([r["manifest"]["timings"]["fit"] for r in runs[m]]) for m in MODES},
        "scores_s": {m: summary([r["manifest"]["timings"]["scores"] for r in runs[m]]) for m in MODES},
        "floor_s": summary(floor_s),
        "ratio_to_threads": {m: ratios(wall[m], wall["threads"]) for m in MODES},
        "ratio_to_floor": {m: ratios(wall[m], floor_s) for m in MODES},
        "runs": runs, "floor_runs": floors,
    })
    return entry


def session_child(spec: dict) -> dict:
    """Two attributions (lam 1, then lam 0.5) on a copy of the corpus, each written to a run
    directory: both on the path, then both through one rifscale.Session on the external
    cluster. Between the session's two calls every chunk file of the copy is overwritten
    with bytes no codec decodes: the second call succeeds only if it reads no chunk."""
    from distributed import Client

    import rifscale
    from rifscale.testing import spoil_chunks

    out = Path(spec["tmp"])
    corpus = out / "session-copy.zarr"
    shutil.rmtree(corpus, ignore_errors=True)
    shutil.copytree(spec["corpus"], corpus)
    calls, spoiled = [], 0
    with Client(scheduler_file=spec["scheduler"]) as client:
        rifscale.attribute(corpus, lam=2.0, client=client).to_zarr(out / "warm", overwrite=True)
        for how in ("path", "session"):
            session = None
            for k, lam in enumerate((1.0, 0.5)):
                if session and k == 1:
                    spoiled = spoil_chunks(corpus)
                t = time.perf_counter()
                if how == "session" and session is None:  # call 1 includes reading the corpus into the workers
                    session = rifscale.Session(corpus, client=client)
                res = session.attribute(lam=lam) if session else rifscale.attribute(corpus, lam=lam, client=client)
                res.to_zarr(out / f"{how}-{k}", overwrite=True)
                calls.append({"how": how, "call": k + 1, "lam": lam, "seconds": time.perf_counter() - t})
            if session:
                session.close()
    shutil.rmtree(corpus)
    return {"calls": calls, "chunk_files_spoiled_before_session_call_2": spoiled}


def bench_session(n: int, d: int, tmp: Path, repeats: int, workers: int) -> dict:
    corpus, entry = make_corpus(n, d, tmp, None)
    records = []
    with external_cluster(workers, tmp) as sched:
        for k in range(repeats):
            spec = {"corpus": str(corpus), "scheduler": str(sched), "tmp": str(tmp)}
            records.append(run_child_here("session", spec, tmp, f"session-{n}x{d}-{k}"))
            say(f"session {n:,} x {d}: " + ", ".join(f"{c['how']} call {c['call']} {c['seconds']:.2f} s"
                                                     for c in records[-1]["calls"]))
    shutil.rmtree(corpus)
    calls = [c for r in records for c in r["calls"]]

    def med(how, call):
        return summary([c["seconds"] for c in calls if c["how"] == how and c["call"] == call])

    entry.update({"workers": workers, "records": records,
                  "seconds": {f"{how}-{call}": med(how, call) for how in ("path", "session") for call in (1, 2)},
                  "chunk_files_spoiled": min(r["chunk_files_spoiled_before_session_call_2"] for r in records)})
    return entry


def bench_validate(n: int, d: int, tmp: Path, repeats: int, workers: int) -> dict:
    """``rifscale validate RUN --experiments accuracy --n-sizes 4`` on threads and on the
    external cluster, interleaved; the run made once on threads."""
    corpus, entry = make_corpus(n, d, tmp, None)
    run = tmp / "validate-run"
    run_rifscale(corpus, run, LAM, tmp, f"validate-base-{n}x{d}", keep=True)
    walls = {"threads": [], "external": []}
    bindir = Path(sys.executable).parent
    with external_cluster(workers, tmp) as sched:
        for k in range(repeats + 1):  # the first external one warms the workers up
            for mode in ("threads", "external"):
                cmd = [bindir / "rifscale", "validate", run, "--experiments", "accuracy", "--n-sizes", "4",
                       "--overwrite", *(["--scheduler", str(sched)] if mode == "external" else [])]
                rec = measure(cmd, tmp, f"validate-{mode}-{n}x{d}-{k}")
                if k:
                    walls[mode].append(rec["wall_s"])
            if k:
                say(f"validate {n:,} x {d}: threads {walls['threads'][-1]:.2f} s, external {walls['external'][-1]:.2f} s")
    shutil.rmtree(corpus)
    shutil.rmtree(run)
    entry.update({"workers": workers, "wall_s": {m: summary(v) for m, v in walls.items()},
                  "ratio": ratios(walls["external"], walls["threads"])})
    return entry


def run_child_here(kind: str, spec: dict, tmp: Path, label: str) -> dict:
    """A measured child of this script (``--child KIND SPEC``); returns its report."""
    spec = {**spec, "out": str(tmp / f"{label}.child.json")}
    spec_path = tmp / f"{label}.child-spec.json"
    spec_path.write_text(json.dumps(spec))
    measure([sys.executable, Path(__file__).resolve(), "--child", kind, spec_path], tmp, label)
    return json.loads(Path(spec["out"]).read_text())


def profile_on(corpus: Path, workers: int, tmp: Path, repeats: int) -> dict:
    """profile_cluster.py in a child against a fresh external cluster of ``workers``: the
    first run warms the workers up and is dropped."""
    with external_cluster(workers, tmp) as sched:
        out = tmp / f"profile-{workers}"
        cmd = [sys.executable, PROFILE, corpus, "--mode", "external", "--scheduler", sched, "--workers", str(workers),
               "--repeats", str(repeats + 1), "--lam", str(LAM), "--tmp", tmp, "--out", out]
        measure(cmd, tmp, f"profile-{workers}-{corpus.name}")
        result = json.loads(Path(f"{out}.json").read_text())
    result["runs"] = result["runs"][1:]
    return result


def _pass_traffic(runs: list[dict]) -> dict:
    """Client bytes per pass over the training rows (every Newton pass of the main fit)."""
    sent, received = [], []
    for r in runs:
        for e in r["stages"]:
            if e["stage"] == "pass" and e["depth"] == 1:
                sent.append(e["sent"])
                received.append(e["received"])
    return {"sent_max": max(sent), "received_max": max(received), "passes": len(sent) // max(len(runs), 1)}


def scaling_row(n: int, d: int, workers: int, result: dict) -> dict:
    seconds = [r["seconds"] for r in result["runs"]]
    traffic = _pass_traffic(result["runs"])
    p = d + 1
    return {"n": n, "d": d, "workers": workers, "seconds": summary(seconds),
            "fit_s": summary([r["fit"] for r in result["runs"]]),
            "scores_s": summary([e["seconds"] for r in result["runs"] for e in r["stages"]
                                 if e["stage"] == "scores pass + store"]),
            "traffic": traffic, "bound_bytes": 4 * workers * p * p * 8}


def bench_strong(n: int, d: int, counts, tmp: Path, repeats: int) -> list[dict]:
    corpus, _ = make_corpus(n, d, tmp, None)
    rows = []
    for w in counts:
        rows.append(scaling_row(n, d, w, profile_on(corpus, w, tmp, repeats)))
        say(f"strong {n:,} x {d}, {w} worker(s): {rows[-1]['seconds']['median']:.2f} s")
    shutil.rmtree(corpus)
    for r in rows:  # against the first (smallest) worker count
        r["speedup"] = rows[0]["seconds"]["median"] / r["seconds"]["median"]
        r["efficiency"] = r["speedup"] * rows[0]["workers"] / r["workers"]
    return rows


def bench_weak(rows_per_worker: int, d: int, counts, tmp: Path, repeats: int) -> list[dict]:
    rows = []
    for w in counts:
        n = rows_per_worker * w
        corpus, _ = make_corpus(n, d, tmp, None)
        rows.append(scaling_row(n, d, w, profile_on(corpus, w, tmp, repeats)))
        shutil.rmtree(corpus)
        say(f"weak {n:,} x {d}, {w} worker(s): {rows[-1]['seconds']['median']:.2f} s")
    for r in rows:
        r["efficiency"] = rows[0]["seconds"]["median"] / r["seconds"]["median"]
    return rows


def _s(x: dict) -> str:
    return f"{x['median']:.2f}"


def markdown(result: dict) -> str:
    out = [f"# rifscale on a Dask cluster ({result['date']})", "",
           f"Machine: {result['machine']['cpus']} cores, {result['machine']['memory_gib']:.0f} GiB; "
           f"source {result['source'].get('commit', '?')}; {result['repeats']} repeats, sides interleaved; "
           "medians (wall seconds).", ""]
    if result["modes"]:
        out += ["## Execution modes: `rifscale run CORPUS --out RUN --lam 1` (subprocess, imports included)", "",
                "| n x d | floor | threads | --processes | external (warm) | processes / threads | "
                "external / threads | external / floor | fit: threads / processes / external | "
                "scores: threads / processes / external |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for e in result["modes"]:
            r = e["ratio_to_threads"]
            out.append(
                f"| {e['n']:.0e} x {e['d']} | {_s(e['floor_s'])} | {_s(e['wall_s']['threads'])} | "
                f"{_s(e['wall_s']['processes'])} | {_s(e['wall_s']['external'])} | "
                f"{r['processes']['of_medians']:.2f} | {r['external']['of_medians']:.2f} | "
                f"{e['ratio_to_floor']['external']['of_medians']:.2f} | "
                + " / ".join(_s(e["fit_s"][m]) for m in MODES) + " | "
                + " / ".join(_s(e["scores_s"][m]) for m in MODES) + " |")
        out += ["", f"External: `dask scheduler` + {result['modes'][0]['workers']} x `dask worker --nthreads 1` "
                "on 127.0.0.1, started once per case and warmed up by one unrecorded run.", ""]
    if result.get("session"):
        e = result["session"]
        out += ["## One corpus, two calls: `rifscale.attribute(path)` twice vs one `rifscale.Session`", "",
                f"n x d = {e['n']:.0e} x {e['d']}, external cluster of {e['workers']} workers; attribute + "
                "`to_zarr` per call (lam 1, then lam 0.5); the session's call 1 includes opening the session "
                "(reading the corpus into the workers), its call 2 starts the fit from call 1's θ̂ (the session's "
                "default). Before the session's second call all "
                f"{e['chunk_files_spoiled']} chunk files of the corpus were overwritten with bytes no codec decodes: "
                "it read none of them.", "",
                "| | call 1 | call 2 | call 1 / call 2 |", "|---|---:|---:|---:|"]
        for how in ("path", "session"):
            a, b = e["seconds"][f"{how}-1"]["median"], e["seconds"][f"{how}-2"]["median"]
            out.append(f"| {how} | {a:.2f} | {b:.2f} | {a / b:.2f} |")
        out.append("")
    if result.get("validate"):
        e = result["validate"]
        out += ["## `rifscale validate RUN --experiments accuracy --n-sizes 4`", "",
                f"n x d = {e['n']:.0e} x {e['d']}: threads {_s(e['wall_s']['threads'])} s, external cluster "
                f"({e['workers']} workers) {_s(e['wall_s']['external'])} s: ratio "
                f"{e['ratio']['of_medians']:.2f}.", ""]
    for kind, rows in (("Strong scaling", result["strong"]), ("Weak scaling", result["weak"])):
        if not rows:
            continue
        out += [f"## {kind}: attribute + write in process, external cluster, 1 thread per worker", "",
                "| n x d | workers | seconds | speed-up | efficiency | fit | scores | client bytes in / out per pass "
                "(max) | bound 4 W p² 8 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            t = r["traffic"]
            out.append(f"| {r['n']:.0e} x {r['d']} | {r['workers']} | {_s(r['seconds'])} | "
                       f"{r.get('speedup', float('nan')):.2f} | {r['efficiency']:.2f} | {_s(r['fit_s'])} | "
                       f"{_s(r['scores_s'])} | {t['received_max'] / 1e6:.2f} MB / {t['sent_max'] / 1e3:.1f} kB | "
                       f"{r['bound_bytes'] / 1e6:.2f} MB |")
        out.append("")
    return "\n".join(out)


def _case(text: str) -> tuple[int, int]:
    n, d = text.lower().split("x")
    return int(float(n)), int(d)


CHILDREN = {"session": session_child}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        spec = json.loads(Path(argv[2]).read_text())
        Path(spec["out"]).write_text(json.dumps(CHILDREN[argv[1]](spec), default=str))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="2e5x384", help="n x d of the modes table, comma-separated ('none' skips it)")
    ap.add_argument("--strong", default=None, help="n x d of the strong-scaling table (default: the first case; 'none')")
    ap.add_argument("--workers", default=None, help="worker counts for scaling, e.g. 1,2,4 (default 1..cores, powers of 2)")
    ap.add_argument("--rows-per-worker", type=lambda s: int(float(s)), default=100_000,
                    help="rows per worker of the weak-scaling table (0 skips it)")
    ap.add_argument("--weak-d", type=int, default=384)
    ap.add_argument("--session", default=None, help="n x d of the session table (default: the first case; 'none')")
    ap.add_argument("--validate", default="none", help="n x d of the validate table (default 'none'), e.g. 2e5x384")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--oversubscribe", action="store_true", help="allow more workers than cores")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine before each timed run")
    ap.add_argument("--tmpdir", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")] if args.workers else \
        [w for w in (1, 2, 4, 8, 16, 32, 64) if w <= cores()]
    check_workers(counts, args.oversubscribe)
    if args.no_wait:
        bench_engine.WAIT_FOR_QUIET = False
    cases = [] if args.cases == "none" else [_case(c) for c in args.cases.split(",")]
    strong = None if args.strong == "none" else (_case(args.strong) if args.strong else (cases[0] if cases else None))
    session = None if args.session == "none" else (_case(args.session) if args.session else (cases[0] if cases else None))
    validate = None if args.validate == "none" else _case(args.validate)
    date = _dt.date.today().isoformat()
    out = args.out or HERE / "results" / f"cluster-{date}.json"
    import psutil

    result = {"date": date, "repeats": args.repeats, "source": source_info(),
              "machine": {"cpus": cores(), "memory_gib": psutil.virtual_memory().total / 2**30},
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "modes": [], "strong": [], "weak": [], "session": None, "validate": None}
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        tmp = Path(tmp)
        for n, d in cases:
            result["modes"].append(bench_modes(n, d, tmp, args.repeats, cores()))
        if session:
            result["session"] = bench_session(*session, tmp, args.repeats, cores())
        if validate:
            result["validate"] = bench_validate(*validate, tmp, args.repeats, cores())
        if strong:
            result["strong"] = bench_strong(*strong, counts, tmp, args.repeats)
        if args.rows_per_worker:
            result["weak"] = bench_weak(args.rows_per_worker, args.weak_d, counts, tmp, args.repeats)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(result))
    say(f"wrote {out} and {out.with_suffix('.md')}")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
