r"""Blockwise objective, gradient and Hessian of the L2-regularised logistic regression.

.. math::

    L(\theta) = \sum_i w_i \ell_i(\theta) + \tfrac{\lambda}{2}\|\theta_w\|^2,\qquad
    \nabla L = \sum_i w_i r_i z_i + \lambda D\theta,\qquad
    H = \sum_i w_i \alpha_i z_i z_i^T + \lambda D

``D = diag(1, …, 1, 0)`` with an intercept (last entry, never penalised), ``I`` without.
The per-chunk terms come from :func:`rifscale.kernels.newton_block` in float64 and are
tree-summed; the penalty is added once, here. Weights ``w`` are 1 unless rows are removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from . import kernels
from ._blocks import block_sum


def penalty_diag(p: int, *, fit_intercept: bool) -> np.ndarray:
    """Diagonal of D: ones, with a zero for the intercept (last) entry."""
    D = np.ones(p)
    if fit_intercept:
        D[-1] = 0.0
    return D


@dataclass(frozen=True)
class Objective:
    """L, ∇L and H (penalty included) at one θ."""

    theta: np.ndarray
    loss: float
    grad: np.ndarray
    hessian: np.ndarray
    grad_floor: float  # ‖∇L‖ below this is rounding noise (see rounding_floor)


#: Multiple of eps · (Σ|r_i|‖z_i‖ + λ‖Dθ‖) below which a gradient norm is rounding noise.
ROUNDING_FACTOR = 32.0


def newton_terms(X: da.Array, y: da.Array, theta, *, lam: float, fit_intercept: bool, weights=None) -> da.Array:
    """Lazy packed ``[Σ w ℓ, Σ w |r|‖z‖, Σ w r z, Σ w α z zᵀ]`` (no penalty) at ``theta``."""
    p = theta.shape[0]
    return block_sum(
        kernels.newton_block,
        X,
        y,
        weights,
        width=2 + p + p * p,
        theta=np.asarray(theta, dtype=np.float64),
        fit_intercept=fit_intercept,
    )


def unpack(packed: np.ndarray, theta: np.ndarray, *, lam: float, fit_intercept: bool) -> Objective:
    """Add the penalty to summed ``newton_block`` terms."""
    p = theta.shape[0]
    D = penalty_diag(p, fit_intercept=fit_intercept)
    loss = float(packed[0]) + 0.5 * lam * float(np.sum(D * theta * theta))
    grad = packed[2 : 2 + p] + lam * D * theta
    hess = packed[2 + p :].reshape(p, p)
    hess = 0.5 * (hess + hess.T) + lam * np.diag(D)
    scale = float(packed[1]) + lam * float(np.linalg.norm(D * theta))
    floor = ROUNDING_FACTOR * np.finfo(np.float64).eps * scale
    return Objective(theta=theta, loss=loss, grad=grad, hessian=hess, grad_floor=floor)


def objective(X: da.Array, y: da.Array, theta, *, lam: float, fit_intercept: bool, weights=None) -> Objective:
    """One pass over the data: L, ∇L and H at ``theta``."""
    theta = np.asarray(theta, dtype=np.float64)
    packed = kernels.to_numpy(newton_terms(X, y, theta, lam=lam, fit_intercept=fit_intercept, weights=weights).compute())
    return unpack(packed, theta, lam=lam, fit_intercept=fit_intercept)
