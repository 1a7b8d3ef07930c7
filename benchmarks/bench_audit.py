"""Flip-set audits on three data sets, each set checked again by the dense reference.

For each data set: ``rifscale.audit`` of the 10 least robust test points, 5 seeded random
test points and an accuracy drop of 1 %; then, independently, every reported flip set is
retrained by the dense float64 reference (``rifscale.testing.Reference``): the set must
flip its point, and the set less any one member must not (minimality). Reported: sizes,
lower bounds, gaps, predicted (IF, RIF, NS) vs exact margin changes, retrains, rounds and
wall times.

    .venv/bin/python benchmarks/bench_audit.py [--data demo dgtn tall] [--out FILE]

``demo``: the embedded Fashion-MNIST pair (n = 1000, d = 196, λ = 0.1); ``dgtn``: a
synthetic d > n problem (n = 150, d = 300, λ = 1); ``tall``: a synthetic n ≫ p problem
(n = 20 000, d = 8, λ = 1), where leverages are small and the lower bound says most.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import dask
import numpy as np

import rifscale
from rifscale.demo import demo_data_path
from rifscale.testing import Reference, make_problem

from bench_engine import _cpu_model  # noqa: E402  (the script's folder is on sys.path)

HERE = Path(__file__).resolve().parent


def load(name: str):
    if name == "demo":
        z = np.load(demo_data_path())
        return z["train_X"].astype(np.float64), z["train_y"], z["test_X"].astype(np.float64), z["test_y"], 0.1, 250
    if name == "dgtn":
        pr = make_problem(150, 300, n_test=200, seed=21)
        return pr.X, pr.y, pr.X_test, pr.y_test, 1.0, 50
    pr = make_problem(20_000, 8, n_test=500, seed=22)
    return pr.X, pr.y, pr.X_test, pr.y_test, 1.0, 5_000


def check(ref: Reference, Zt, points) -> dict:
    """Independent dense retrains: each set flips its point; no member can go."""
    flips = minimal = retrains = 0
    for r in points:
        if not r["found"]:
            continue
        z, T = Zt[r["test_row"]], np.asarray(r["train_rows"])
        before = np.sign(z @ ref.theta)
        flips += np.sign(z @ (ref.theta + ref.delta_exact(T))) != before
        minimal += all(np.sign(z @ (ref.theta + ref.delta_exact(T[T != j]))) == before for j in T) if T.size > 1 \
            else True
        retrains += 1 + (T.size if T.size > 1 else 0)
    return {"sets": sum(r["found"] for r in points), "flip_in_reference": int(flips),
            "minimal_in_reference": int(minimal), "reference_retrains": retrains}


def run(name: str) -> dict:
    X, y, Xt, yt, lam, chunk = load(name)
    corpus = rifscale.Corpus.from_arrays(X, y, Xt, yt, chunk_rows=chunk)
    t = time.perf_counter()
    res = rifscale.attribute(corpus, lam=lam, test_subset="all")
    fit_s = time.perf_counter() - t
    ids = np.random.default_rng(0).choice(Xt.shape[0], 5, replace=False).tolist()
    t = time.perf_counter()
    out = rifscale.audit(res, least_robust=10, ids=ids, accuracy_drop=0.01)
    audit_s = time.perf_counter() - t
    t = time.perf_counter()
    ref = Reference(X, y, lam=lam)
    verified = check(ref, Reference.augment(Xt, True), out.points)
    acc = out.accuracy
    if acc and acc["found"]:
        T = np.asarray(acc["train_rows"])
        Zt = Reference.augment(Xt, True)
        correct = lambda th: int(((Zt @ th > 0) == (yt == 1)).sum())  # noqa: E731
        verified["accuracy_drop_in_reference"] = correct(ref.theta) - correct(ref.theta + ref.delta_exact(T))
    verified["seconds"] = time.perf_counter() - t
    sizes = [r["size"] for r in out.points if r["found"]]
    rel = lambda k: [abs(r[k] - r["exact_change"]) / abs(r["exact_change"]) for r in out.points if r["found"]]  # noqa: E731
    return {
        "data": name, "n": int(X.shape[0]), "d": int(X.shape[1]), "lam": lam, "fit_s": fit_s, "audit_s": audit_s,
        "counts": out.counts, "timings": out.timings, "verified": verified,
        "summary": {
            "points": len(out.points), "found": len(sizes), "certified_flips": sum(r["found"] for r in out.points),
            "minimal": sum(bool(r["minimal"]) for r in out.points), "sizes": sizes,
            "lower_bounds": [r["lower_bound"] for r in out.points],
            "median_rel_err": {m: float(np.median(rel(f"{m}_change"))) if sizes else None for m in ("if", "rif", "ns")},
        },
        "points": out.points, "accuracy": acc,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["demo", "dgtn", "tall"], choices=["demo", "dgtn", "tall"])
    ap.add_argument("--out", type=Path, default=HERE / "results" / f"audit-{time.strftime('%Y-%m-%d')}.json")
    ap.add_argument("--log", action="store_true", help="log rifscale's progress to stderr")
    args = ap.parse_args()
    if args.log:
        rifscale.show_progress(stream=__import__("sys").stderr, bars=False)
    dask.config.set(scheduler="threads")
    results = []
    for name in args.data:
        r = run(name)
        s = r["summary"]
        print(f"{name}: {s['found']}/{s['points']} flip sets, certified {s['certified_flips']}, minimal {s['minimal']}; "
              f"reference: {r['verified']}; sizes {s['sizes']}; lower bounds {s['lower_bounds']}; "
              f"audit {r['audit_s']:.1f} s", flush=True)
        results.append(r)
    machine = {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
               "numpy": np.__version__, "dask": dask.__version__, "rifscale": rifscale.__version__}
    args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=1, default=float))
    print(f"wrote {args.out.name}")


if __name__ == "__main__":
    main()
