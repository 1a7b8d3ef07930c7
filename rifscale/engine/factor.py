"""Cholesky factor of H (on the driver, a CPU worker, or a GPU worker) and its broadcast.

``H = L Lᵀ`` with L lower-triangular. Kernels need only ``L⁻¹`` (``h_i = α_i‖L⁻¹z_i‖²``
is then one matrix product per chunk, the same code for NumPy and CuPy); the driver keeps
L for its d×d solves. The backend table below is the only per-backend code: CuPy is
registered lazily and imported only when a GPU worker runs the task.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import scipy.linalg

from ..cluster import wide_blas
from ..errors import NOT_PD_HINT, ClusterError, NotPositiveDefiniteError, not_positive_definite

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
    with wide_blas(H.shape[0]):
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


_REQUIRE_GPU: contextvars.ContextVar[bool] = contextvars.ContextVar("rifscale_require_gpu", default=False)


@contextlib.contextmanager
def gpu_policy(*, require: bool):
    """Within the block, :func:`factor_hessian` (and so ``attribute`` and ``rifscale run``)
    fails with a :class:`~rifscale.errors.ClusterError` instead of factoring with SciPy
    when no usable GPU is found (``require=True``; the CLI's ``--require-gpu``)."""
    token = _REQUIRE_GPU.set(bool(require))
    try:
        yield
    finally:
        _REQUIRE_GPU.reset(token)


def _describe(client, addresses) -> str:
    """Workers by name and address: ``gpu-node1-1 (tcp://10.0.0.5:40123)``."""
    from ..cluster import workers_info

    info = workers_info(client)
    named = []
    for a in addresses:
        name = info.get(a, {}).get("name")
        named.append(f"{name} ({a})" if name is not None and str(name) != a else a)
    return ", ".join(named)


def _gpu_workers(client, pinned: list[str]) -> tuple[list[str], list[str]]:
    """(usable, unusable) among the workers that advertise the GPU resource: whether CuPy
    imports and sees a CUDA device is asked on each worker itself."""
    seen = client.run(gpu_available, workers=pinned, on_error="return")
    usable = [a for a in pinned if seen.get(a) is True]
    return usable, [a for a in pinned if a not in usable]


def _no_gpu(where: str) -> ClusterError:
    return ClusterError(
        f"A GPU is required (--require-gpu): {where}. Install rifscale[gpu] (CuPy) where the factorisation "
        "runs and check CUDA_VISIBLE_DEVICES there, or start GPU workers with dask-cuda (deploy/README.md)."
    )


def _placement(client, resource: str, require: bool) -> tuple[dict | None, list[str] | None]:
    """(resources, workers) of the factorisation task: pinned to the workers that advertise
    ``resource`` and whose CUDA device/CuPy work; a warning (or, with ``require``, a
    ClusterError) when such workers advertise it without a usable device."""
    from ..cluster import workers_with_resource

    pinned = workers_with_resource(client, resource)
    if not pinned:
        if require:
            raise _no_gpu(f"no worker advertises the {resource} resource (start GPU workers with "
                          f'`dask worker ... --resources "{resource}=1"`; deploy/local/cluster.sh --gpu-workers N does)')
        return None, None
    usable, unusable = _gpu_workers(client, pinned)
    if not usable:
        one = len(unusable) == 1
        who = (f"{'worker' if one else 'workers'} {_describe(client, unusable)} {'advertises' if one else 'advertise'} "
               f"{resource} but {'has' if one else 'have'} no usable CUDA device/CuPy")
        if require:
            raise _no_gpu(who)
        log.warning("%s; factoring with SciPy", who)
        return {resource: 1}, None
    if unusable:
        log.warning("worker(s) %s advertise %s but have no usable CUDA device/CuPy; factoring on %s",
                    _describe(client, unusable), resource, _describe(client, usable))
    return {resource: 1}, usable


def check_gpu(client=None, *, resource: str = "GPU") -> None:
    """Raise a ClusterError unless the factorisation would run on a usable GPU: a worker
    of ``client`` advertising ``resource`` whose CUDA device and CuPy work (without a
    client: this process). ``rifscale run --require-gpu`` calls it before the fit, so
    that nothing is computed or written when it fails."""
    if client is None:
        if not gpu_available():
            raise _no_gpu("no dask cluster is in use (--scheduler), and this process has no usable CUDA device/CuPy")
        return
    _placement(client, resource, require=True)


#: An H larger than this (bytes) is scattered to the factoring worker before the task: as an
#: argument of ``submit`` it would travel inside the graph, through the scheduler (a softmax
#: model's P = 3 849 makes H 113 MiB, and distributed warns of a large graph).
SCATTER_ABOVE = 4 * 2**20


def factor_hessian(H: np.ndarray, *, client=None, resource: str = "GPU", require_gpu: bool | None = None) -> Factor:
    """Factor H as a task.

    With a distributed ``client`` whose workers advertise ``resource`` (start them with
    ``dask worker ... --resources "GPU=1"``), the task is pinned to such a worker; with a
    client but no such worker it runs on any worker; without a client it runs here.
    Wherever it runs it uses CuPy if that process sees a CUDA device, SciPy otherwise.

    The workers that advertise ``resource`` are first asked whether CuPy imports and sees
    a CUDA device there: the task goes to one whose GPU works; when none does, a warning
    names them and the factorisation runs there with SciPy, or, with ``require_gpu``
    (default: the :func:`gpu_policy` in force, off), a
    :class:`~rifscale.errors.ClusterError` is raised before anything is factored.
    """
    require = _REQUIRE_GPU.get() if require_gpu is None else bool(require_gpu)
    if client is None:
        if require:
            check_gpu(None)
        return cholesky_factor(H)
    resources, workers = _placement(client, resource, require)
    payload = H
    if H.nbytes > SCATTER_ABOVE:  # straight to a worker, not through the scheduler inside the task's graph
        payload = client.scatter(H, direct=True, workers=workers, hash=False)
    future = client.submit(cholesky_factor, payload, resources=resources, workers=workers, allow_other_workers=False,
                           pure=False)
    factor = future.result()
    if require and factor.backend != "cupy":  # the device went away between the check and the task
        raise _no_gpu(f"worker {factor.worker} factored H with {factor.backend} (its CUDA device/CuPy is no "
                      "longer usable)")
    log.info("factored H (%d x %d) on %s with %s", H.shape[0], H.shape[1], factor.worker, factor.backend)
    return factor


def broadcast(value, *, client=None):
    """Send ``value`` to every worker once; returns something usable as a kernel kwarg.

    With a distributed client this scatters with ``broadcast=True`` and returns the
    future: every task that gets it as an argument (in a dask graph or through
    ``Client.submit``) depends on the one replicated key instead of carrying a copy.
    Without a client the value itself is returned (threads share memory).
    """
    if client is None:
        return value
    return client.scatter(value, broadcast=True, hash=False)
