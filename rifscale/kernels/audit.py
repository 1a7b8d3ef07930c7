r"""Per-block quantities of the flip-set audits (docs/design.md §8.11).

For each training row, at the fitted θ̂ with ``H = L Lᵀ`` and ``linv = L⁻¹``:

.. math::

    r_i,\quad \alpha_i,\quad q_i = z_i^T H^{-1} z_i = \|L^{-1} z_i\|^2,\quad \|z_i\|,\qquad
    s_{IF}^{(t)}(i) = r_i\, z_i^T u_t,\quad u_t = H^{-1} v_t

where each column ``v_t`` of ``V`` is the gradient of a linear metric ``f_t(θ) = v_tᵀθ``
(the margin ``z_tᵀθ`` of an audited test point, or a weighted sum of margins), and,
when asked, the plain products ``z_iᵀ w_j`` with the columns of ``Wz`` (the audited
points' ``z_t``, for the bound without an intercept). The leverage is ``h_i = α_i q_i``
and the RIF score ``s_IF / (1 − h_i)``; both are formed by the caller.
"""

from __future__ import annotations

import numpy as np

from ._namespace import array_namespace
from .logistic import residual, sigmoid_and_weight
from .scores import _design_products


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
    zw, q = _design_products(x, linv, W, fit_intercept=fit_intercept)
    eta = zw[:, 0]
    _, alpha = sigmoid_and_weight(eta)
    r = residual(eta, y)
    x64 = xp.asarray(x, dtype=xp.float64)
    znorm = xp.sqrt(xp.einsum("ij,ij->i", x64, x64) + (1.0 if fit_intercept else 0.0))
    cols = xp.stack([r, alpha, q, znorm], axis=1)
    return xp.concatenate([cols, r[:, None] * zw[:, 1 : 1 + M], zw[:, 1 + M :]], axis=1)


#: Multiple of ε · |z|ᵀ|θ| allowed for the rounding of a computed margin ``z ᵀθ``.
MARGIN_ROUNDING = 32.0


def margin_error(z_abs_theta_abs, znorm, bound):
    """Largest distance between a computed margin ``zᵀθ`` and the exact optimum's
    ``zᵀθ*`` when ``‖θ − θ*‖ ≤ bound``: ``‖z‖ bound`` plus the rounding of the product."""
    return znorm * bound + MARGIN_ROUNDING * np.finfo(np.float64).eps * z_abs_theta_abs


def accuracy_block(x, y, *, theta, thetas, bounds, fit_intercept: bool):
    """Counts of the test rows of one block whose prediction changes, for K retrained θ.

    A row is *correct* at θ̂ when ``(z ᵀθ̂ > 0) == y``. For each column k of ``thetas``
    (whose distance to its exact optimum is at most ``bounds[k]``) a correct row is
    *certainly lost* when its margin at θ_k has the other sign by more than
    :func:`margin_error`, and a wrong row is *possibly gained* unless it certainly stays
    wrong. Then ``lost − gained`` is a proven lower bound on the fall of the number of
    correct rows.

    Returns
    -------
    (1 + 3K,) float64: correct rows at θ̂; per k: certainly lost, possibly gained, and
    the rows correct at θ_k as computed.
    """
    xp = array_namespace(x)
    x64 = xp.asarray(x, dtype=xp.float64)
    T = np.concatenate([np.asarray(theta, dtype=np.float64)[:, None], np.asarray(thetas, dtype=np.float64)], axis=1)
    T = xp.asarray(T)
    d = x64.shape[1]
    eta = x64 @ T[:d] + (T[d] if fit_intercept else 0.0)
    absdot = xp.abs(x64) @ xp.abs(T[:d]) + (xp.abs(T[d]) if fit_intercept else 0.0)
    znorm = xp.sqrt(xp.einsum("ij,ij->i", x64, x64) + (1.0 if fit_intercept else 0.0))
    sign = xp.where(xp.asarray(y)[:, None] == 1, 1.0, -1.0)  # the correct side
    correct0 = (eta[:, 0] > 0) == (xp.asarray(y) == 1)
    err = margin_error(absdot[:, 1:], znorm[:, None], xp.asarray(np.asarray(bounds, dtype=np.float64))[None, :])
    signed = sign * eta[:, 1:]  # > 0: on the correct side at θ_k
    lost = (correct0[:, None] & (signed < -err)).sum(axis=0)
    gained = (~correct0[:, None] & ~(signed < -err)).sum(axis=0)
    correct = ((eta[:, 1:] > 0) == (xp.asarray(y)[:, None] == 1)).sum(axis=0)
    out = xp.concatenate([correct0.sum()[None].astype(xp.float64), xp.stack([lost, gained, correct], axis=1)
                          .reshape(-1).astype(xp.float64)])
    return out
