r"""The binary logistic model: every formula of it, on blocks of rows (the first model family,
:class:`BinaryLogistic`, behind the seam :class:`rifscale.engine.family.ModelFamily`).

Model (docs/design.md §1). A block holds rows ``x`` of shape (m, d) and labels ``y`` in {0, 1}
of shape (m,). With an intercept each row is augmented to ``z = [x, 1]`` (the intercept
is the *last* entry of θ); otherwise ``z = x``. ``p = d + fit_intercept``.

.. math::

    \eta_i = z_i^T\theta,\qquad
    \ell_i(\theta) = \log(1 + e^{\eta_i}) - y_i\eta_i = \mathrm{softplus}((1 - 2y_i)\eta_i)

    \nabla\ell_i = (\sigma(\eta_i) - y_i)\, z_i = r_i z_i,\qquad
    \nabla^2\ell_i = \alpha_i z_i z_i^T,\quad \alpha_i = \sigma(\eta_i)(1 - \sigma(\eta_i))

The penalty ``(λ/2)‖θ_w‖²`` is *not* added here: blocks are summed first and the driver
adds it once. All sums are in float64 whatever the storage dtype.

Stability: ``softplus(t) = max(t, 0) + log1p(exp(-|t|))`` never overflows and loses no
digits for large |η| (unlike ``log1p(exp(η)) - y η``); σ and α are computed from
``e = exp(-|η|) ≤ 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..._namespace import array_namespace
from ...errors import CorpusError
from ..newton import penalty_diag
from ._scratch import rows_as, scratch
from .products import SUB_ROWS, design, design_products, gram_accumulate, keep_mask


def log_loss(eta, y):
    """ℓ(η, y) = log(1 + e^η) − y η, elementwise, stable for any finite η.

    ``eta`` may be (m,) or (m, K) with ``y`` (m,) broadcast over the columns.
    """
    xp = array_namespace(eta)
    y = xp.asarray(y, dtype=xp.float64)
    if eta.ndim == 2:
        y = y[:, None]
    t = (1.0 - 2.0 * y) * eta
    return xp.maximum(t, 0.0) + xp.log1p(xp.exp(-xp.abs(t)))


def sigmoid_and_weight(eta):
    """σ(η) and α = σ(η)(1 − σ(η)), both without overflow for any finite η."""
    xp = array_namespace(eta)
    e = xp.exp(-xp.abs(eta))
    inv = 1.0 / (1.0 + e)
    p = xp.where(eta >= 0, inv, e * inv)
    alpha = e * inv * inv
    return p, alpha


def residual(eta, y):
    """r = σ(η) − y to full relative precision: ``−σ(−η)`` for y = 1 (``σ(η) − 1`` would
    keep only absolute precision for confident, correct predictions)."""
    xp = array_namespace(eta)
    y = xp.asarray(y)
    if eta.ndim == 2:
        y = y[:, None]
    return xp.where(y == 1, -sigmoid(-eta), sigmoid(eta))


def loss_and_residual(eta, y, *, scratch_name: str | None = None):
    """ℓ(η, y), r(η, y) and, for the α of some columns, ``(e, inv)`` with
    ``α = e · inv · inv``: :func:`log_loss`, :func:`residual` and :func:`sigmoid_and_weight`
    bit for bit, from one exponential. With ``t = (1 − 2y) η`` and ``e = exp(−|t|)``:
    ``ℓ = max(t, 0) + log1p(e)``, ``r = (1 − 2y) σ(t)`` (``−σ(−η)`` for y = 1, ``σ(η)`` for
    y = 0), ``σ(t) = inv`` for t ≥ 0 and ``e · inv`` otherwise, ``inv = 1 / (1 + e)``.

    ``eta`` is (m,) or (m, K) with ``y`` (m,) of 0/1 broadcast over the columns. With NumPy
    and ``scratch_name`` the results and temporaries are the thread's scratch buffers of that
    name (valid until the next call with it): no array is allocated per call, which under
    dask workers' allocator settings would be an mmap with page faults each time (``_scratch``).
    """
    xp = array_namespace(eta)

    def buf(tag, dtype=np.float64):
        if scratch_name is not None and xp is np:
            return scratch(f"{scratch_name}-{tag}", eta.shape, dtype)
        return xp.empty(eta.shape, dtype=dtype)

    sign = 1.0 - 2.0 * xp.asarray(y, dtype=xp.float64)
    if eta.ndim == 2:
        sign = sign[:, None]
    t = xp.multiply(sign, eta, out=buf("t"))
    e = xp.abs(t, out=buf("e"))
    xp.negative(e, out=e)
    xp.exp(e, out=e)
    inv = xp.add(e, 1.0, out=buf("inv"))
    xp.divide(1.0, inv, out=inv)
    loss = xp.log1p(e, out=buf("loss"))
    loss += xp.maximum(t, 0.0, out=buf("pos"))
    r = xp.multiply(e, inv, out=buf("r"))
    xp.copyto(r, inv, where=xp.greater_equal(t, 0.0, out=buf("ge", bool)))
    xp.multiply(r, sign, out=r)
    return loss, r, (e, inv)


def sigmoid(eta):
    """σ(η) = 1 / (1 + e^{−η}), stable for any finite η."""
    return sigmoid_and_weight(eta)[0]


#: Hessian precisions :func:`newton_block` computes; None computes no Hessian.
HESSIAN_DTYPES = ("float32", "float64")


def newton_block(x, y, w=None, *, theta, fit_intercept: bool, hessian: str | None = "float64"):
    """Loss, gradient and (optionally) Hessian of one block at ``theta``, packed in one row.

    The block is never concatenated with a ones column: the intercept's parts are
    ``Σ r``, ``Σ α x`` and ``Σ α``. Logits, losses and gradients are float64 whatever the
    storage dtype (rows are cast a sub-block of :data:`SUB_ROWS` at a time). The Hessian
    ``Σ w α z zᵀ`` is a symmetric rank-k update of ``√(wα) x``: in float64, or — for the
    approximate Hessians of early Newton iterations — in float32 with the sub-blocks
    summed in float64.

    Parameters
    ----------
    x : (m, d) array (float32 or float64)
    y : (m,) array of 0/1
    w : (m,) array or None
        Per-row weights (0/1 to drop rows); None means all ones.
    theta : (p,) array
    fit_intercept : bool
    hessian : "float64", "float32" or None
        Precision of the Hessian products; None returns no Hessian.

    Returns
    -------
    (1, 2 + p [+ p*p]) float64 array
        ``[Σ w ℓ, Σ w |r| ‖z‖, Σ w r z (p), Σ w α z zᵀ (p*p, row-major)]``. The second
        entry is the scale of the gradient sum: its rounding error is a small multiple of
        machine epsilon times this.
    """
    if hessian is not None and hessian not in HESSIAN_DTYPES:
        raise ValueError(f"hessian must be one of {HESSIAN_DTYPES} or None; got {hessian!r}")
    xp = array_namespace(x)
    m, d = x.shape
    theta = xp.asarray(theta, dtype=xp.float64)
    tw, t0 = (theta[:d], theta[d]) if fit_intercept else (theta, 0.0)
    p = theta.shape[0]
    loss = 0.0
    scale = 0.0
    grad = xp.zeros(p, dtype=xp.float64)
    H = None
    if hessian:  # the sums in the thread's scratch buffer: only the packed row is allocated per block
        H = scratch("hessian64", (d, d), np.float64) if xp is np else xp.empty((d, d), dtype=xp.float64)
        H[...] = 0.0
    hx1 = xp.zeros(d, dtype=xp.float64)  # Σ α x: the intercept column of H
    h11 = 0.0
    step = SUB_ROWS if xp is np else max(m, 1)
    for s in range(0, m, step):
        xb = rows_as(x[s : s + step], np.float64, "rows64") if xp is np else xp.asarray(x[s : s + step], dtype=xp.float64)
        yb = y[s : s + step]
        eta = xb @ tw + t0
        _, alpha = sigmoid_and_weight(eta)
        lb = log_loss(eta, yb)
        r = residual(eta, yb)
        if w is not None:
            wb = xp.asarray(w[s : s + step], dtype=xp.float64)
            lb, r, alpha = wb * lb, wb * r, wb * alpha
        loss = loss + xp.sum(lb)
        # row norms only set the rounding floor's scale: the stored precision is plenty
        xs = x[s : s + step]
        scale = scale + xp.sum(xp.abs(r) * xp.sqrt(xp.einsum("ij,ij->i", xs, xs) + float(fit_intercept)))
        if hessian is None or not fit_intercept:
            grad[:d] += xb.T @ r
        else:  # the gradient and the intercept column of H in one pass over the rows
            both = xb.T @ xp.stack([r, alpha], axis=1)
            grad[:d] += both[:, 0]
            hx1 += both[:, 1]
            h11 = h11 + xp.sum(alpha)
        if fit_intercept:
            grad[d] += xp.sum(r)
        if hessian is None:
            continue
        root = xp.sqrt(alpha)
        if hessian == "float32":
            root = root.astype(xp.float32)[:, None]
            b = xp.multiply(xs, root, out=scratch("scaled32", xs.shape, np.float32)) if xp is np else \
                xp.asarray(xs, dtype=xp.float32) * root
        else:
            b = xp.multiply(xb, root[:, None], out=scratch("scaled64", xb.shape, np.float64)) if xp is np else \
                xb * root[:, None]
        gram_accumulate(b, H)
    # the packed row is the one array this block allocates (dask's workers return freed
    # memory to the system: each further temporary of p² values would fault in afresh)
    packed = xp.empty(2 + p + (p * p if hessian is not None else 0), dtype=xp.float64)
    packed[0], packed[1] = loss, scale
    packed[2 : 2 + p] = grad
    if hessian is not None:
        full = packed[2 + p :].reshape(p, p)
        top = full[:d, :d]
        xp.add(H, H.T, out=top)  # symmetrised against rounding: 0.5 (H + Hᵀ)
        xp.multiply(top, 0.5, out=top)
        if fit_intercept:
            full[:d, d] = hx1
            full[d, :d] = hx1
            full[d, d] = h11
    return packed[None, :]


def row_loss_block(x, y, *, theta, fit_intercept: bool):
    """(m, 1) float64 array of each row's loss ℓ_i(θ)."""
    xp = array_namespace(x)
    z = design(x, fit_intercept=fit_intercept)
    return log_loss(z @ xp.asarray(theta, dtype=xp.float64), y)[:, None]


