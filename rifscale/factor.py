"""Cholesky factor of H (on the driver, a CPU worker, or a GPU worker) and its broadcast.

``H = L Lᵀ`` with L lower-triangular. Kernels need only ``L⁻¹`` (``h_i = α_i‖L⁻¹z_i‖²``
is then one matrix product per chunk, the same code for NumPy and CuPy); the driver keeps
L for its d×d solves. The backend table below is the only per-backend code: CuPy is
registered lazily and imported only when a GPU worker runs the task.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Callable, Literal

import dask
import numpy as np
import scipy.linalg

from .errors import NOT_PD_HINT, NotPositiveDefiniteError, not_positive_definite

log = logging.getLogger(__name__)

Backend = Literal["auto", "numpy", "cupy"]


@dataclass(frozen=True)
class Factor:
    """``L`` (lower Cholesky factor of H) and ``linv = L⁻¹``, both (p, p) NumPy float64."""

    L: np.ndarray
    linv: np.ndarray
    backend: str = "numpy"
    worker: str | None = None  # address of the worker that factored H, if any

    @property
    def p(self) -> int:
        return self.L.shape[0]

    def solve(self, b: np.ndarray) -> np.ndarray:
        """H⁻¹ b for a (p,) or (p, K) right-hand side."""
        return scipy.linalg.cho_solve((self.L, True), b, check_finite=False)

    @property
    def hessian(self) -> np.ndarray:
        return self.L @ self.L.T


def _numpy_cholesky(H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        L = scipy.linalg.cholesky(H, lower=True, check_finite=False)
    except np.linalg.LinAlgError as exc:
        raise not_positive_definite("at the fitted theta", str(exc)) from None
    linv = scipy.linalg.solve_triangular(L, np.eye(L.shape[0]), lower=True, check_finite=False)
    return L, linv


def _cupy_cholesky(H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cupy
    import cupyx.scipy.linalg

    Hd = cupy.asarray(H)
    L = cupy.linalg.cholesky(Hd)  # CuPy returns NaNs instead of raising when H is not PD
    if not bool(cupy.isfinite(L).all()):
        raise not_positive_definite("at the fitted theta", "CuPy Cholesky produced non-finite values")
    linv = cupyx.scipy.linalg.solve_triangular(L, cupy.eye(L.shape[0]), lower=True)
    return cupy.asnumpy(L), cupy.asnumpy(linv)


_BACKENDS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "numpy": _numpy_cholesky,
    "cupy": _cupy_cholesky,
}


def _this_worker() -> str | None:
    if "distributed" not in sys.modules:  # not in a worker, and no import for nothing
        return None
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:
        return None


def cholesky_factor(H: np.ndarray, *, backend: Backend = "auto") -> Factor:
    """Factor a symmetric positive-definite H; a clear error when it is not PD.

    ``backend="auto"`` uses CuPy where this process sees a CUDA device, SciPy otherwise.
    """
    H = np.asarray(H, dtype=np.float64)
    if not np.isfinite(H).all():
        raise NotPositiveDefiniteError(f"The Hessian holds NaN or Inf values. {NOT_PD_HINT}")
    if backend == "auto":
        backend = "cupy" if gpu_available() else "numpy"
    L, linv = _BACKENDS[backend](H)
    return Factor(L=L, linv=linv, backend=backend, worker=_this_worker())


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def factor_hessian(H: np.ndarray, *, client=None, resource: str = "GPU") -> Factor:
    """Factor H as a task.

    With a distributed ``client`` whose workers advertise ``resource`` (start them with
    ``dask worker ... --resources "GPU=1"``), the task is pinned to such a worker; with a
    client but no such worker it runs on any worker; without a client it runs here.
    Wherever it runs it uses CuPy if that process sees a CUDA device, SciPy otherwise.
    """
    if client is None:
        return cholesky_factor(H)
    from .cluster import workers_with_resource

    pinned = workers_with_resource(client, resource)
    resources = {resource: 1} if pinned else None
    future = client.submit(cholesky_factor, H, resources=resources, pure=False)
    factor = future.result()
    log.info("factored H (%d x %d) on %s with %s", H.shape[0], H.shape[1], factor.worker, factor.backend)
    return factor


def broadcast(value, *, client=None):
    """Send ``value`` to every worker once; returns something usable as a kernel kwarg.

    With a distributed client this scatters with ``broadcast=True`` and wraps the future
    in ``dask.delayed`` so every chunk task depends on the one replicated key. Without a
    client the value itself is returned (threads share memory).
    """
    if client is None:
        return value
    future = client.scatter(value, broadcast=True, hash=False)
    return dask.delayed(future)
