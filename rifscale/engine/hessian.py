r"""Blockwise objective, gradient and Hessian of the L2-regularised model (the binary
logistic model's formulas shown; any family's blocks have this packing).

.. math::

    L(\theta) = \sum_i w_i \ell_i(\theta) + \tfrac{\lambda}{2}\|D\theta\|^2,\qquad
    \nabla L = \sum_i w_i r_i z_i + \lambda D\theta,\qquad
    H = \sum_i w_i \alpha_i z_i z_i^T + \lambda D

One pass over the row chunks returns the row sums from
the model family's ``newton_block`` (float64 sums; the Hessian products in float64,
in float32, or skipped) at one or several points, summed in the fixed order of
:func:`rifscale.engine._blocks.reduce_blocks`; the penalty is added once, by the Newton core
(:mod:`rifscale.engine.newton`). Weights ``w`` are 1 unless rows are removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from . import kernels
from .family import BINARY, ModelFamily
from ._blocks import per_block, reduce_blocks
from .newton import penalised, penalised_hessian


@dataclass(frozen=True)
class Objective:
    """L, ∇L and (optionally) H, penalty included, at one θ."""

    theta: np.ndarray
    loss: float
    grad: np.ndarray
    hessian: np.ndarray | None
    hessian_dtype: str | None  # precision of the Hessian products: "float64", "float32" or None
    grad_floor: float  # ‖∇L‖ below this is rounding noise

    @property
    def grad_norm(self) -> float:
        return float(np.linalg.norm(self.grad))


def _width(p: int, hessian: str | None) -> int:
    return 2 + p + (p * p if hessian else 0)


def newton_points_block(x, y, w=None, *, points, fit_intercept: bool, family: ModelFamily = BINARY,
                        radius: bool = False):
    """The family's ``newton_block`` at several ``(theta, hessian)`` points from one read of
    the block, the packed rows side by side; with ``radius``, the block's largest ``‖z_i‖``
    (:func:`rifscale.engine.kernels.max_row_norm_block`) last."""
    parts = [kernels.to_numpy(family.newton_block(x, y, w, theta=th, fit_intercept=fit_intercept, hessian=h))
             .reshape(-1) for th, h in points]
    if radius:
        parts.append(kernels.to_numpy(kernels.max_row_norm_block(x, fit_intercept=fit_intercept)).reshape(-1))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)  # no copy of a lone row


def unpack(packed: np.ndarray, theta: np.ndarray, *, lam: float, fit_intercept: bool,
           hessian: str | None = "float64", family: ModelFamily = BINARY) -> Objective:
    """Add the family's penalty to summed ``newton_block`` terms."""
    p = theta.shape[0]
    D = family.penalty_diag(p, fit_intercept=fit_intercept)
    loss, grad, floor = penalised(theta, float(packed[0]), packed[2 : 2 + p], float(packed[1]),
                                  lam=lam, fit_intercept=fit_intercept, D=D)
    H = None
    if hessian:
        H = penalised_hessian(packed[2 + p :].reshape(p, p), lam=lam, fit_intercept=fit_intercept, D=D)
    return Objective(theta=theta, loss=float(loss), grad=grad, hessian=H, hessian_dtype=hessian,
                     grad_floor=float(floor))


def objectives(X: da.Array, y: da.Array, points, *, lam: float, fit_intercept: bool,
               weights=None, family: ModelFamily = BINARY, radius: bool = False):
    """One pass over the data for several ``(theta, hessian)`` points at once: a list of
    :class:`Objective`. With ``radius``, ``(list, R)``: R = max ‖z_i‖ over all of X's rows
    as :func:`max_row_norm` gives it, from the same pass (which then spares its own)."""
    points = [(np.asarray(th, dtype=np.float64), h) for th, h in points]
    widths = [_width(th.shape[0], h) for th, h in points]
    packed = reduce_blocks(newton_points_block, X, y, weights, width=sum(widths) + int(radius), points=points,
                           fit_intercept=fit_intercept, family=family, radius=radius, maxima=int(radius))
    edges = np.cumsum([0, *widths])
    found = [unpack(packed[a:b], th, lam=lam, fit_intercept=fit_intercept, hessian=h, family=family)
             for a, b, (th, h) in zip(edges[:-1], edges[1:], points)]
    return (found, float(packed[-1])) if radius else found


def objective(X: da.Array, y: da.Array, theta, *, lam: float, fit_intercept: bool, weights=None,
              hessian: str | None = "float64", family: ModelFamily = BINARY) -> Objective:
    """One pass over the data: L, ∇L and H (in the given precision, or none) at ``theta``."""
    return objectives(X, y, [(theta, hessian)], lam=lam, fit_intercept=fit_intercept, weights=weights,
                      family=family)[0]


def max_row_norm(X: da.Array, *, fit_intercept: bool) -> float:
    """R = max ‖z_i‖ over the rows (one light pass): the radius of the error certificates
    (:func:`rifscale.engine.newton.certify`); rows removed or weighted down only lower the true max."""
    return float(per_block(kernels.max_row_norm_block, X, width=1, fit_intercept=fit_intercept).max().compute())