def loss_block(x, y, *, thetas, fit_intercept: bool):
    """Summed loss of the given rows at K parameter vectors at once (one GEMM).

    Parameters
    ----------
    thetas : (p, K) array

    Returns
    -------
    (1, K) float64 array of ``Σ_i ℓ_i(θ_k)``.
    """
    xp = array_namespace(x)
    z = design(x, fit_intercept=fit_intercept)
    loss = log_loss(z @ xp.asarray(thetas, dtype=xp.float64), y)
    return xp.sum(loss, axis=0)[None, :]


def min_margin_block(x, y, w=None, *, theta, fit_intercept: bool):
    """Smallest signed margin ``(2y − 1) η`` over the block's rows with non-zero weight.

    If it is positive over all rows, θ separates the classes and the unpenalised
    (λ = 0) objective has no finite minimiser.

    Returns
    -------
    (1, 1) float64 array (``+inf`` for a block without rows).
    """
    xp = array_namespace(x)
    z = design(x, fit_intercept=fit_intercept)
    margin = (2.0 * xp.asarray(y, dtype=xp.float64) - 1.0) * (z @ xp.asarray(theta, dtype=xp.float64))
    if w is not None:
        margin = xp.where(xp.asarray(w) != 0, margin, xp.inf)
    return xp.min(xp.concatenate([margin, xp.asarray([xp.inf])]))[None, None]


