r"""Per-block attribution maths at the fitted θ̂ (docs/design.md §2).

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

#: Rows per sub-block of :func:`_design_products` (a float64 copy of it stays in cache).
SUB_ROWS = 2048
#: Column bands of the triangular product ``z L⁻ᵀ`` (cost (bands + 1) / (2 bands) of a GEMM).
TRIANGLE_BANDS = 4

from ..._namespace import array_namespace
from ._scratch import rows_as, scratch
from .logistic import design, log_loss, residual, sigmoid_and_weight

#: Columns of :func:`score_block` before the per-metric IF and RIF columns.
SCORE_COLUMNS = ("prob", "residual", "alpha", "leverage", "self_if", "self_rif", "flag")


def _design_products(x, linv, W, *, fit_intercept: bool):
    """``z_iᵀ W`` (m, k) and ``q_i = ‖L⁻¹ z_i‖²`` (m,) for every row, ``z_i = [x_i, 1]`` or
    ``x_i``, in float64, the rows cast once per sub-block of :data:`SUB_ROWS`.

    ``L⁻¹`` is lower-triangular, so the columns of ``v = z L⁻ᵀ`` in a band J need only
    the first ``max(J) + 1`` columns of z: with :data:`TRIANGLE_BANDS` bands the products
    cost about 5/8 of a full GEMM. They are NumPy GEMMs, which release the GIL (SciPy's
    ``trmm`` wrapper does not, so threads would not run it in parallel).
    """
    xp = array_namespace(x)
    if xp is np:  # every operand at the same alignment in every run (see rows_as)
        linv, W = rows_as(linv, np.float64, "linv"), rows_as(W, np.float64, "products")
    else:
        linv, W = xp.asarray(linv, dtype=xp.float64), xp.asarray(W, dtype=xp.float64)
    m, d = x.shape
    p = linv.shape[0]
    step = SUB_ROWS if xp is np else max(m, 1)
    bands = TRIANGLE_BANDS if xp is np else 1
    edges = [round(p * (b + 1) / bands) for b in range(bands)]
    q = xp.empty(m, dtype=xp.float64)
    zw = xp.empty((m, W.shape[1]), dtype=xp.float64)
    for s in range(0, m, step):
        on_host = xp is np
        xb = rows_as(x[s : s + step], np.float64, "rows64") if on_host else xp.asarray(x[s : s + step], dtype=xp.float64)
        k = xb.shape[0]
        zw[s : s + k] = xb @ W[:d] + (W[d] if fit_intercept else 0.0)
        acc = xp.zeros(k, dtype=xp.float64)
        start = 0
        for stop in edges:
            cols = min(stop, d)  # columns of x that band [start, stop) of v depends on
            band = linv[start:stop, :cols].T
            v = np.matmul(xb[:, :cols], band, out=scratch("band", (k, stop - start), np.float64)) if on_host \
                else xb[:, :cols] @ band
            if fit_intercept and stop > d:
                v += linv[start:stop, d]
            acc += xp.einsum("ij,ij->i", v, v)
            start = stop
        q[s : s + k] = acc
    return zw, q


def _at_rows(x, y, theta, linv, U, *, fit_intercept: bool):
    """Per row at θ: ``z_iᵀ U`` (m, M), p, r, α, ``q = ‖L⁻¹z_i‖²`` and the leverage
    ``h = α q``, from one read of the rows (:func:`_design_products`)."""
    W = np.concatenate([np.asarray(theta, dtype=np.float64)[:, None], np.asarray(U, dtype=np.float64)], axis=1)
    both, q = _design_products(x, linv, W, fit_intercept=fit_intercept)
    eta = both[:, 0]
    p, alpha = sigmoid_and_weight(eta)
    return both[:, 1:], p, residual(eta, y), alpha, q, alpha * q


def score_block(x, y, *, theta, linv, U, fit_intercept: bool, threshold: float):
    """All per-sample quantities of one block in one pass.

    The leverage needs ``‖L⁻¹ z_i‖²`` (one triangular product per block); the logits and
    ``z_iᵀ u_k`` for all metrics come from one small product on the same rows.

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
    zu, p, r, alpha, q, h = _at_rows(x, y, theta, linv, U, fit_intercept=fit_intercept)
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
    _, _, r, alpha, _, h = _at_rows(x, y, theta, linv, np.empty((len(theta), 0)), fit_intercept=fit_intercept)
    z = design(x, fit_intercept=fit_intercept)
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
