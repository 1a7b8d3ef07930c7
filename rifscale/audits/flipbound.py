r"""A proven lower bound on the size of any set whose removal flips a prediction
(docs/design.md §8.11). Pure driver arithmetic on sorted per-row quantities.

Notation at the fitted θ̂ (taken as the exact optimum): ``q_i = z_iᵀH⁻¹z_i``,
``h_i = α_i q_i``, ``‖v‖_{H⁻¹} = √(vᵀH⁻¹v)``; for a test point t with margin
``m_t = z_tᵀθ̂`` and predicted sign ``s_t``, the flip of the removal of T is
``s_t z_tᵀ(θ̂_{−T} − θ̂) ≤ −|m_t|``.

**H-metric bound (any model).** Removing T and moving by δ = ‖θ − θ̂‖_H keeps
``∇²L_{−T}(θ) ⪰ e^{−ρδ} κ H`` with ``κ = 1 − Σ_{i∈T} h_i − Σ_{√q_i>ρ} h_i`` (rows
with ``√q_i > ρ`` are dropped from the curvature, the others move their logits by at most
ρδ; self-concordance), for every ρ > 0. With ``Γ ≥ ‖Σ_T g_i‖_{H⁻¹}`` and
``x = ρΓ/κ < 1``, every flip needs

    Σ_{i∈T} c_i ≥ μ′ |m_t|,   c_i = (‖z_t‖_{H⁻¹} |r_i| √q_i − s_t s_IF(i)) / 2,
    μ′ = κ x / (−log(1 − x))

(``s_IF(i) = r_i z_iᵀH⁻¹z_t``). Uniformly over |T| = k: Σ_T h ≤ the k largest h,
Γ ≤ the k largest ``|r_i|√q_i``, Σ_T c ≤ the k largest c. A size k is *excluded* when some
ρ proves ``C_k < μ′_k |m_t|``; the smallest k not excluded is the lower bound.
This needs no strong convexity from λ: the intercept is handled by H itself.

**Euclidean bound (no intercept only).** ``∇²L_{−T} ⪰ λ I`` everywhere, so every flip needs
``Σ_{i∈T} (‖z_t‖ |r_i| ‖z_i‖ − s_t r_i z_iᵀz_t) / 2 ≥ λ |m_t|``. With an unpenalised
intercept λ is *not* a lower bound on the curvature (§8.9, step 4) and this bound is not
used.
"""

from __future__ import annotations

import numpy as np

#: Relative slack against the rounding of the sums that enter the bound.
SLACK = 1e-9


def _first_not_excluded(excluded: np.ndarray) -> int:
    """1 + the index of the first False in ``excluded`` (sizes 1..K), or K + 1."""
    bad = np.flatnonzero(~excluded)
    return int(bad[0]) + 1 if bad.size else excluded.size + 1


def curvature_factor(removed, gamma, rho, mass) -> np.ndarray:
    """μ′ for removals with ``Σ_T h_i ≤ removed`` and ``‖Σ_T g_i‖_{H⁻¹} ≤ gamma`` (arrays
    of one value per case): the largest ``κ x / (−log(1 − x))`` over the radii ρ, with
    ``κ = 1 − removed − mass(ρ)`` and ``x = ρ gamma / κ``; 0 where no ρ gives κ > 0 and
    x < 1 (nothing proven). Then ``s_t z_tᵀΔθ_T ≥ −Σ_{i∈T} c_i / μ′`` for every such T."""
    removed, gamma = np.atleast_1d(removed)[:, None], np.atleast_1d(gamma)[:, None]
    kappa = 1.0 - removed - np.asarray(mass)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.asarray(rho)[None, :] * gamma / kappa
        ok = (kappa > 0) & (x < 1) & np.isfinite(x)
        xs = np.where(ok, x, 0.5)
        psi = np.where(xs > 0, xs / -np.log1p(-xs), 1.0)
    return np.where(ok, kappa * psi, 0.0).max(axis=1)


def h_metric_bound(margin: float, c: np.ndarray, h: np.ndarray, gamma: np.ndarray, rho: np.ndarray,
                   mass: np.ndarray) -> int:
    """Lower bound on any flip set's size by the H-metric argument.

    Parameters
    ----------
    margin : |m_t|
    c : (K,) the K largest ``c_i`` of the point, descending
    h : (K,) the K largest leverages, descending
    gamma : (K,) the K largest ``|r_i| √q_i``, descending
    rho : (G,) localisation radii; mass : (G,) ``Σ_{√q_i > ρ} h_i`` for each

    Returns
    -------
    k ≥ 1: no set of fewer than k rows flips the point; K + 1 when no size up to K can flip it.
    """
    C = np.cumsum(c) * (1 + SLACK)
    mu = curvature_factor(np.cumsum(h), np.cumsum(gamma), rho, mass) * (1 - SLACK)
    return _first_not_excluded(C < mu * margin)


def euclidean_bound(margin: float, c_euclid: np.ndarray, *, lam: float) -> int:
    """Lower bound without an intercept: the smallest k with ``C_k ≥ λ |m_t|``; ``c_euclid``
    the K largest ``(‖z_t‖|r_i|‖z_i‖ − s_t r_i z_iᵀz_t)/2``, descending."""
    C = np.cumsum(c_euclid) * (1 + SLACK)
    return _first_not_excluded(C < lam * margin * (1 - SLACK))


def flip_lower_bound(margin: float, *, c, h, gamma, rho, mass, c_euclid=None, lam: float,
                     fit_intercept: bool) -> int:
    """The larger of the valid bounds: the H-metric one, and without an intercept the
    Euclidean one (λ-strong convexity holds only then)."""
    k = h_metric_bound(margin, c, h, gamma, rho, mass)
    if not fit_intercept and lam > 0 and c_euclid is not None:
        k = max(k, euclidean_bound(margin, c_euclid, lam=lam))
    return k