def retrain_block(x, y, rows, *, thetas, sets, newton, fit_intercept: bool):
    """One block's share of a pass of K leave-T-out retrains at once.

    Set k drops the rows ``sets[k]`` and is at ``thetas[:, k]``. One GEMM per sub-block
    gives the logits of every row under every set (rows × K); the gradients are one more.
    As in :func:`newton_block`, the rows are cast to float64 a sub-block of
    :data:`~rifscale.engine.kernels.products.SUB_ROWS` at a time in the thread's scratch
    buffer and never concatenated with a ones column (the intercept's parts are sums), so
    a pass allocates no copy of the block: the retrains' passes then cost the same in a
    dask worker process as in a thread (``_scratch``).

    Parameters
    ----------
    rows : (m,) global row numbers of the block
    thetas : (p, K)
    sets : list of K sorted int64 arrays of removed rows
    newton : list of set positions whose Hessian is also wanted

    Returns
    -------
    (1, 2K + pK + len(newton) p²) float64 array:
        ``[Σ w ℓ (K), Σ w |r| ‖z‖ (K), Σ w r z (p×K, row-major), Hessians (p×p each)]``
        with ``w`` the keep-weights of each set; no penalty.
    """
    xp = array_namespace(x)
    m, d = x.shape
    thetas = xp.asarray(thetas, dtype=xp.float64)
    p, K = thetas.shape
    tw = thetas[:d]
    t0 = thetas[d] if fit_intercept else 0.0
    newton = list(newton)
    keep = xp.asarray(keep_mask(rows, sets))  # row numbers are host arrays; the mask follows x
    out = xp.zeros(2 * K + p * K + len(newton) * p * p, dtype=xp.float64)
    loss, scale = out[:K], out[K : 2 * K]
    grad = out[2 * K : 2 * K + p * K].reshape(p, K)
    hess = out[2 * K + p * K :].reshape(len(newton), p, p)
    step = SUB_ROWS if xp is np else max(m, 1)
    for s in range(0, m, step):
        xb = rows_as(x[s : s + step], np.float64, "rows64") if xp is np else xp.asarray(x[s : s + step], dtype=xp.float64)
        yb, w = y[s : s + step], keep[s : s + step]
        eta = xp.matmul(xb, tw, out=scratch("logits", (xb.shape[0], K), np.float64)) if xp is np else xb @ tw
        eta += t0
        # the (rows × K) quantities in the thread's scratch buffers: allocated afresh, each
        # would be an mmap with page faults in a dask worker (tens of ms per block at K = 16)
        ell, r, (e, inv) = loss_and_residual(eta, yb, scratch_name="retrain")
        ell *= w
        loss += xp.sum(ell, axis=0)
        r *= w
        norms = xp.sqrt(xp.einsum("ij,ij->i", xb, xb) + float(fit_intercept))
        scale += norms @ xp.abs(r, out=ell)
        grad[:d] += xb.T @ r
        if fit_intercept:
            grad[d] += xp.sum(r, axis=0)
        if not newton:
            continue
        alpha = e[:, newton] * inv[:, newton] * inv[:, newton]  # sigmoid_and_weight's α
        wa = w[:, newton] * alpha
        if fit_intercept:  # the intercept row and column of every Hessian: Σ wα x and Σ wα
            side = xb.T @ wa
            for j in range(len(newton)):
                hess[j, :d, d] += side[:, j]
                hess[j, d, d] += xp.sum(wa[:, j])
        for j in range(len(newton)):
            root = xp.sqrt(wa[:, j])
            b = xp.multiply(xb, root[:, None], out=scratch("scaled64", xb.shape, np.float64)) if xp is np else \
                xb * root[:, None]
            gram_accumulate(b, hess[j, :d, :d])
    for j in range(len(newton)):  # symmetrised against rounding, as newton_block's: 0.5 (H + Hᵀ)
        top = hess[j, :d, :d]
        copy = scratch("hessian64", (d, d), np.float64) if xp is np else xp.empty((d, d), dtype=xp.float64)
        copy[...] = top
        xp.add(copy, copy.T, out=top)
        xp.multiply(top, 0.5, out=top)
        if fit_intercept:
            hess[j, d, :d] = hess[j, :d, d]
    return out[None, :]


