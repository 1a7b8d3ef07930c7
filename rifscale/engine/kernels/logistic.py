r"""Binary logistic regression on one block of rows.

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

import numpy as np

from ..._namespace import array_namespace
from ._scratch import rows_as, scratch


def design(x, *, fit_intercept: bool):
    """Float64 design block ``z`` of shape (m, p): ``x`` with a column of ones appended
    when ``fit_intercept``."""
    xp = array_namespace(x)
    z = xp.asarray(x, dtype=xp.float64)
    if fit_intercept:
        z = xp.concatenate([z, xp.ones((z.shape[0], 1), dtype=xp.float64)], axis=1)
    return z


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


def sigmoid(eta):
    """σ(η) = 1 / (1 + e^{−η}), stable for any finite η."""
    return sigmoid_and_weight(eta)[0]


#: Rows per sub-block inside a chunk: keeps the float64 copy of a sub-block in cache and
#: bounds float32 accumulation to this many rows before it is added in float64.
SUB_ROWS = 2048

#: Hessian precisions :func:`newton_block` computes; None computes no Hessian.
HESSIAN_DTYPES = ("float32", "float64")


def _gram_accumulate(b, out):
    """``out += bᵀ b`` for a (k, p) block ``b``, the product in ``b``'s precision.

    A plain GEMM: OpenBLAS's symmetric rank-k update (``syrk``, half the flops) measured
    no faster than GEMM on these shapes (benchmarks/README.md), so it buys nothing.
    """
    if array_namespace(b) is np:
        g = np.matmul(b.T, b, out=scratch("gram", (b.shape[1], b.shape[1]), b.dtype))
    else:
        g = b.T @ b
    out += g


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
    H = xp.zeros((d, d), dtype=xp.float64) if hessian else None
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
        _gram_accumulate(b, H)
    parts = [xp.stack([xp.asarray(loss, dtype=xp.float64), xp.asarray(scale, dtype=xp.float64)]), grad]
    if hessian is not None:
        H = 0.5 * (H + H.T)
        if fit_intercept:
            full = xp.empty((p, p), dtype=xp.float64)
            full[:d, :d] = H
            full[:d, d] = hx1
            full[d, :d] = hx1
            full[d, d] = h11
            H = full
        parts.append(H.ravel())
    return xp.concatenate(parts)[None, :]


def row_loss_block(x, y, *, theta, fit_intercept: bool):
    """(m, 1) float64 array of each row's loss ℓ_i(θ)."""
    xp = array_namespace(x)
    z = design(x, fit_intercept=fit_intercept)
    return log_loss(z @ xp.asarray(theta, dtype=xp.float64), y)[:, None]


def loss_block(x, y, w=None, *, thetas, fit_intercept: bool):
    """Summed loss of one block at K parameter vectors at once (one GEMM).

    Parameters
    ----------
    thetas : (p, K) array
    w : (m,) array or None
        Per-row weights; None means all ones.

    Returns
    -------
    (1, K) float64 array of ``Σ_i w_i ℓ_i(θ_k)``.
    """
    xp = array_namespace(x)
    z = design(x, fit_intercept=fit_intercept)
    loss = log_loss(z @ xp.asarray(thetas, dtype=xp.float64), y)
    if w is not None:
        loss = xp.asarray(w, dtype=xp.float64)[:, None] * loss
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


def max_row_norm_block(x, *, fit_intercept: bool):
    """(1, 1) float64 array: the largest ``‖z_i‖`` over the block's rows (0 for none).

    It bounds how fast the curvature weights α_i can change along a segment, which the
    error certificates need (:func:`rifscale.engine.newton.certify`)."""
    xp = array_namespace(x)
    if xp is not np:
        z = design(x, fit_intercept=fit_intercept)
        sq = xp.sum(z * z, axis=1)
        return xp.sqrt(xp.max(xp.concatenate([sq, xp.zeros(1, dtype=xp.float64)])))[None, None]
    if x.shape[0] == 0:
        return np.zeros((1, 1))
    largest = 0.0  # float64 row norms a sub-block at a time, in the thread's scratch buffer (no copy of the block)
    for s in range(0, x.shape[0], SUB_ROWS):
        xb = rows_as(x[s : s + SUB_ROWS], np.float64, "rows64")
        largest = max(largest, float(np.einsum("ij,ij->i", xb, xb).max()))
    return np.sqrt(np.array([[largest + float(fit_intercept)]]))


def keep_mask(rows, sets):
    """(m, K) float64 weights: 0 where row ``rows[i]`` is in ``sets[k]``, 1 elsewhere.

    ``rows`` are the block's consecutive global row numbers; each set is a sorted array of
    row numbers (only its part inside the block is looked at).
    """
    xp = array_namespace(rows)
    m = rows.shape[0]
    mask = xp.ones((m, len(sets)), dtype=xp.float64)
    if m == 0:
        return mask
    start, stop = int(rows[0]), int(rows[-1]) + 1
    for k, s in enumerate(sets):
        lo, hi = (int(v) for v in s.searchsorted([start, stop]))
        if hi > lo:
            mask[xp.asarray(s[lo:hi] - start), k] = 0.0
    return mask


def retrain_block(x, y, rows, *, thetas, sets, newton, fit_intercept: bool):
    """One block's share of a pass of K leave-T-out retrains at once.

    Set k drops the rows ``sets[k]`` and is at ``thetas[:, k]``. One GEMM gives the
    logits of every row under every set (m × K); the gradients are one more.

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
    z = design(x, fit_intercept=fit_intercept)
    eta = z @ xp.asarray(thetas, dtype=xp.float64)
    w = xp.asarray(keep_mask(rows, sets))  # row numbers are host arrays; the mask follows x
    loss = xp.sum(w * log_loss(eta, y), axis=0)
    r = w * residual(eta, y)
    scale = xp.sqrt(xp.sum(z * z, axis=1)) @ xp.abs(r)
    parts = [loss, scale, (z.T @ r).ravel()]
    if len(newton):
        _, alpha = sigmoid_and_weight(eta[:, list(newton)])
        wa = w[:, list(newton)] * alpha
        parts += [((z * wa[:, j : j + 1]).T @ z).ravel() for j in range(len(newton))]
    return xp.concatenate(parts)[None, :]
