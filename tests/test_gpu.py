"""CuPy paths equal the NumPy paths (docs/design.md §7.3). Skipped, with the reason, where
CuPy or a CUDA device is missing (CI has no GPU); run them with `pytest -m gpu`."""

import dask
import dask.array as da
import numpy as np
import pytest

import rifscale
from rifscale.engine import kernels
from rifscale.engine.factor import cholesky_factor, gpu_available
from rifscale.testing import Reference, make_problem

from .conftest import rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device (none here)"),
]


@pytest.fixture(scope="module")
def cp():
    import cupy

    return cupy


def test_kernels_on_cupy_equal_numpy(cp):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 20)), (rng.random(300) < 0.5).astype(np.int8)
    theta = rng.normal(size=21) * 0.3
    f = cholesky_factor(np.eye(21) * 3 + 0.1)
    U = rng.normal(size=(21, 2))
    for fn, kw in [
        (kernels.newton_block, dict(theta=theta)),
        (kernels.score_block, dict(theta=theta, linv=f.linv, U=U, threshold=1e-6)),
        (kernels.metric_grad_block, dict(theta=theta)),
    ]:
        host = fn(x, y, fit_intercept=True, **kw)
        dev = fn(cp.asarray(x), cp.asarray(y), fit_intercept=True, **kw)
        assert isinstance(dev, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(dev), host, rtol=1e-12, atol=1e-14)


def test_cupy_cholesky_equals_scipy(cp):
    rng = np.random.default_rng(1)
    A = rng.normal(size=(200, 50))
    H = A.T @ A + np.eye(50)
    a, b = cholesky_factor(H, backend="numpy"), cholesky_factor(H, backend="cupy")
    assert b.backend == "cupy"
    assert rel_err(b.L, a.L) <= 1e-12 and rel_err(b.linv, a.linv) <= 1e-10


def test_engine_on_cupy_backed_chunks_matches_reference(cp):
    pr = make_problem(400, 60, seed=5)
    ref = Reference(pr.X, pr.y, lam=1.0)
    X = da.from_array(pr.X, chunks=(64, 60)).map_blocks(cp.asarray)
    y = da.from_array(pr.y, chunks=64).map_blocks(cp.asarray)
    Xt = da.from_array(pr.X_test, chunks=(64, 60)).map_blocks(cp.asarray)
    yt = da.from_array(pr.y_test, chunks=64).map_blocks(cp.asarray)
    with dask.config.set(scheduler="synchronous"):
        c = rifscale.Corpus.from_arrays(X, y, Xt, yt)
        res = rifscale.attribute(c, test_subset="all")
        h = kernels.to_numpy(res.leverage.compute())
    assert rel_err(res.theta, ref.theta) <= 1e-8 and rel_err(h, ref.h) <= 1e-8


def test_attribute_device_gpu_equals_cpu_and_reference(cp):
    """device="gpu" moves the (persisted) row blocks to CuPy; every result equals the CPU
    run and the dense reference."""
    pr = make_problem(3000, 40, seed=6, dtype=np.float32)
    ref = Reference(pr.X, pr.y, lam=0.5)
    c = rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test, pr.y_test, chunk_rows=500)
    with dask.config.set(scheduler="threads"):
        gpu = rifscale.attribute(c, lam=0.5, test_subset="all", device="gpu")
        cpu = rifscale.attribute(c, lam=0.5, test_subset="all", device="cpu")
        hg, hc = dask.compute(gpu.leverage, cpu.leverage)
        rg, rc = dask.compute(gpu.rif_scores["test_loss"], cpu.rif_scores["test_loss"])
    assert gpu.layout["device"] == "gpu" and isinstance(hg, np.ndarray)  # host arrays come back
    assert rel_err(gpu.theta, ref.theta) <= 1e-8 and rel_err(hg, ref.h) <= 1e-8
    assert rel_err(gpu.theta, cpu.theta) <= 1e-10 and rel_err(hg, hc) <= 1e-10 and rel_err(rg, rc) <= 1e-10