#: Columns of :func:`score_block` before the per-metric IF and RIF columns.
SCORE_COLUMNS = ("prob", "residual", "alpha", "leverage", "self_if", "self_rif", "flag")


def _at_rows(x, y, theta, linv, U, *, fit_intercept: bool):
    """Per row at θ: ``z_iᵀ U`` (m, M), p, r, α, ``q = ‖L⁻¹z_i‖²`` and the leverage
    ``h = α q``, from one read of the rows (:func:`~rifscale.engine.kernels.products.design_products`)."""
    W = np.concatenate([np.asarray(theta, dtype=np.float64)[:, None], np.asarray(U, dtype=np.float64)], axis=1)
    both, q = design_products(x, linv, W, fit_intercept=fit_intercept)
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


def set_stats_block(x, y, *, theta, linv, fit_intercept: bool, threshold: float, gram: bool):
    """Sums over the rows of a removal set T (its rows of one block, picked by the caller).

    Returns
    -------
    (1, 2p + 1 [+ p*p]) float64 array:
        ``[Σ_T g_i, Σ_T g_i / (1 − h_i), #flagged in T, (Σ_T α_i z_i z_iᵀ if gram)]``.
        Flagged rows are left out of the second sum; the caller reports the set's RIF
        as NaN when the count is non-zero.
    """
    xp = array_namespace(x)
    _, _, r, alpha, _, h = _at_rows(x, y, theta, linv, np.empty((len(theta), 0)), fit_intercept=fit_intercept)
    z = design(x, fit_intercept=fit_intercept)
    one_minus_h = 1.0 - h
    flag = one_minus_h < threshold
    rescaled = xp.where(flag, 0.0, r / xp.where(flag, 1.0, one_minus_h))
    parts = [z.T @ r, z.T @ rescaled, xp.sum(flag, dtype=xp.float64)[None]]
    if gram:
        parts.append(((z * alpha[:, None]).T @ z).ravel())
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



