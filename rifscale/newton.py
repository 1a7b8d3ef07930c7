r"""The one Newton core shared by the fit, the batched retrains and the poisoned fits.

Everything here works on sums over rows that a pass over the data has already returned
(:mod:`rifscale.hessian` builds them); nothing reads data. It owns the constants and
the rules that must not differ between the places that minimise

.. math::

    L(\theta) = \sum_i w_i \ell_i(\theta) + \tfrac{\lambda}{2}\|D\theta\|^2,\qquad
    D = \mathrm{diag}(1, \dots, 1, 0) \text{ with an intercept (last entry), } I \text{ without}

* :func:`penalised`: adds the penalty to loss, gradient and Hessian sums, for K
  parameter vectors at once, and gives each gradient's rounding floor;
* :func:`accept`: the step-acceptance test of every line search (Armijo, or — once the
  loss is at its rounding floor — a lower gradient norm);
* :func:`stop_reason`: the stopping test (relative tolerance or rounding floor);
* :func:`newton_direction`: ``−H⁻¹ g`` by Cholesky, with the errors that say why not.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

#: Armijo's sufficient-decrease constant: accept ``L(θ + t s) ≤ L(θ) + ARMIJO t ∇Lᵀ s``.
ARMIJO = 1e-4
#: A trial loss this close (relative) to the current one is equal up to rounding.
LOSS_ROUNDING = 1e-12
#: Smallest step length a line search tries before it gives up.
MIN_STEP = 2.0**-30
#: Multiple of ε · (Σ|r_i|‖z_i‖ + λ‖Dθ‖) below which a gradient norm is rounding noise.
ROUNDING_FACTOR = 32.0
EPS = float(np.finfo(np.float64).eps)


def penalty_diag(p: int, *, fit_intercept: bool) -> np.ndarray:
    """Diagonal of D: ones, with a zero for the intercept (last) entry."""
    D = np.ones(p)
    if fit_intercept:
        D[-1] = 0.0
    return D


def penalised(thetas, loss, grad, scale, *, lam: float, fit_intercept: bool):
    """Add the penalty to row sums at one θ (shape (p,)) or K of them (shape (p, K)).

    Parameters
    ----------
    thetas : (p,) or (p, K)
    loss, scale : float or (K,) sums of ``w ℓ`` and of ``w |r| ‖z‖`` over the rows
    grad : (p,) or (p, K) sums of ``w r z``

    Returns
    -------
    (loss, grad, floor): the penalised loss and gradient, and the gradient norm below
    which the gradient is rounding noise (``ROUNDING_FACTOR ε (Σ|r|‖z‖ + λ‖Dθ‖)``).
    """
    thetas = np.asarray(thetas, dtype=np.float64)
    D = penalty_diag(thetas.shape[0], fit_intercept=fit_intercept)
    Dt = D * thetas if thetas.ndim == 1 else D[:, None] * thetas
    loss = loss + 0.5 * lam * np.sum(Dt * thetas, axis=0)
    grad = grad + lam * Dt
    floor = ROUNDING_FACTOR * EPS * (scale + lam * np.linalg.norm(Dt, axis=0))
    return loss, grad, floor


def penalised_hessian(h, *, lam: float, fit_intercept: bool) -> np.ndarray:
    """``Σ w α z zᵀ + λ D`` from the summed row terms (symmetrised against rounding)."""
    h = np.asarray(h, dtype=np.float64)
    D = penalty_diag(h.shape[0], fit_intercept=fit_intercept)
    return 0.5 * (h + h.T) + lam * np.diag(D)


def accept(loss: float, gnorm: float, *, prev_loss: float, prev_gnorm: float, t: float, slope: float) -> bool:
    """Whether a trial point ends the line search.

    Armijo's condition ``L(θ + t s) ≤ L(θ) + ARMIJO t ∇Lᵀ s``; or, once L is at its
    rounding floor (equal to the current loss to ``LOSS_ROUNDING``), a lower ‖∇L‖ —
    there Armijo compares rounding noise.
    """
    if not np.isfinite(loss) or not np.isfinite(gnorm):
        return False
    if loss <= prev_loss + ARMIJO * t * slope:
        return True
    return loss <= prev_loss + LOSS_ROUNDING * abs(prev_loss) and gnorm < prev_gnorm


def stop_reason(gnorm: float, *, ref: float, floor: float, tol: float) -> str | None:
    """"tolerance" when ``‖∇L‖ ≤ tol · ref``, "rounding floor" when ‖∇L‖ is at its
    rounding floor (no iteration can lower it further), None otherwise."""
    if gnorm <= tol * ref:
        return "tolerance"
    if gnorm <= floor:
        return "rounding floor"
    return None


def newton_direction(hessian: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """``−H⁻¹ g`` by Cholesky; raises ``numpy.linalg.LinAlgError`` when H is not PD."""
    c = scipy.linalg.cho_factor(hessian, lower=True, check_finite=False)
    return -scipy.linalg.cho_solve(c, grad, check_finite=False)
