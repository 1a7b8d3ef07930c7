"""GPU check: every CuPy result against NumPy, and the GPU path's speed against the device.

Run on a machine with an NVIDIA GPU and CuPy (``pip install -e ".[gpu]"``)::

    python benchmarks/gpu_check.py --out "$OUT/gpu-check.json"     # about 2-4 minutes on an H200

Part 1 (correctness, exit status 1 if any check fails): each row-chunk kernel on CuPy
arrays equals the same kernel on NumPy arrays to ``max|a-b| / max|b| <= 1e-10``
(``newton_block`` with float64 Hessians, ``score_block``, ``set_stats_block``,
``metric_grad_block``, ``metric_values_block``, ``loss_block``, ``retrain_block``,
``min_margin_block``, and the removal sets' pass picking a set's rows of a block on the
device, ``groups._sets_block``; float32 Hessians to 1e-5, they are approximations by design), the
CuPy Cholesky equals SciPy's, and ``rifscale.attribute(..., device="gpu")`` equals
``device="cpu"`` (θ̂, leverage, IF and RIF scores) and the dense float64 reference.

Part 2 (speed): on an n x d float32 problem held on the device (default 10⁶ x 1024),
the measured float64 and float32 GEMM rates of the device, then the time of the
Hessian build (``newton_block`` float64 and float32 over row blocks), the factor
(CuPy Cholesky + inverse of the p x p H) and the leverage pass (``score_block``), each
with the fraction of the GEMM rate its flops imply.

``--numpy-standin`` runs the whole script with NumPy in place of CuPy (everything then
trivially agrees); it exists to check the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rifscale  # noqa: E402
from rifscale.engine import kernels  # noqa: E402
from rifscale.engine.factor import cholesky_factor, gpu_available  # noqa: E402
from rifscale.estimates.groups import _sets_block  # noqa: E402  (the task kernel of groups.sets_pass)
from rifscale.testing import Reference, make_problem  # noqa: E402

EXACT = 1e-10
APPROX = 1e-5


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.nanmax(np.abs(b))
    return float(np.nanmax(np.abs(a - b)) / scale) if scale > 0 else float(np.nanmax(np.abs(a - b)))


class Device:
    """CuPy, or NumPy standing in for it (``--numpy-standin``)."""

    def __init__(self, standin: bool):
        if standin:
            self.xp, self.name = np, "numpy stand-in (no GPU: checks the script only)"
            self.sync = lambda: None
            return
        import cupy

        self.xp = cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        self.name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        self.sync = cupy.cuda.Stream.null.synchronize

    def put(self, a):
        return self.xp.asarray(a)

    def timed(self, fn, repeats: int = 3) -> float:
        fn()  # warm-up (kernel compilation, plans)
        self.sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))


def check_kernels(dev: Device) -> list[dict]:
    rng = np.random.default_rng(0)
    m, d = 3000, 40
    p = d + 1
    x = rng.normal(size=(m, d)).astype(np.float32)
    y = (rng.random(m) < 0.4).astype(np.int8)
    w = (rng.random(m) < 0.7).astype(np.float64)
    keep = w != 0  # a removal set's rows, as groups.sets_pass gives them to its kernels
    theta = rng.normal(size=p) * 0.2
    thetas = np.stack([theta, 0.5 * theta, -theta], axis=1)
    f = cholesky_factor(np.cov(rng.normal(size=(p, 4 * p))) * 50 + np.eye(p))
    U = rng.normal(size=(p, 2))
    rows = np.arange(m, dtype=np.int64)
    sets = [np.sort(rng.choice(m, 40, replace=False)), np.arange(100, 160)]
    cases = [
        ("newton_block float64", kernels.newton_block, (x, y, w), dict(theta=theta, hessian="float64"), EXACT),
        ("newton_block float32", kernels.newton_block, (x, y, w), dict(theta=theta, hessian="float32"), APPROX),
        ("newton_block gradient only", kernels.newton_block, (x, y), dict(theta=theta, hessian=None), EXACT),
        ("score_block", kernels.score_block, (x, y), dict(theta=theta, linv=f.linv, U=U, threshold=1e-6), EXACT),
        ("set_stats_block", kernels.set_stats_block, (x[keep], y[keep]),
         dict(theta=theta, linv=f.linv, threshold=1e-6, gram=True), EXACT),
        ("sets pass block (set_stats_block)", _sets_block, (x, y),
         dict(row_start=0, all_sets=sets, active=[0, 1], set_kernel=kernels.set_stats_block,
              widths=[2 * p + 1 + p * p] * 2, per_set=None, theta=theta, linv=f.linv, threshold=1e-6, gram=True), EXACT),
        ("metric_grad_block", kernels.metric_grad_block, (x, y, w), dict(theta=theta), EXACT),
        ("metric_values_block", kernels.metric_values_block, (x, y, w), dict(thetas=thetas), EXACT),
        ("loss_block", kernels.loss_block, (x[keep], y[keep]), dict(thetas=thetas), EXACT),
        ("retrain_block", kernels.retrain_block, (x, y, rows),
         dict(thetas=thetas[:, :2], sets=sets, newton=[1]), EXACT),
        ("min_margin_block", kernels.min_margin_block, (x, y, w), dict(theta=theta), EXACT),
    ]
    out = []
    for name, fn, args, kw, tol in cases:
        host = fn(*args, fit_intercept=True, **kw)
        dev_args = [dev.put(a) if a is not rows else a for a in args]  # row numbers stay on the host
        on_dev = kernels.to_numpy(fn(*dev_args, fit_intercept=True, **kw))
        err = rel_err(on_dev, host)
        out.append({"check": name, "rel_err": err, "tol": tol, "ok": bool(err <= tol)})
    H = f.hessian
    for backend in ("cupy",) if dev.xp is not np else ():
        g = cholesky_factor(H, backend=backend)
        for part in ("L", "linv"):
            err = rel_err(getattr(g, part), getattr(f, part))
            out.append({"check": f"cholesky {backend} {part}", "rel_err": err, "tol": EXACT, "ok": bool(err <= EXACT)})
    return out


def check_engine(device: str) -> list[dict]:
    import dask

    pr = make_problem(6000, 80, n_test=500, seed=11, dtype=np.float32)
    ref = Reference(pr.X, pr.y, lam=1.0)
    c = rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test, pr.y_test, chunk_rows=700)
    with dask.config.set(scheduler="threads"):
        cpu = rifscale.attribute(c, test_subset="all", device="cpu")
        gpu = rifscale.attribute(c, test_subset="all", device=device)
        a = dask.compute(cpu.leverage, cpu.if_scores["test_loss"], cpu.rif_scores["test_loss"])
        b = dask.compute(gpu.leverage, gpu.if_scores["test_loss"], gpu.rif_scores["test_loss"])
    out = [{"check": "attribute theta gpu vs cpu", "rel_err": rel_err(gpu.theta, cpu.theta)},
           {"check": "attribute theta gpu vs dense reference", "rel_err": rel_err(gpu.theta, ref.theta)},
           {"check": "attribute leverage gpu vs dense reference", "rel_err": rel_err(b[0], ref.h)}]
    for name, u, v in zip(("leverage", "s_IF test_loss", "s_RIF test_loss"), b, a):
        out.append({"check": f"attribute {name} gpu vs cpu", "rel_err": rel_err(u, v)})
    for o in out:
        tol = 1e-8 if "reference" in o["check"] else EXACT
        o.update(tol=tol, ok=bool(o["rel_err"] <= tol))
    return out


def gemm_rate(dev: Device, dtype, k: int = 8192) -> float:
    """Measured GEMM flop rate (flop/s) of a k x k x k product."""
    a = dev.xp.ones((k, k), dtype=dtype)
    return 2.0 * k**3 / dev.timed(lambda: a @ a)


def timings(dev: Device, n: int, d: int, block_rows: int, gemm_size: int) -> dict:
    rng = np.random.default_rng(1)
    p = d + 1
    x = dev.xp.asarray(rng.standard_normal((n, d), dtype=np.float32))
    y = dev.xp.asarray((rng.random(n) < 0.5).astype(np.int8))
    theta = rng.normal(size=p) * 0.02
    starts = range(0, n, block_rows)

    def hessian(mode):
        return lambda: sum(kernels.newton_block(x[s : s + block_rows], y[s : s + block_rows], theta=theta,
                                                fit_intercept=True, hessian=mode) for s in starts)

    packed = kernels.to_numpy(hessian("float64")())[0]
    H = packed[2 + p :].reshape(p, p) + np.eye(p)
    f = cholesky_factor(H, backend="cupy" if dev.xp is not np else "numpy")
    U = rng.normal(size=(p, 2))

    def scores():
        for s in starts:
            kernels.score_block(x[s : s + block_rows], y[s : s + block_rows], theta=theta, linv=f.linv, U=U,
                                fit_intercept=True, threshold=1e-6)

    rates = {"float64": gemm_rate(dev, dev.xp.float64, gemm_size), "float32": gemm_rate(dev, dev.xp.float32, gemm_size)}
    res = {"n": n, "d": d, "block_rows": block_rows, "gemm_flops_per_s": rates}
    flops_h = 2.0 * n * p * p
    for mode in ("float64", "float32"):
        t = dev.timed(hessian(mode))
        res[f"hessian_{mode}_s"] = t
        res[f"hessian_{mode}_fraction_of_gemm"] = flops_h / t / rates[mode]
    res["factor_s"] = dev.timed(lambda: cholesky_factor(H, backend="cupy" if dev.xp is not np else "numpy"))
    t = dev.timed(scores)
    res["leverage_pass_s"] = t
    res["leverage_pass_fraction_of_gemm"] = 2.0 * n * p * p / t / rates["float64"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu-check.json", help="JSON results (default ./gpu-check.json)")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--block-rows", type=int, default=131072)
    ap.add_argument("--gemm-size", type=int, default=8192, help="k of the k x k x k GEMM that measures the device rate")
    ap.add_argument("--numpy-standin", action="store_true", help="NumPy in place of CuPy (checks the script only)")
    args = ap.parse_args(argv)
    if not args.numpy_standin and not gpu_available():
        print("gpu_check: no CUDA device visible to CuPy (install rifscale[gpu] on a GPU machine), "
              "or pass --numpy-standin to check the script itself.", file=sys.stderr)
        return 2
    dev = Device(args.numpy_standin)
    t0 = time.perf_counter()
    checks = check_kernels(dev) + check_engine("cpu" if args.numpy_standin else "gpu")
    for c in checks:
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']:<45} rel err {c['rel_err']:.2e} (tol {c['tol']:.0e})")
    speed = timings(dev, args.n, args.d, args.block_rows, args.gemm_size)
    print(json.dumps(speed, indent=2))
    result = {
        "device": dev.name,
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "node": platform.node()},
        "checks": checks,
        "all_ok": all(c["ok"] for c in checks),
        "speed": speed,
        "seconds": time.perf_counter() - t0,
    }
    if not args.numpy_standin:
        import cupy

        result["machine"]["cupy"] = cupy.__version__
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}; all checks {'passed' if result['all_ok'] else 'did NOT pass'}")
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
