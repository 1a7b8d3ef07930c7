r"""The one Newton core shared by the fit, the batched retrains and the poisoned fits.

Everything here works on sums over rows that a pass over the data has already returned
(:mod:`rifscale.engine.hessian` builds them); nothing reads data. It owns the constants and
the rules that must not differ between the places that minimise

.. math::

    L(\theta) = \sum_i w_i \ell_i(\theta) + \tfrac{\lambda}{2}\|D\theta\|^2,\qquad
    D = \mathrm{diag}(1, \dots, 1, 0) \text{ with an intercept (last entry), } I \text{ without}

* :func:`penalised`: adds the penalty to loss, gradient and Hessian sums, for K
  parameter vectors at once, and gives each gradient's rounding floor;
* :func:`accept`: the step-acceptance test of every line search (Armijo, or — once the
  loss is at its rounding floor — a lower gradient norm);
* :func:`certify`, :func:`curvature`, :func:`carry_curvature`, :func:`leave_out_curvature`:
  a proven bound on the distance from θ to the minimiser, from ∇L at θ and a lower bound
  on the smallest eigenvalue of H there (docs/design.md §8.9);
* :func:`stop_reason`: the stopping test (certified to the tolerance, or rounding floor);
* :func:`newton_direction`: ``−H⁻¹ g`` by Cholesky, with the errors that say why not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ..cluster import wide_blas

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


def penalised(thetas, loss, grad, scale, *, lam: float, fit_intercept: bool, D=None):
    """Add the penalty to row sums at one θ (shape (p,)) or K of them (shape (p, K)).

    Parameters
    ----------
    thetas : (p,) or (p, K)
    loss, scale : float or (K,) sums of ``w ℓ`` and of ``w |r| ‖z‖`` over the rows
    grad : (p,) or (p, K) sums of ``w r z``
    D : (p,) array, optional
        The penalty's diagonal (the model family's ``penalty_diag``); None: :func:`penalty_diag`.

    Returns
    -------
    (loss, grad, floor): the penalised loss and gradient, and the gradient norm below
    which the gradient is rounding noise (``ROUNDING_FACTOR ε (Σ|r|‖z‖ + λ‖Dθ‖)``).
    """
    thetas = np.asarray(thetas, dtype=np.float64)
    D = penalty_diag(thetas.shape[0], fit_intercept=fit_intercept) if D is None else np.asarray(D, dtype=np.float64)
    Dt = D * thetas if thetas.ndim == 1 else D[:, None] * thetas
    loss = loss + 0.5 * lam * np.sum(Dt * thetas, axis=0)
    grad = grad + lam * Dt
    floor = ROUNDING_FACTOR * EPS * (scale + lam * np.linalg.norm(Dt, axis=0))
    return loss, grad, floor


def penalised_hessian(h, *, lam: float, fit_intercept: bool, D=None) -> np.ndarray:
    """``Σ w α z zᵀ + λ D`` from the summed row terms (symmetrised against rounding); ``D``
    as in :func:`penalised`."""
    h = np.asarray(h, dtype=np.float64)
    D = penalty_diag(h.shape[0], fit_intercept=fit_intercept) if D is None else np.asarray(D, dtype=np.float64)
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


@dataclass(frozen=True)
class Certificate:
    """A proven bound on ``‖θ − θ*‖``, θ* the minimiser of L, from ∇L and H at θ."""

    bound: float  # ‖θ − θ*‖ ≤ bound; inf when nothing is proven
    mu: float  # μ₀: the lower bound on λ_min of the exact ∇²L(θ) it used
    grad_norm: float  # the computed ‖∇L(θ)‖ (the bound adds its rounding floor)
    radius: float  # R ≥ max ‖z_i‖ over the rows of L: how fast α_i can fall away from θ


def curvature(hessian: np.ndarray) -> float:
    """μ₀, a lower bound on the smallest eigenvalue of the exact Hessian whose computed
    value is ``hessian``: ``λ_min`` of the computed matrix (LAPACK, backward stable) less
    ``2 · ROUNDING_FACTOR · ε · tr H`` — one share for the rounding of the sums that built H
    (entrywise at most 32 ε Σ α |z||z|ᵀ, a matrix of Frobenius norm ≤ Σ α‖z‖² ≤ tr H), one
    for the eigensolver (``32 ε ‖H‖₂ ≤ 32 ε tr H``). May be ≤ 0."""
    H = 0.5 * (hessian + hessian.T)
    if not np.isfinite(H).all():  # overflowed float32 products: nothing to bound
        return -math.inf
    with wide_blas(H.shape[0]):
        low = float(scipy.linalg.eigvalsh(H, subset_by_index=[0, 0], check_finite=False)[0])
    return low - 2.0 * ROUNDING_FACTOR * EPS * float(np.trace(H))


#: Up to this many parameters :func:`estimate_curvature` is :func:`curvature` itself (an
#: eigenvalue of a p × p matrix is cheap there); above, a few inverse power steps.
EXACT_CURVATURE_MAX_P = 512
#: Inverse power steps of :func:`estimate_curvature` (each a pair of triangular solves).
POWER_STEPS = 16


def estimate_curvature(hessian: np.ndarray, factor=None) -> float:
    """An estimate of λ_min(H) that says when a fit may try to stop — not a bound.

    Up to :data:`EXACT_CURVATURE_MAX_P` parameters it is :func:`curvature`. Above (the
    softmax model's P = K(d + 1) − 1 reaches thousands, where an eigenvalue costs ~4/3 P³
    per Hessian, more than the pass that built it), :data:`POWER_STEPS` inverse power
    steps with H's Cholesky factor (P³/3, then P² per step) give ``1 / ‖H⁻¹v‖``, halved:
    the iteration approaches λ_min from above, and only a proof (:func:`curvature` of the
    float64 H at θ̂, in :func:`certify`) ends a fit. Not positive definite: :func:`curvature`.
    ``factor``: H's :func:`cholesky`, when the caller has it (a fit factors each Hessian once).
    """
    p = hessian.shape[0]
    if p <= EXACT_CURVATURE_MAX_P:
        return curvature(hessian)
    H = 0.5 * (hessian + hessian.T)
    if not np.isfinite(H).all():
        return -math.inf
    if factor is None:
        try:
            factor = cholesky(H)
        except (np.linalg.LinAlgError, ValueError):
            return curvature(hessian)
    v = np.cos(np.arange(1, p + 1, dtype=np.float64))  # fixed, with a share of every eigenvector
    v /= np.linalg.norm(v)
    grow = 1.0
    for _ in range(POWER_STEPS):
        v = scipy.linalg.cho_solve(factor, v, check_finite=False)
        grow = float(np.linalg.norm(v))
        if not (grow > 0 and math.isfinite(grow)):
            return curvature(hessian)
        v /= grow
    return 0.5 / grow


def leave_out_curvature(mu: float, relative_min: float, removed: float, *, trace: float, p: int) -> float:
    """μ₀ of ``H_{−T} = H − Σ_{i∈T} α_i z_i z_iᵀ`` at θ̂, without a pass over the data.

    ``H_{−T} = L (I − W Wᵀ) Lᵀ`` with ``W = L⁻¹ Z_Tᵀ A_T^{1/2}``, so ``H_{−T} ⪰ ρ H`` where
    ``ρ = λ_min(I − W Wᵀ)`` (``relative_min``, as computed by
    :class:`~rifscale.estimates.groups.LeaveOutHessian`); with ``mu`` ≤ λ_min(H) (the fit's
    :func:`curvature`), ``λ_min(H_{−T}) ≥ ρ · mu``. Rounding, bounded generously:

    * ``W`` comes from the computed ``L⁻¹``, whose relative error is at most
      ``p ε κ(L)`` per product (κ(L)² = κ(H) ≤ ``trace / mu``), so the computed ρ is within
      ``2 · ROUNDING_FACTOR · p ε κ(L) (1 + tr WᵀW)`` of the exact one (``removed`` = tr WᵀW);
    * ``L Lᵀ`` is H up to Cholesky's backward error (``p ε tr H``), and the removed rows'
      sums carry at most ``ROUNDING_FACTOR · ε · trace`` (their trace is below H's): together
      ``(ROUNDING_FACTOR + p) ε · trace``, taken twice.

    Returns ``−inf`` when nothing positive is proven (ρ at or below its rounding).
    """
    if not (mu > 0 and math.isfinite(relative_min) and math.isfinite(removed) and trace > 0):
        return -math.inf
    kappa = math.sqrt(trace / mu)
    rho = relative_min - 2.0 * ROUNDING_FACTOR * p * EPS * kappa * (1.0 + removed)
    low = rho * mu - 2.0 * (ROUNDING_FACTOR + p) * EPS * trace
    return low if rho > 0 and low > 0 else -math.inf


def carry_curvature(mu: float, *, distance: float, radius: float) -> float:
    """μ₀ at a point ``distance`` away from the one whose Hessian gave ``mu``: by
    self-concordance ``H(θ′) ⪰ e^{−R‖θ′−θ‖} H(θ)``, so ``e^{−R d} μ`` (docs/design.md §8.9)."""
    return mu * math.exp(-radius * distance) if mu > 0 else mu


def certify(mu: float, gnorm: float, floor: float, *, radius: float, lam: float, fit_intercept: bool) -> Certificate:
    """A proven upper bound on ``‖θ − θ*‖`` from the gradient norm at θ and μ₀ ≤ λ_min(H(θ)).

    With ``g = ‖∇L(θ)‖ + floor`` (the exact gradient norm is at most the computed one
    plus its rounding floor), ``μ₀ = mu`` (:func:`curvature` of H(θ), or
    :func:`carry_curvature` from a nearby point) and R = ``radius``:

    * the logistic loss is generalised self-concordant (``|ℓ‴| ≤ ℓ″``), so
      ``α_i(θ′) ≥ e^{−R‖θ′−θ‖} α_i(θ)`` and ``H(θ′) ⪰ e^{−R‖θ′−θ‖} H(θ)`` (the penalty only
      helps); integrating along ``[θ*, θ]`` gives ``g ≥ μ₀ (1 − e^{−Rδ}) / R`` for
      ``δ = ‖θ − θ*‖``, hence ``δ ≤ −log(1 − R g/μ₀) / R`` (≈ g/μ₀) when ``R g < μ₀``;
      θ* then exists (docs/design.md §8.9 has the proof);
    * without an intercept, ``H ⪰ λ I`` everywhere, so also ``δ ≤ g / λ``.

    The bound is the smaller of the two; inf when neither applies (μ₀ ≤ 0 or R g ≥ μ₀,
    and λ = 0 or an intercept). It holds at any θ, converged or not.
    """
    g = gnorm + floor
    bound = math.inf
    if mu > 0:
        x = radius * g / mu
        if x < 1:
            bound = g / mu if x == 0 else -math.log1p(-x) / radius
    if lam > 0 and not fit_intercept:
        bound = min(bound, g / lam)
    return Certificate(bound=float(bound), mu=float(mu), grad_norm=float(gnorm), radius=float(radius))


def stop_reason(bound: float, gnorm: float, *, ref: float, floor: float, tol: float) -> str | None:
    """"tolerance" when the certified error bound is ``≤ tol · ref`` (ref: ‖θ − θ̂‖ for a
    retrain, ‖θ‖ for a fit), "rounding floor" when ‖∇L‖ is at its rounding floor (no
    iteration can lower it, nor the bound, further), None otherwise."""
    if bound <= tol * ref:
        return "tolerance"
    if gnorm <= floor:
        return "rounding floor"
    return None


def cholesky(hessian: np.ndarray):
    """H's Cholesky factor (SciPy's ``cho_factor``, lower); raises
    ``numpy.linalg.LinAlgError`` when H is not PD."""
    with wide_blas(hessian.shape[0]):
        return scipy.linalg.cho_factor(hessian, lower=True, check_finite=False)


def newton_direction(hessian: np.ndarray, grad: np.ndarray, factor=None) -> np.ndarray:
    """``−H⁻¹ g`` by Cholesky (``factor``: H's :func:`cholesky`, if already at hand); raises
    ``numpy.linalg.LinAlgError`` when H is not PD."""
    factor = cholesky(hessian) if factor is None else factor
    with wide_blas(hessian.shape[0]):
        return -scipy.linalg.cho_solve(factor, grad, check_finite=False)
