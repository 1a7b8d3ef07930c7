r"""Approximate leave-one-out on one block of rows (docs/design.md §8.10).

At the fitted θ̂, with ``H = L Lᵀ`` and ``linv = L⁻¹`` sent from the driver, row i has

.. math::

    \eta_i = z_i^T\hat\theta,\qquad r_i = \sigma(\eta_i) - y_i,\qquad
    q_i = z_i^T H^{-1} z_i = \|L^{-1} z_i\|^2,\qquad h_i = \alpha_i q_i

and its one-step Newton leave-one-out logit (the logit at ``θ̂ + Δθ_RIF(i)``, the
*removal* step of docs/design.md §1.4) is

.. math::

    \tilde\eta_i = z_i^T(\hat\theta + \Delta\theta_{RIF}(i))
                 = \eta_i + \frac{q_i\, r_i}{1 - h_i}
                 = \eta_i + \frac{h_i}{\alpha_i}\,\frac{p_i - y_i}{1 - h_i}.

``q_i`` is the unweighted quadratic form, computed from the rows (never as ``h_i/α_i``,
which is 0/0 for a confident prediction whose α_i underflows). A row with
``1 − h_i < threshold`` is flagged and its ``1 − h_i`` is taken as ``threshold``: its
left-out logit is then finite and far on the wrong side (the row alone pins a direction
of θ, so leaving it out is unpredictable), and the caller reports the count.

The three losses of a logit η against a label y: log-loss ``ℓ(η, y)``, 0/1 error
``[η > 0] ≠ y`` (a logit of exactly 0 predicts class 0, as scikit-learn's ``predict``)
and Brier ``(σ(η) − y)²``.
"""

from __future__ import annotations

import numpy as np

from ._namespace import array_namespace
from .logistic import log_loss, residual
from .scores import SUB_ROWS, _at_rows

#: Columns of :func:`loo_block`: per-block sums.
LOO_COLUMNS = ("rows", "loo_logloss", "loo_error", "loo_brier", "train_logloss", "train_error", "train_brier",
               "leverage", "flagged")
#: Columns of :func:`heldout_block`: per-block sums.
HELDOUT_COLUMNS = ("rows", "logloss", "error", "brier")


def losses(eta, y):
    """(log-loss, 0/1 error, Brier) of logits ``eta`` (m,) against labels ``y`` (m,), each (m,) float64."""
    xp = array_namespace(eta)
    wrong = (eta > 0) != (xp.asarray(y) == 1)
    return log_loss(eta, y), wrong.astype(xp.float64), residual(eta, y) ** 2


def loo_rows(x, y, *, theta, linv, fit_intercept: bool, threshold: float):
    """Per row of the block: the logit η_i, the approximate leave-one-out logit η̃_i, the
    leverage h_i and the flag ``1 − h_i < threshold``.

    Parameters
    ----------
    x : (m, d) array
    y : (m,) array of 0/1
    theta : (p,) fitted parameters
    linv : (p, p) inverse of the lower Cholesky factor of H

    Returns
    -------
    eta, loo, h : (m,) float64; flag : (m,) bool
    """
    xp = array_namespace(x)
    theta = np.asarray(theta, dtype=np.float64)
    # the logits come with the leverages' read of the rows, as the column z_iᵀθ̂ of z_iᵀU
    zu, _, r, _, q, h = _at_rows(x, y, theta, linv, theta[:, None], fit_intercept=fit_intercept)
    eta = zu[:, 0]
    one_minus_h = 1.0 - h
    flag = one_minus_h < threshold
    loo = eta + q * r / xp.where(flag, threshold, one_minus_h)
    return eta, loo, h, flag


def _logits(x, theta, *, fit_intercept: bool):
    xp = array_namespace(x)
    theta = xp.asarray(theta, dtype=xp.float64)
    d = x.shape[1]
    return xp.asarray(x, dtype=xp.float64) @ theta[:d] + (theta[d] if fit_intercept else 0.0)


def loo_block(x, y, *, theta, linv, fit_intercept: bool, threshold: float):
    """Sums over the block's rows of the approximate leave-one-out losses and the training
    losses at θ̂, the leverages and the flags.

    Returns
    -------
    (1, 9) float64 array with columns :data:`LOO_COLUMNS`.
    """
    xp = array_namespace(x)
    eta, loo, h, flag = loo_rows(x, y, theta=theta, linv=linv, fit_intercept=fit_intercept, threshold=threshold)
    cols = [xp.ones_like(eta), *losses(loo, y), *losses(eta, y), h, flag.astype(xp.float64)]
    return xp.stack([xp.sum(c) for c in cols])[None, :]


def heldout_block(x, y, *, theta, fit_intercept: bool):
    """Sums over the block's rows of the three losses at θ.

    Returns
    -------
    (1, 4) float64 array with columns :data:`HELDOUT_COLUMNS`.
    """
    xp = array_namespace(x)
    eta = _logits(x, theta, fit_intercept=fit_intercept)
    cols = [xp.ones_like(eta), *losses(eta, y)]
    return xp.stack([xp.sum(c) for c in cols])[None, :]


def square_norm_block(x):
    """(1, 2) float64 array: ``[Σ ‖x_i‖², max ‖x_i‖²]`` over the block's rows (features
    only, no intercept column; 0 for no rows), in float64 a sub-block at a time."""
    xp = array_namespace(x)
    total, top = 0.0, 0.0
    for s in range(0, x.shape[0], SUB_ROWS):
        xb = xp.asarray(x[s : s + SUB_ROWS], dtype=xp.float64)
        sq = xp.einsum("ij,ij->i", xb, xb)
        total, top = total + float(sq.sum()), max(top, float(sq.max()))
    return np.array([[total, top]])
