r"""Per-block attribution maths at the fitted θ̂ (DESIGN.md §1).

With ``H = L Lᵀ`` (Cholesky, lower) and ``linv = L⁻¹`` sent from the driver:

.. math::

    q_i = z_i^T H^{-1} z_i = \|L^{-1} z_i\|^2,\qquad h_i = \alpha_i q_i \in [0, 1)

    s_{IF}(i) = r_i\, z_i^T u,\quad u = H^{-1}\nabla f(\hat\theta),\qquad
    s_{RIF}(i) = s_{IF}(i) / (1 - h_i)

The self-influence on a sample's own logit is ``z_iᵀ Δθ_IF(i) = r_i q_i`` (IF) and
``r_i q_i / (1 − h_i)`` (RIF). Every Δθ is a *removal* effect ``θ̂_{−T} − θ̂``.
Samples with ``1 − h_i < threshold`` are flagged and get NaN RIF values: their RIF is
dominated by rounding and must not be read as a number.
"""

from __future__ import annotations

import numpy as np

from ._namespace import array_namespace
from .logistic import SUB_ROWS, design, log_loss, residual, sigmoid_and_weight

#: Columns of :func:`score_block` before the per-metric IF and RIF columns.
SCORE_COLUMNS = ("prob", "residual", "alpha", "leverage", "self_if", "self_rif", "flag")


def _leverage_terms(z, y, theta, linv):
    xp = array_namespace(z)
    eta = z @ xp.asarray(theta, dtype=xp.float64)
    p, alpha = sigmoid_and_weight(eta)
    r = residual(eta, y)
    v = z @ xp.asarray(linv, dtype=xp.float64).T
    q = xp.sum(v * v, axis=1)
    return p, r, alpha, q, alpha * q


def _quadratic_form(x, linv, *, fit_intercept: bool):
    """``q_i = ‖L⁻¹ z_i‖²`` for every row, ``z_i = [x_i, 1]`` or ``x_i``, in float64.

    NumPy: a sub-block of rows is copied once, transposed, into a float64 (p, k) buffer
    and multiplied in place by the triangular ``L⁻¹`` (BLAS ``trmm``: half the flops of a
    GEMM); CuPy: one GEMM.
    """
    xp = array_namespace(x)
    linv = xp.asarray(linv, dtype=xp.float64)
    m, d = x.shape
    if xp is not np:
        v = xp.asarray(x, dtype=xp.float64) @ linv[:, :d].T
        if fit_intercept:
            v += linv[:, d]
        return xp.sum(v * v, axis=1)
    from scipy.linalg import blas

    p = linv.shape[0]
    q = np.empty(m, dtype=np.float64)
    buf = np.empty((p, min(SUB_ROWS, m)), dtype=np.float64, order="F")
    for s in range(0, m, SUB_ROWS):
        k = min(SUB_ROWS, m - s)
        zt = buf[:, :k]
        zt[:d] = x[s : s + k].T
        if fit_intercept:
            zt[d] = 1.0
        vt = blas.dtrmm(1.0, linv, zt, side=0, lower=1, trans_a=0, overwrite_b=1)
        q[s : s + k] = np.einsum("ij,ij->j", vt, vt)
    return q


def _linear(x, theta, *, fit_intercept: bool):
    """``Z θ`` for a (p,) or (p, K) θ without building Z (float64)."""
    xp = array_namespace(x)
    theta = xp.asarray(theta, dtype=xp.float64)
    d = x.shape[1]
    out = xp.asarray(x, dtype=xp.float64) @ theta[:d]
    return out + theta[d] if fit_intercept else out


