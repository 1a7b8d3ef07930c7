r"""Margins of linear predictions under proven error bounds (docs/design.md §8.11): how far a
computed margin ``zᵀθ`` can be from the exact optimum's, and, per block of test rows, the
predictions certainly lost and possibly gained by K retrained parameter vectors."""

from __future__ import annotations

import numpy as np

from ..._namespace import array_namespace


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
