"""Batched exact retrains vs one scipy L-BFGS-B retrain per set (what users do today).

Same data, same removal sets (40 sizes from 0.1 % to 5 % of n, strategy ``random`` and
``distance_cluster``), same target: ‖∇L_{−T}(θ)‖ ≤ 1e-9 · ‖∇L_{−T}(θ̂)‖. Both sides start
from θ̂ and run in this process on the same cores (dask's threaded scheduler for rifscale;
NumPy/BLAS for SciPy). L-BFGS-B gets the exact gradient, ``gtol`` set to the target in its
max-norm, ``ftol = 0`` (so it stops on the gradient, not on a stalled loss) and up to
20 000 iterations; each side's achieved relative gradient norm is reported.

    .venv/bin/python benchmarks/bench_retrain.py [--data demo|fmnist-full] [--repeats 3]

``fmnist-full`` needs Debian's ``dataset-fashion-mnist`` package (classes 0 vs 6, all
12 000 training and 2 000 test images, pooled 2×2 to 196 features like the embedded data).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import dask
import numpy as np
import scipy
import scipy.optimize

import rifscale
from rifscale.demo import demo_data_path
from rifscale.validation.removal import default_sizes, removal_sets
from rifscale.validation.exact import retrain

from bench_engine import _cpu_model  # noqa: E402  (the script's folder is on sys.path)

HERE = Path(__file__).resolve().parent


def load(name: str):
    if name == "demo":
        d = np.load(demo_data_path())
        return d["train_X"], d["train_y"], d["test_X"], d["test_y"], 0.1
    import gzip

    src = Path("/usr/share/datasets/fashion-mnist")

    def idx(f):
        raw = gzip.open(src / f).read()
        nd = raw[3]
        shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(shape)

    X, y = idx("train-images-idx3-ubyte.gz"), idx("train-labels-idx1-ubyte.gz")
    Xt, yt = idx("t10k-images-idx3-ubyte.gz"), idx("t10k-labels-idx1-ubyte.gz")
    keep, keept = np.isin(y, (0, 6)), np.isin(yt, (0, 6))
    def f(a):  # 2x2 pooled to 14x14 = 196 features, as in the embedded data
        return (a.reshape(len(a), 14, 2, 14, 2).mean(axis=(2, 4)).reshape(len(a), 196) / 255.0).astype(np.float32)

    return f(X[keep]), (y[keep] == 6).astype(np.int8), f(Xt[keept]), (yt[keept] == 6).astype(np.int8), 1.0


def objective(Z, y, lam, D):
    def fun(theta, keep):
        eta = Z[keep] @ theta
        yk = y[keep]
        loss = np.logaddexp(0.0, eta).sum() - yk @ eta + 0.5 * lam * np.sum(D * theta * theta)
        p = np.exp(-np.logaddexp(0.0, -eta))
        return loss, Z[keep].T @ (p - yk) + lam * D * theta

    return fun


def lbfgs_all(Z, y, lam, D, theta_hat, sets, tol):
    fun = objective(Z, y, lam, D)
    out = {}
    for name, rows in sets.items():
        keep = np.ones(len(y), dtype=bool)
        keep[rows] = False
        g0 = fun(theta_hat, keep)[1]
        res = scipy.optimize.minimize(
            fun, theta_hat, args=(keep,), jac=True, method="L-BFGS-B",
            options={"gtol": tol * np.abs(g0).max() / np.sqrt(len(g0)), "ftol": 0.0, "maxiter": 20000,
                     "maxfun": 40000, "maxcor": 20},
        )
        g = fun(res.x, keep)[1]
        out[name] = {"theta": res.x, "rel_grad": float(np.linalg.norm(g) / np.linalg.norm(g0)), "nit": int(res.nit),
                     "message": str(res.message)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("demo", "fmnist-full"), default="demo")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-rows", type=int, default=2000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    X, y, Xt, yt, lam = load(args.data)
    corpus = rifscale.Corpus.from_arrays(X, y, Xt, yt, chunk_rows=args.chunk_rows)
    with dask.config.set(scheduler="threads"):
        res = rifscale.attribute(corpus, lam=lam)
        sizes = default_sizes(corpus.n, count=20)
        sets = {}
        for strategy in ("random", "distance_cluster"):
            sets.update({s.name: s.indices for s in removal_sets(corpus.train, strategy, sizes=sizes, seed=0)})
    Z = np.hstack([X.astype(np.float64), np.ones((len(y), 1))])
    D = np.ones(Z.shape[1])
    D[-1] = 0.0
    y64 = y.astype(np.float64)
    timings = {"batched": [], "lbfgsb": []}
    for _ in range(args.repeats):  # interleaved, so both sides see the same machine load
        t = time.perf_counter()
        with dask.config.set(scheduler="threads"):
            batched = retrain(res, sets)
        timings["batched"].append(time.perf_counter() - t)
        t = time.perf_counter()
        lb = lbfgs_all(Z, y64, lam, D, res.theta, sets, 1e-9)
        timings["lbfgsb"].append(time.perf_counter() - t)
    agree = max(np.linalg.norm(batched[k].delta - (lb[k]["theta"] - res.theta)) / np.linalg.norm(batched[k].delta)
                for k in sets)
    med = {k: statistics.median(v) for k, v in timings.items()}
    result = {
        "data": args.data, "n": corpus.n, "d": corpus.d, "lam": lam, "sets": len(sets),
        "sizes": [int(s) for s in sizes], "chunk_rows": args.chunk_rows, "repeats": args.repeats,
        "seconds": timings, "median_seconds": med, "speedup_median": med["lbfgsb"] / med["batched"],
        "batched": {"max_rel_grad": max(r.rel_grad_norm for r in batched.values()),
                    "all_converged": all(r.converged for r in batched.values()),
                    "max_passes": max(r.passes for r in batched.values()),
                    "newton_fallbacks": sum(r.method == "newton" for r in batched.values())},
        "lbfgsb": {"max_rel_grad": max(v["rel_grad"] for v in lb.values()),
                   "median_rel_grad": statistics.median(v["rel_grad"] for v in lb.values()),
                   "sets_reaching_1e-9": sum(v["rel_grad"] <= 1e-9 for v in lb.values()),
                   "stop_messages": {m: sum(v["message"] == m for v in lb.values()) for m in {v["message"] for v in lb.values()}},
                   "median_iterations": statistics.median(v["nit"] for v in lb.values())},
        "max_rel_diff_delta_theta": agree,
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "scipy": scipy.__version__, "dask": dask.__version__,
                    "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")},
    }
    out = args.out or HERE / "results" / f"retrain-{args.data}-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("data", "n", "d", "sets", "median_seconds", "speedup_median",
                                              "batched", "lbfgsb", "max_rel_diff_delta_theta")}, indent=1))


if __name__ == "__main__":
    main()
