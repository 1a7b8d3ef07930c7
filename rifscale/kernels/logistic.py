r"""Binary logistic regression on one block of rows.

Model (DESIGN.md §1). A block holds rows ``x`` of shape (m, d) and labels ``y`` in {0, 1}
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

from ._namespace import array_namespace


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


def newton_block(x, y, w=None, *, theta, fit_intercept: bool):
    """Loss, gradient and Hessian of one block at ``theta``, packed in one row.

    Parameters
    ----------
    x : (m, d) array
    y : (m,) array of 0/1
    w : (m,) array or None
        Per-row weights (0/1 to drop rows); None means all ones.
    theta : (p,) array
    fit_intercept : bool

    Returns
    -------
    (1, 2 + p + p*p) float64 array
        ``[Σ w ℓ, Σ w |r| ‖z‖, Σ w r z (p), Σ w α z zᵀ (p*p, row-major)]``. The second
        entry is the scale of the gradient sum: its rounding error is a small multiple of
        machine epsilon times this.
    """
    xp = array_namespace(x)
    z = design(x, fit_intercept=fit_intercept)
    theta = xp.asarray(theta, dtype=xp.float64)
    eta = z @ theta
    _, alpha = sigmoid_and_weight(eta)
    loss = log_loss(eta, y)
    r = residual(eta, y)
    if w is not None:
        w = xp.asarray(w, dtype=xp.float64)
        loss, r, alpha = w * loss, w * r, w * alpha
    grad = z.T @ r
    scale = xp.sum(xp.abs(r) * xp.sqrt(xp.sum(z * z, axis=1)))
    hess = (z * alpha[:, None]).T @ z
    return xp.concatenate([xp.stack([xp.sum(loss), scale]), grad, hess.ravel()])[None, :]


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
    w = keep_mask(rows, sets)
    loss = xp.sum(w * log_loss(eta, y), axis=0)
    r = w * residual(eta, y)
    scale = xp.sqrt(xp.sum(z * z, axis=1)) @ xp.abs(r)
    parts = [loss, scale, (z.T @ r).ravel()]
    if len(newton):
        _, alpha = sigmoid_and_weight(eta[:, list(newton)])
        wa = w[:, list(newton)] * alpha
        parts += [((z * wa[:, j : j + 1]).T @ z).ravel() for j in range(len(newton))]
    return xp.concatenate(parts)[None, :]