# Approximate leave-one-out (docs/design.md §8.10). With q_i = z_iᵀH⁻¹z_i = ‖L⁻¹z_i‖², the
# one-step Newton leave-one-out logit (at θ̂ + Δθ_RIF(i), the removal step of §1.4) is
# η̃_i = η_i + q_i r_i / (1 − h_i) = η_i + (h_i/α_i)(p_i − y_i)/(1 − h_i), computed from q_i,
# never as h_i/α_i (0/0 when α_i underflows). A row with 1 − h_i < threshold is flagged and
# its 1 − h_i taken as the threshold. Losses of a logit: log-loss, 0/1 error ([η > 0] ≠ y,
# η = 0 predicts class 0 as scikit-learn does) and Brier (σ(η) − y)².

#: Columns of :func:`loo_block`: per-block sums.
LOO_COLUMNS = ("rows", "loo_logloss", "loo_error", "loo_brier", "train_logloss", "train_error", "train_brier",
               "leverage", "flagged")
#: Columns of :func:`heldout_block`: per-block sums.
HELDOUT_COLUMNS = ("rows", "logloss", "error", "brier")


def loo_losses(eta, y):
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


def loo_block(x, y, *, theta, linv, fit_intercept: bool, threshold: float):
    """Sums over the block's rows of the approximate leave-one-out losses and the training
    losses at θ̂, the leverages and the flags.

    Returns
    -------
    (1, 9) float64 array with columns :data:`LOO_COLUMNS`.
    """
    xp = array_namespace(x)
    eta, loo, h, flag = loo_rows(x, y, theta=theta, linv=linv, fit_intercept=fit_intercept, threshold=threshold)
    cols = [xp.ones_like(eta), *loo_losses(loo, y), *loo_losses(eta, y), h, flag.astype(xp.float64)]
    return xp.stack([xp.sum(c) for c in cols])[None, :]


