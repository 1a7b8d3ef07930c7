r"""Distributed Newton fit of the L2-regularised logistic regression (DESIGN.md §1).

Each iteration is one pass over the row chunks computing L, ∇L and H together
(:mod:`rifscale.hessian`); the p×p Newton system is solved on the driver by Cholesky.
A backtracking line search guards the step: a trial point is accepted when it satisfies
Armijo's condition ``L(θ + t s) ≤ L(θ) + 1e-4 t ∇Lᵀ s`` or — once L is at its rounding
floor — when it lowers ‖∇L‖. Because the pass at the accepted point already holds its
gradient and Hessian, an iteration with a full step costs exactly one pass.

Convergence: ``‖∇L(θ)‖ ≤ tol · ‖∇L(θ₀)‖`` (θ₀ = 0 by default), or ‖∇L(θ)‖ at its
rounding floor ``32 ε (Σ|r_i|‖z_i‖ + λ‖Dθ‖)`` — below that the gradient is noise and no
iteration can lower it (this happens for warm starts whose initial gradient is already
tiny); the record says which (``stopped_at``). Not converging within ``max_iter``
iterations raises :class:`~rifscale.errors.NotConvergedError`; IF and RIF assume
∇L(θ̂) = 0, so a loose fit is never returned silently.

With λ = 0 a minimiser need not exist (separable classes). A converged fit is then
checked: θ must not separate the classes, and H must not be numerically singular.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
import scipy.linalg

from . import kernels
from ._blocks import per_block
from .errors import ConfigError, NotConvergedError, NotPositiveDefiniteError, not_positive_definite
from .hessian import Objective, objective
from .io import find_nonfinite

log = logging.getLogger(__name__)

ARMIJO = 1e-4
MIN_STEP = 2.0**-30
#: A trial loss this close (relative) to the current one is equal up to rounding.
LOSS_ROUNDING = 1e-12
#: With λ = 0, H with a smaller eigenvalue ratio is treated as singular.
MIN_RCOND_UNPENALISED = 1e-10


@dataclass(frozen=True)
class FitResult:
    """θ̂ and the convergence record of a Newton fit."""

    theta: np.ndarray
    lam: float
    fit_intercept: bool
    converged: bool
    n_iter: int
    n_passes: int
    loss: float
    grad_norm: float
    rel_grad_norm: float
    tol: float
    stopped_at: str
    seconds: float
    hessian: np.ndarray = field(repr=False)
    history: tuple = field(default=(), repr=False)

    def record(self) -> dict:
        """JSON-ready convergence record."""
        return {
            "converged": self.converged,
            "n_iter": self.n_iter,
            "n_passes": self.n_passes,
            "loss": self.loss,
            "grad_norm": self.grad_norm,
            "rel_grad_norm": self.rel_grad_norm,
            "tol": self.tol,
            "stopped_at": self.stopped_at,
            "seconds": self.seconds,
            "history": list(self.history),
        }


def _check_not_separated(X, y, theta, *, fit_intercept, weights) -> None:
    """With λ = 0 a 'converged' θ that classifies every row correctly is an artefact: the
    classes are separable, the loss tends to 0 as ‖θ‖ → ∞ and no minimiser exists."""
    margins = per_block(kernels.min_margin_block, X, y, weights, width=1, theta=theta, fit_intercept=fit_intercept)
    if float(margins.min().compute()) > 0:
        raise NotConvergedError(
            "With lam = 0 the fit has no finite optimum: theta separates the two classes "
            "perfectly (every training row is on its correct side), so the loss only reaches 0 "
            "as |theta| grows without bound and IF/RIF would be meaningless. Use lam > 0."
        )


def _check_unpenalised_hessian(hessian: np.ndarray) -> None:
    ev = np.linalg.eigvalsh(hessian)
    if ev[0] <= MIN_RCOND_UNPENALISED * ev[-1]:
        raise NotConvergedError(
            "With lam = 0 the Hessian at the fitted theta is numerically singular (eigenvalue "
            f"ratio {max(ev[0], 0) / ev[-1]:.1e}): the classes are (quasi-)separable or features "
            "are collinear, so theta is not pinned down and IF/RIF would be meaningless. Use lam > 0."
        )


def _newton_step(obj: Objective, *, lam: float, it: int) -> np.ndarray:
    if not np.isfinite(obj.hessian).all():
        raise not_positive_definite(
            f"at Newton iteration {it}", "it holds NaN or Inf: check the scale of X (huge feature values)"
        )
    try:
        c = scipy.linalg.cho_factor(obj.hessian, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        if lam > 0:
            raise NotPositiveDefiniteError(
                f"The Hessian at Newton iteration {it} is not positive definite although lam = {lam} > 0. "
                "The intercept is not penalised, so this happens when every alpha_i underflows "
                "(all |eta_i| huge), e.g. from a warm start far from the optimum: start from zeros "
                "(theta0=None) or rescale X."
            ) from None
        raise not_positive_definite(f"at Newton iteration {it}") from None
    return -scipy.linalg.cho_solve(c, obj.grad, check_finite=False)


def fit(
    X: da.Array,
    y: da.Array,
    *,
    lam: float,
    fit_intercept: bool = True,
    tol: float = 1e-10,
    max_iter: int = 50,
    weights: da.Array | None = None,
    theta0: np.ndarray | None = None,
    progress: int = logging.INFO,
) -> FitResult:
    """Minimise ``Σ w_i ℓ_i(θ) + (λ/2)‖θ_w‖²`` by safeguarded Newton.

    Parameters
    ----------
    X : (n, d) dask array, row-chunked
    y : (n,) dask array of 0/1, same row chunks
    weights : (n,) dask array or None
        Row weights (0 drops a row); None keeps all rows.
    theta0 : (p,) array or None
        Starting point (warm start); zeros by default.
    progress : int
        Logging level of the per-iteration progress lines.
    """
    t0 = time.perf_counter()
    p = X.shape[1] + int(fit_intercept)
    theta = np.zeros(p) if theta0 is None else np.asarray(theta0, dtype=np.float64).copy()
    if theta.shape != (p,):
        raise ConfigError(
            f"theta0 has shape {theta.shape}; expected ({p},) = d + fit_intercept for d = {X.shape[1]}."
        )

    def evaluate(th):
        # non-finite values are checked right after each pass (and named), not warned about
        with np.errstate(invalid="ignore", over="ignore"):
            return objective(X, y, th, lam=lam, fit_intercept=fit_intercept, weights=weights)

    obj = evaluate(theta)
    passes = 1
    if not (np.isfinite(obj.loss) and np.isfinite(obj.grad).all()):
        find_nonfinite("train", X)
        raise NotConvergedError("The objective is not finite at the starting point; check the scale of X.")
    ref = float(np.linalg.norm(obj.grad)) or 1.0
    history = []
    for it in range(max_iter + 1):
        gnorm = float(np.linalg.norm(obj.grad))
        rel = gnorm / ref
        history.append({"iter": it, "loss": obj.loss, "grad_norm": gnorm, "rel_grad_norm": rel})
        log.log(progress, "newton iter %2d  loss %.12g  rel grad %.3e", it, obj.loss, rel)
        stopped_at = "tolerance" if rel <= tol else "rounding floor" if gnorm <= obj.grad_floor else None
        if stopped_at:
            if lam == 0:
                _check_not_separated(X, y, obj.theta, fit_intercept=fit_intercept, weights=weights)
                _check_unpenalised_hessian(obj.hessian)
            return FitResult(
                theta=obj.theta,
                lam=lam,
                fit_intercept=fit_intercept,
                converged=True,
                n_iter=it,
                n_passes=passes,
                loss=obj.loss,
                grad_norm=gnorm,
                rel_grad_norm=rel,
                tol=tol,
                stopped_at=stopped_at,
                seconds=time.perf_counter() - t0,
                hessian=obj.hessian,
                history=tuple(history),
            )
        if it == max_iter:
            break
        step = _newton_step(obj, lam=lam, it=it)
        slope = float(obj.grad @ step)
        t = 1.0
        while True:
            trial = evaluate(obj.theta + t * step)
            passes += 1
            finite = np.isfinite(trial.loss) and np.isfinite(trial.grad).all()
            if finite and (
                trial.loss <= obj.loss + ARMIJO * t * slope
                # at the loss's rounding floor Armijo is noise: a lower gradient decides
                or (
                    trial.loss <= obj.loss + LOSS_ROUNDING * abs(obj.loss)
                    and np.linalg.norm(trial.grad) < gnorm
                )
            ):
                break
            t *= 0.5
            if t < MIN_STEP:
                raise NotConvergedError(
                    f"The Newton line search failed at iteration {it} (relative gradient norm "
                    f"{rel:.3e}, tolerance {tol:.1e}): no step along the Newton direction lowers "
                    "the objective. The problem is badly conditioned; increase lam or loosen tol."
                )
        history[-1]["step"] = t
        obj = trial
    hint = (
        " With lam = 0 this usually means the classes are separable and theta diverges; use lam > 0."
        if lam == 0
        else " Increase max_iter, or increase lam if the problem is badly conditioned."
    )
    raise NotConvergedError(
        f"The Newton fit did not converge in max_iter = {max_iter} iterations: relative gradient "
        f"norm {rel:.3e} > tol = {tol:.1e} (loss {obj.loss:.6g}).{hint}"
    )