def score_block(x, y, *, theta, linv, U, fit_intercept: bool, threshold: float):
    """All per-sample quantities of one block in one pass.

    The leverage needs ``‖L⁻¹ z_i‖²`` (one triangular product per block); the logits and
    ``z_iᵀ u_k`` for all metrics come from one more (m, d) x (d, 1 + M) product.

    Parameters
    ----------
    x : (m, d) array
    y : (m,) array of 0/1
    theta : (p,) fitted parameters
    linv : (p, p) inverse of the lower Cholesky factor of H
    U : (p, M) columns ``u_k = H⁻¹ ∇f_k(θ̂)``, one per metric
    threshold : float
        Flag samples with ``1 − h < threshold``.

    Returns
    -------
    (m, 7 + 2M) float64 array with columns :data:`SCORE_COLUMNS`, then ``s_IF`` for
    each metric, then ``s_RIF`` for each metric.
    """
    xp = array_namespace(x)
    both = _linear(x, xp.concatenate([xp.asarray(theta, dtype=xp.float64)[:, None],
                                      xp.asarray(U, dtype=xp.float64)], axis=1), fit_intercept=fit_intercept)
    eta, zu = both[:, 0], both[:, 1:]
    p, alpha = sigmoid_and_weight(eta)
    r = residual(eta, y)
    q = _quadratic_form(x, linv, fit_intercept=fit_intercept)
    h = alpha * q
    one_minus_h = 1.0 - h
    flag = one_minus_h < threshold
    safe = xp.where(flag, 1.0, one_minus_h)
    s_if = r[:, None] * zu
    s_rif = xp.where(flag[:, None], xp.nan, s_if / safe[:, None])
    self_if = r * q
    self_rif = xp.where(flag, xp.nan, self_if / safe)
    cols = [p, r, alpha, h, self_if, self_rif, flag.astype(xp.float64)]
    return xp.concatenate([xp.stack(cols, axis=1), s_if, s_rif], axis=1)


def set_stats_block(x, y, w=None, *, theta, linv, fit_intercept: bool, threshold: float, gram: bool):
    """Sums over the rows of a removal set T (rows with weight 1) in one block.

    Returns
    -------
    (1, 2p + 1 [+ p*p]) float64 array:
        ``[Σ_T g_i, Σ_T g_i / (1 − h_i), #flagged in T, (Σ_T α_i z_i z_iᵀ if gram)]``.
        Flagged rows are left out of the second sum; the caller reports the set's RIF
        as NaN when the count is non-zero.
    """
    xp = array_namespace(x)
    if w is not None:  # only the set's rows matter: skip the O(p²) work for the others
        w = xp.asarray(w, dtype=xp.float64)
        keep = w != 0
        x, y, w = x[keep], xp.asarray(y)[keep], w[keep]
    z = design(x, fit_intercept=fit_intercept)
    _, r, alpha, _, h = _leverage_terms(z, y, theta, linv)
    one_minus_h = 1.0 - h
    flag = one_minus_h < threshold
    if w is None:
        w = xp.ones(z.shape[0], dtype=xp.float64)
    wr = w * r
    rescaled = xp.where(flag, 0.0, wr / xp.where(flag, 1.0, one_minus_h))
    parts = [z.T @ wr, z.T @ rescaled, xp.sum(w * flag)[None]]
    if gram:
        parts.append(((z * (w * alpha)[:, None]).T @ z).ravel())
    return xp.concatenate(parts)[None, :]


def metric_grad_block(x, y, w=None, *, theta, fit_intercept: bool):
    """Values and gradients at θ of the two test metrics over the weighted rows.

    ``test_loss = Σ w ℓ`` with gradient ``Σ w r z``; ``test_prediction = Σ w σ`` with
    gradient ``Σ w α z``.

    Returns
    -------
    (1, 2 + 2p) float64 array ``[loss, prediction, ∇loss (p), ∇prediction (p)]``.
    """
    xp = array_namespace(x)
    z = design(x, fit_intercept=fit_intercept)
    eta = z @ xp.asarray(theta, dtype=xp.float64)
    p, alpha = sigmoid_and_weight(eta)
    loss = log_loss(eta, y)
    r = residual(eta, y)
    if w is not None:
        w = xp.asarray(w, dtype=xp.float64)
        loss, p, r, alpha = w * loss, w * p, w * r, w * alpha
    head = xp.stack([xp.sum(loss), xp.sum(p)])
    return xp.concatenate([head, z.T @ r, z.T @ alpha])[None, :]


def metric_values_block(x, y, w=None, *, thetas, fit_intercept: bool):
    """Both test metrics at K parameter vectors at once (one GEMM).

    Returns
    -------
    (1, 2K) float64 array ``[Σ w ℓ(θ_k) for k, Σ w σ(θ_k) for k]``.
    """
    xp = array_namespace(x)
    z = design(x, fit_intercept=fit_intercept)
    eta = z @ xp.asarray(thetas, dtype=xp.float64)
    loss = log_loss(eta, y)
    p, _ = sigmoid_and_weight(eta)
    if w is not None:
        w = xp.asarray(w, dtype=xp.float64)[:, None]
        loss, p = w * loss, w * p
    return xp.concatenate([xp.sum(loss, axis=0), xp.sum(p, axis=0)])[None, :]