def heldout_block(x, y, *, theta, fit_intercept: bool):
    """Sums over the block's rows of the three losses at θ.

    Returns
    -------
    (1, 4) float64 array with columns :data:`HELDOUT_COLUMNS`.
    """
    xp = array_namespace(x)
    eta = design(x, fit_intercept=fit_intercept) @ xp.asarray(theta, dtype=xp.float64)
    cols = [xp.ones_like(eta), *loo_losses(eta, y)]
    return xp.stack([xp.sum(c) for c in cols])[None, :]



# Flip-set audits (docs/design.md §8.11): per training row r, α, q = ‖L⁻¹z‖², ‖z‖ and the
# IF scores of linear metrics (test margins), from one read of the rows.

def audit_block(x, y, *, theta, linv, U, Wz, fit_intercept: bool):
    """One block's audit columns.

    Parameters
    ----------
    x : (m, d) array;  y : (m,) array of 0/1
    theta : (p,) fitted parameters;  linv : (p, p) inverse of the lower Cholesky factor of H
    U : (p, M) columns ``u_t = H⁻¹ v_t``
    Wz : (p, J) columns ``w_j`` (J may be 0)

    Returns
    -------
    (m, 4 + M + J) float64 array: ``r, α, q, ‖z‖``, then ``s_IF`` for each column of U,
    then ``z_iᵀ w_j`` for each column of Wz.
    """
    xp = array_namespace(x)
    M = U.shape[1]
    W = np.concatenate([np.asarray(theta, dtype=np.float64)[:, None], np.asarray(U, dtype=np.float64),
                        np.asarray(Wz, dtype=np.float64)], axis=1)
    zw, q = design_products(x, linv, W, fit_intercept=fit_intercept)
    eta = zw[:, 0]
    _, alpha = sigmoid_and_weight(eta)
    r = residual(eta, y)
    x64 = xp.asarray(x, dtype=xp.float64)
    znorm = xp.sqrt(xp.einsum("ij,ij->i", x64, x64) + (1.0 if fit_intercept else 0.0))
    cols = xp.stack([r, alpha, q, znorm], axis=1)
    return xp.concatenate([cols, r[:, None] * zw[:, 1 : 1 + M], zw[:, 1 + M :]], axis=1)


def row_terms(z, y, *, theta):
    """Per-row loss, gradient and Hessian root of a few float64 design rows ``z`` held in
    memory (the rows a retrain adds, a set gathered for its Woodbury update, a poisoned
    point): ``(ℓ (m,), G (m, p) with rows g_i = r_i z_i, B (m, p) with rows √α_i z_i)``,
    so that ``Σ_i ∇²ℓ_i = Bᵀ B``."""
    xp = array_namespace(z)
    eta = z @ xp.asarray(theta, dtype=xp.float64)
    _, alpha = sigmoid_and_weight(eta)
    return log_loss(eta, y), z * residual(eta, y)[:, None], z * xp.sqrt(alpha)[:, None]


def self_influence(z, y, *, theta, solve):
    """Leverage and self-influence of design rows ``z`` under the Hessian whose solve is
    ``solve`` (``v ↦ H⁻¹ v``), the formulas of :func:`score_block` with ``q_i = z_iᵀ H⁻¹ z_i``:
    ``(h, IF and RIF change of each row's own logit)``, each (m,)."""
    eta = z @ theta
    _, alpha = sigmoid_and_weight(eta)
    r = residual(eta, y)
    q = np.einsum("ij,ji->i", z, solve(z.T))
    h = alpha * q
    return h, r * q, r * q / (1.0 - h)


@dataclass(frozen=True)
class BinaryLogistic:
    """Binary logistic regression (labels 0/1, one weight vector, sigmoid link), the first
    :class:`~rifscale.engine.family.ModelFamily`: the kernels of this module, bundled.

    Examples
    --------
    >>> from rifscale.engine.kernels.logistic import BINARY
    >>> BINARY.n_params(384, fit_intercept=True)
    385
    """

    name: str = "binary"
    score_columns: ClassVar[tuple[str, ...]] = SCORE_COLUMNS
    #: ``|ℓ‴| ≤ c ‖z‖ ℓ″`` along any direction: the logistic loss is generalised
    #: self-concordant with c = 1 (the error certificates' radius is c · max ‖z_i‖).
    self_concordance: ClassVar[float] = 1.0
    devices: ClassVar[tuple[str, ...]] = ("cpu", "gpu")
    counts_labels: ClassVar[bool] = False

    newton_block = staticmethod(newton_block)
    loss_block = staticmethod(loss_block)
    row_loss_block = staticmethod(row_loss_block)
    min_margin_block = staticmethod(min_margin_block)
    retrain_block = staticmethod(retrain_block)
    score_block = staticmethod(score_block)
    set_stats_block = staticmethod(set_stats_block)
    metric_grad_block = staticmethod(metric_grad_block)
    metric_values_block = staticmethod(metric_values_block)
    row_terms = staticmethod(row_terms)
    self_influence = staticmethod(self_influence)
    audit_block = staticmethod(audit_block)
    loo_rows = staticmethod(loo_rows)
    loo_block = staticmethod(loo_block)
    heldout_block = staticmethod(heldout_block)
    loo_losses = staticmethod(loo_losses)

    @staticmethod
    def predict_logits(z, theta):
        """The logits ``z θ`` of design rows ``z`` (m, p): (m,)."""
        return np.asarray(z, dtype=np.float64) @ np.asarray(theta, dtype=np.float64)

    @staticmethod
    def n_params(d: int, *, fit_intercept: bool) -> int:
        """p = d + 1 with an intercept (θ's last entry), else d."""
        return d + int(fit_intercept)

    @staticmethod
    def penalty_diag(p: int, *, fit_intercept: bool) -> np.ndarray:
        """Ones, with a zero for the intercept (θ's last entry)."""
        return penalty_diag(p, fit_intercept=fit_intercept)

    @staticmethod
    def other_label(y):
        """1 − y."""
        return 1.0 - y

    @staticmethod
    def prediction_change(z, y, *, before, after):
        """The logit's change ``zᵀ(after − before)``."""
        return z @ (after - before)

    @staticmethod
    def record() -> None:
        """Nothing: a run without a ``model`` record is binary."""
        return None

    @staticmethod
    def check_settings(*, lam: float, device: str) -> None:
        """Any λ ≥ 0 (λ = 0 is checked after the fit) and device."""

    @staticmethod
    def check_labels(split: str, lo: int, hi: int, counts=None) -> None:
        """Labels must be 0/1."""
        if lo < 0 or hi > 1:
            raise CorpusError(
                f"{split}/y holds labels outside {{0, 1}} (min {lo}, max {hi}): the binary model needs two classes "
                "0 and 1. For labels 0..K-1 use the softmax model (`rifscale run --model softmax`, or "
                "attribute(..., model='softmax'))."
            )

    def __dask_tokenize__(self):
        return ("rifscale-model-family", type(self).__qualname__, self.name)


#: The binary logistic family (the default of every stage).
BINARY = BinaryLogistic()
