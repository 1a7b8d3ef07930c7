r"""Distributed Newton fit of the L2-regularised logistic regression (docs/design.md §8.3).

Each pass over the row chunks computes L and ∇L in float64 and, when asked, the Hessian
(:mod:`rifscale.engine.hessian`); the p×p Newton system is solved on the driver by Cholesky.
Only the final answer has to be exact, so the passes before it are made cheap:

* **warm start**: θ starts near the optimum of a strided row subsample (at most
  ``WARM_MAX_ELEMENTS`` values, kept in worker memory, λ scaled by m/n), fitted to
  ``WARM_TOL`` with float32 Hessians; it is dropped when its full-data loss is not below
  L(0);
* **approximate Hessians**: the Hessian products of intermediate iterations are float32
  (sums over chunks in float64), and a Hessian is reused for further steps while each
  step still shrinks ‖∇L‖ at least ``REUSE_BELOW``-fold (a chord step costs one pass
  with no Hessian work);
* **exact end**: the pass expected to converge also computes the float64 Hessian; if
  the converged point's Hessian is not float64, one more pass computes it. The factored
  H is therefore always the float64 Hessian at the returned θ̂.

Steps are safeguarded by a backtracking line search (:func:`rifscale.engine.newton.accept`);
after the first rejected trial the fit falls back to plain Newton with fresh float64
Hessians. Convergence is certified (:func:`rifscale.engine.newton.certify`, docs/design.md
§8.9): θ̂ is returned when a proven bound on ``‖θ̂ − θ*‖``, from ∇L and the float64 H at
θ̂, is ``≤ tol · ‖θ̂‖``, or when ‖∇L(θ̂)‖ is at its rounding floor (``stopped_at`` says
which; the record holds the bound either way). The bound with the Hessian at hand
(float32 or an earlier point's) only says when to try: the proof is always made at the
returned θ̂. Not converging within ``max_iter`` iterations raises
:class:`~rifscale.errors.NotConvergedError`; IF and RIF assume ∇L(θ̂) = 0, so a loose fit
is never returned silently.

With λ = 0 a minimiser need not exist (separable classes). A converged fit is then
checked: θ must not separate the classes, and H must not be numerically singular.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np

from .family import BINARY, ModelFamily
from ._blocks import per_block, persist_rows
from ..cluster import current_client
from ..errors import ConfigError, CorpusError, NotConvergedError, NotPositiveDefiniteError, not_positive_definite
from .hessian import max_row_norm, objectives
from ..corpus.checks import find_nonfinite, scale_outliers
from .newton import (EXACT_CURVATURE_MAX_P, MIN_STEP, accept, certify, cholesky, curvature, estimate_curvature,
    newton_direction, stop_reason)
from ..progress import Bar, newton_fraction

log = logging.getLogger(__name__)

#: With λ = 0, H with a smaller eigenvalue ratio is treated as singular.
MIN_RCOND_UNPENALISED = 1e-10
#: A Hessian is kept for the next step while the last step shrank ‖∇L‖ by at least this.
REUSE_BELOW = 0.1
#: Most values (rows × d) of the warm-start subsample gathered to the driver (64 MiB float32).
WARM_MAX_ELEMENTS = 2**24
#: The warm start needs at least this many subsample rows per parameter (else it is skipped).
WARM_MIN_ROWS_PER_PARAM = 8
#: Relative error tolerance of the subsample fit. Its optimum is itself far from θ̂ (the
#: full fit's first error bound from it is ~0.1-1 x ‖θ̂‖), so precision beyond this is
#: passes spent for nothing: 2e5 x 384, 5 subsample passes instead of 8 at 1e-8, and the
#: full fit's passes unchanged (benchmarks/results/).
WARM_TOL = 1e-3


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
    error_bound: float = np.inf  # proven ‖θ̂ − θ*‖ ≤ error_bound (inf: nothing proven)
    mu: float = np.nan  # the certificate's lower bound on λ_min(H(θ̂))
    row_norm_max: float = np.nan  # R = max ‖z_i‖, the certificate's radius
    history: tuple = field(default=(), repr=False)
    hessian_passes: dict = field(default_factory=dict)  # precision -> passes that built a Hessian
    warm_start: dict | None = None  # the subsample fit's record, if one was used

    @property
    def rel_error_bound(self) -> float:
        """The certified bound relative to ‖θ̂‖: what ``tol`` is compared with."""
        size = float(np.linalg.norm(self.theta))
        return self.error_bound / size if size > 0 else np.inf

    @property
    def certified(self) -> bool:
        """Whether the proven bound met the tolerance (else the fit stopped at the rounding
        floor, or — ``final_hessian=False`` — on an estimate with nothing proven)."""
        return self.rel_error_bound <= self.tol

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
            "certified": self.certified,
            "error_bound": self.error_bound,
            "rel_error_bound": self.rel_error_bound,
            "mu": self.mu,
            "row_norm_max": self.row_norm_max,
            "seconds": self.seconds,
            "hessian_passes": dict(self.hessian_passes),
            "warm_start": self.warm_start,
            "history": list(self.history),
        }


def describe(record: dict) -> str:
    """One line on a fit's convergence record (a run's manifest ``fit``): iterations and
    the error bound on θ̂ relative to ‖θ̂‖ (runs made before certificates have none)."""
    head = f"{record.get('n_iter')} iterations ({record.get('n_passes')} passes)"
    if "rel_error_bound" not in record:
        return f"{head}, rel grad {record.get('rel_grad_norm', float('nan')):.1e}"
    how = "certified" if record.get("certified") else record.get("stopped_at")
    return f"{head}, error bound {record['rel_error_bound']:.1e} x |theta| ({how})"


def _check_not_separated(X, y, theta, *, fit_intercept, weights, family: ModelFamily = BINARY) -> None:
    """With λ = 0 a 'converged' θ that classifies every row correctly is an artefact: the
    classes are separable, the loss tends to 0 as ‖θ‖ → ∞ and no minimiser exists."""
    margins = per_block(family.min_margin_block, X, y, weights, width=1, theta=theta, fit_intercept=fit_intercept)
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


def _direction(H: np.ndarray, grad: np.ndarray, *, lam: float, it: int, X=None, exact: bool = True,
               factor=None) -> np.ndarray:
    if not np.isfinite(H).all():
        if not exact:  # float32 products overflowed: the caller retries with the float64 Hessian
            raise not_positive_definite(f"at Newton iteration {it}", "float32 products overflowed")
        raise CorpusError(
            f"The Hessian at Newton iteration {it} holds NaN or Inf: the feature values are too large for "
            "float64 products. Rescale X (e.g. standardise each column) and re-ingest."
            + (scale_outliers("train", X) if X is not None else "")
        )
    try:
        return newton_direction(H, grad, factor)
    except np.linalg.LinAlgError:
        if lam > 0:
            raise NotPositiveDefiniteError(
                f"The Hessian at Newton iteration {it} is not positive definite although lam = {lam} > 0. "
                "The intercept is not penalised, so this happens when every alpha_i underflows "
                "(all |eta_i| huge), e.g. from a warm start far from the optimum: run without --warm-start "
                "(start from zeros) or rescale X."
            ) from None
        raise not_positive_definite(f"at Newton iteration {it}") from None


def subsample_start(X: da.Array, y: da.Array, weights=None, *, lam: float, fit_intercept: bool,
                    family: ModelFamily = BINARY):
    """θ fitted on a strided row subsample (every k-th row, kept in worker memory), with
    λ scaled by m/n so that its optimum approximates the full one; None when the
    subsample would be too small to help or its fit fails. Returns (θ, record)."""
    n, d = X.shape
    p = family.n_params(d, fit_intercept=fit_intercept)
    m = min(max(WARM_MIN_ROWS_PER_PARAM * p, n // 16), WARM_MAX_ELEMENTS // d)
    if m < WARM_MIN_ROWS_PER_PARAM * p or n < 4 * m:
        return None, None
    t0 = time.perf_counter()
    stride = n // m
    parts = [X[::stride], y[::stride]] + ([weights[::stride]] if weights is not None else [])
    parts = _persist(*parts)
    xs, ys, ws = parts[0], parts[1], (parts[2] if weights is not None else None)
    rows, total = (xs.shape[0], n) if ws is None else map(float, dask.compute(ws.sum(), weights.sum()))
    lam_s = lam * rows / max(total, 1.0)
    try:
        sub = fit(xs, ys, weights=ws, lam=lam_s, fit_intercept=fit_intercept, tol=WARM_TOL,
                  warm_start=False, max_iter=30, progress=logging.DEBUG, final_hessian=False, family=family)
    except (NotConvergedError, NotPositiveDefiniteError, np.linalg.LinAlgError):
        return None, None
    if not np.isfinite(sub.theta).all():
        return None, None
    record = {"rows": int(rows), "stride": stride, "lam": lam_s, "passes": sub.n_passes,
              "seconds": time.perf_counter() - t0, "used": True}
    return sub.theta, record


def _persist(*arrays):
    """Keep small derived arrays in (worker) memory: on the active client if any, placed
    as :func:`rifscale.engine._blocks.persist_rows` places the training rows."""
    return persist_rows(arrays, current_client())


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
    warm_start: bool = True,
    progress: int = logging.INFO,
    final_hessian: bool = True,
    radius: float | None = None,
    family: ModelFamily = BINARY,
) -> FitResult:
    """Minimise ``Σ w_i ℓ_i(θ) + (λ/2)‖θ_w‖²`` by safeguarded Newton (:class:`NewtonFit`).

    Parameters
    ----------
    X : (n, d) dask array, row-chunked
    y : (n,) dask array of labels, same row chunks
    weights : (n,) dask array or None
        Row weights (0 drops a row); None keeps all rows.
    theta0 : (p,) array or None
        Starting point; None starts from the subsample fit (``warm_start``) or zeros.
    warm_start : bool
        Start from a fit on a row subsample when no ``theta0`` is given.
    progress : int
        Logging level of the per-iteration progress lines.
    final_hessian : bool
        Make sure the returned Hessian is the float64 one at θ̂ (one more pass if the
        converging pass did not compute it), and prove the error bound with it; False for
        fits whose H is not used (they stop on the bound's estimate, not certified).
    radius : float, optional
        R = max ‖z_i‖ of these rows (``FitResult.row_norm_max`` of an earlier fit on the
        same rows): spares the light pass that reads it for the certificate.
    family : ModelFamily
        The model (:mod:`rifscale.engine.family`); the binary logistic model by default.

    Returns
    -------
    FitResult
        θ̂, the float64 Hessian at θ̂ and the convergence record with its error bound.
    """
    return NewtonFit(X, y, lam=lam, fit_intercept=fit_intercept, tol=tol, max_iter=max_iter, weights=weights,
                     progress=progress, final_hessian=final_hessian, radius=radius, family=family
                     ).solve(theta0=theta0, warm_start=warm_start)


class NewtonFit:
    """The fit as named steps, in the shape of scikit-learn's ``NewtonSolver``:

    * :meth:`setup`: the starting point (given, the subsample fit, or zero) and its pass;
    * per iteration, :meth:`update_hessian` (take the Hessian the last pass computed),
      :meth:`check_convergence` (estimate the error bound; when it may stop, prove it at θ
      with the float64 Hessian), :meth:`inner_solve` (the Newton direction, falling back to
      the float64 Hessian when a float32 one is not positive definite) and
      :meth:`line_search` (choose each trial's Hessian precision, backtrack);
    * :meth:`finalize` (the result) or :meth:`fail` (why not).

    The rules every minimiser shares — the step acceptance, the certificate, the stopping
    test, the Newton direction — are the Newton core's (:mod:`rifscale.engine.newton`),
    which the exact retrains use too.
    """

    def __init__(self, X, y, *, lam, fit_intercept, tol, max_iter, weights, progress, final_hessian, radius,
                 family: ModelFamily = BINARY):
        self.X, self.y, self.weights = X, y, weights
        self.lam, self.fit_intercept, self.tol, self.max_iter = lam, fit_intercept, tol, max_iter
        self.progress, self.final_hessian, self.radius = progress, final_hessian, radius
        self.family = family
        self.p = family.n_params(X.shape[1], fit_intercept=fit_intercept)
        self.t0 = time.perf_counter()
        self.counts = {"float32": 0, "float64": 0}  # passes that built a Hessian, by precision
        self.passes = 0
        self.history = []
        self.warm = None
        self.exact = False  # after a rejected trial: plain Newton with fresh float64 Hessians
        self.ratio = 1.0  # ‖∇L‖ after / before the last accepted step

    def evaluate(self, points, *, radius: bool = False):
        """One pass: L, ∇L and the asked Hessians at each ``(theta, precision)`` point; with
        ``radius``, the certificate's R = max ‖z_i‖ (``self.radius``) from the same pass."""
        self.passes += 1
        for _, h in points:
            if h:
                self.counts[h] += 1
        # non-finite values are checked right after each pass (and named), not warned about
        with np.errstate(invalid="ignore", over="ignore"):
            found = objectives(self.X, self.y, points, lam=self.lam, fit_intercept=self.fit_intercept,
                               weights=self.weights, family=self.family, radius=radius)
        if radius:
            found, self.radius = found
        return found

    def _exact_at(self, theta) -> None:
        """Evaluate with the float64 Hessian at ``theta`` and make it the current one."""
        (self.cur,) = self.evaluate([(theta, "float64")])
        self._take_hessian(self.cur.hessian, "float64")

    def _take_hessian(self, H, dtype) -> None:
        """Make ``H`` the current Hessian, with its curvature estimate (which says when to try
        stopping; the proof is :meth:`_proven_curvature` at θ̂)."""
        self.H, self.H_dtype, self._factor = H, dtype, None
        wide = H.shape[0] > EXACT_CURVATURE_MAX_P  # the estimate then works with H's Cholesky factor
        self.mu = estimate_curvature(H, self._cholesky() if wide else None)

    def _cholesky(self):
        """The current H's Cholesky factor, computed once per Hessian (the curvature estimate,
        the Newton direction and every chord step share it); None when H is not PD, for
        :func:`_direction` to say why."""
        if self._factor is None:
            try:
                self._factor = cholesky(self.H) if np.isfinite(self.H).all() else False
            except (np.linalg.LinAlgError, ValueError):
                self._factor = False
        return self._factor or None

    def _proven_curvature(self, H) -> float:
        """μ₀ ≤ λ_min of the exact Hessian whose float64 computed value is ``H``: the estimate
        itself where that is already :func:`curvature` (H current and at most
        ``EXACT_CURVATURE_MAX_P`` wide), else one eigenvalue computation."""
        if H is self.H and H.shape[0] <= EXACT_CURVATURE_MAX_P:
            return self.mu
        return curvature(H)

    def _direction(self, it: int, *, exact: bool = True) -> np.ndarray:
        return _direction(self.H, self.cur.grad, lam=self.lam, it=it, X=self.X, exact=exact, factor=self._cholesky())

    def setup(self, theta0, warm_start: bool) -> None:
        """The starting point and its first pass (float32 Hessian), with L(0) beside it."""
        X = self.X
        zero = np.zeros(self.p)
        if theta0 is not None:
            start = np.asarray(theta0, dtype=np.float64).copy()
            if start.shape != (self.p,):
                raise ConfigError(
                    f"theta0 has shape {start.shape}; expected ({self.p},), the {self.family.name} model's parameters "
                    f"for d = {X.shape[1]} (intercept {self.fit_intercept})."
                )
        else:
            start, self.warm = subsample_start(X, self.y, self.weights, lam=self.lam, fit_intercept=self.fit_intercept,
                                               family=self.family) if warm_start else (None, None)
            if start is None:
                start = zero
        first_mode = "float32"
        # the certificate's radius from this pass, not a pass of its own at the end (a fit
        # whose H is not used never proves a bound with it)
        radius = self.final_hessian and self.radius is None
        if not np.any(start):
            (cur,) = self.evaluate([(start, first_mode)], radius=radius)
            at_zero = cur
        else:
            cur, at_zero = self.evaluate([(start, first_mode), (zero, None)], radius=radius)
        for o in (cur, at_zero):
            with np.errstate(over="ignore"):
                finite = np.isfinite(o.loss) and np.isfinite(o.grad).all() and np.isfinite(o.grad_norm)
            if not finite:
                find_nonfinite("train", X)
                raise CorpusError(
                    "The objective or its gradient overflows float64 at the starting point: the feature values "
                    "are too large (or the previous theta given as a start is far off). Rescale X (e.g. "
                    "standardise each column, or divide by a constant so that the features are of order 1) "
                    "and re-ingest." + scale_outliers("train", X)
                )
        if self.warm is not None and not cur.loss < at_zero.loss:  # the subsample misled: start from zero
            self.warm["used"] = False
            (cur,) = self.evaluate([(zero, first_mode)])
        self.cur = cur
        self.ref = at_zero.grad_norm or 1.0
        self._take_hessian(cur.hessian, cur.hessian_dtype)

    def update_hessian(self) -> None:
        """Take the Hessian the last pass computed, if it computed one."""
        cur = self.cur
        if cur.hessian is not None and cur.hessian is not self.H:
            self._take_hessian(cur.hessian, cur.hessian_dtype)

    def check_convergence(self, it: int, bar) -> FitResult | None:
        """Record the iteration; when the estimated bound (or the rounding floor) says θ may
        be the answer, prove the bound at θ with its float64 Hessian: the result if proven."""
        cur, tol = self.cur, self.tol
        self.gnorm, self.size = cur.grad_norm, float(np.linalg.norm(cur.theta))
        rel = self.gnorm / self.ref
        self.estimate = (self.gnorm + cur.grad_floor) / self.mu if self.mu > 0 else np.inf
        self.history.append({"iter": it, "loss": cur.loss, "grad_norm": self.gnorm, "rel_grad_norm": rel,
                             "error_bound": self.estimate, "hessian": cur.hessian_dtype,
                             "elapsed": time.perf_counter() - self.t0})
        log.log(self.progress, "newton iter %2d  loss %.12g  rel grad %.3e  error bound %.3e", it, cur.loss, rel,
                self.estimate)
        self.goal = self.estimate / self.size if self.size > 0 else np.inf
        bar.update(fraction=newton_fraction(self.goal, tol),
                   text=f"Newton iteration {it}, relative error bound {self.goal:.1e} (stop at {tol:.0e})")
        if not (self.estimate <= tol * self.size or self.gnorm <= cur.grad_floor):
            return None
        at_floor = self.gnorm <= cur.grad_floor
        if self.final_hessian and cur.hessian_dtype != "float64":  # the proof, and the factored H, need it
            self._exact_at(cur.theta)
            cur = self.cur
            self.gnorm = cur.grad_norm
            at_floor = at_floor or self.gnorm <= cur.grad_floor  # one θ, two sums: either shows the floor
        cert = None
        if cur.hessian_dtype == "float64":
            if self.radius is None:
                self.radius = max_row_norm(self.X, fit_intercept=self.fit_intercept)
                self.passes += 1
            cert = certify(self._proven_curvature(cur.hessian), self.gnorm, cur.grad_floor,
                           radius=self.family.self_concordance * self.radius, lam=self.lam,
                           fit_intercept=self.fit_intercept)
        bound = cert.bound if cert is not None else self.estimate  # final_hessian=False: an estimate
        stopped_at = stop_reason(bound, 0.0 if at_floor else self.gnorm, ref=self.size, floor=cur.grad_floor,
                                 tol=tol)
        self.history[-1]["error_bound"] = bound
        if not stopped_at:
            return None
        final = bound / self.size if self.size > 0 else np.inf
        bar.update(fraction=1.0, text=f"Newton iteration {it}, relative error bound {final:.1e} "
                                      f"({'certified' if stopped_at == 'tolerance' else stopped_at})")
        return self.finalize(it, stopped_at, bound, cert)

    def inner_solve(self, it: int) -> np.ndarray:
        """The Newton direction ``−H⁻¹∇L``; a float32 H that lost its smallest eigenvalues is
        replaced by the float64 one, and the fit is plain Newton from then on."""
        try:
            return self._direction(it, exact=self.H_dtype == "float64")
        except NotPositiveDefiniteError:
            if self.H_dtype == "float64":
                raise
            self.exact = True  # float32 products lost H's smallest eigenvalues: exact from here
            self._exact_at(self.cur.theta)
            return self._direction(it)

    def _trial_hessian(self) -> str | None:
        """The Hessian precision a trial pass computes: float64 when exact or when the step is
        expected to converge (only where the float64 H at θ̂ is wanted: ``final_hessian``),
        none while the last Hessian still works (a chord step), else float32."""
        if self.exact or (self.final_hessian and self.ratio * self.estimate <= self.tol * self.size):
            return "float64"
        return None if self.ratio <= REUSE_BELOW else "float32"

    def line_search(self, it: int, step: np.ndarray) -> None:
        """Backtrack along ``step`` until :func:`~rifscale.engine.newton.accept`; a rejected
        full step from an approximate Hessian restarts from the float64 Newton step."""
        slope = float(self.cur.grad @ step)
        t = 1.0
        while True:
            (trial,) = self.evaluate([(self.cur.theta + t * step, self._trial_hessian())])
            if accept(trial.loss, trial.grad_norm, prev_loss=self.cur.loss, prev_gnorm=self.gnorm, t=t, slope=slope):
                break
            if not self.exact:  # an approximate Hessian misled the step: plain Newton from here
                self.exact = True
                self._exact_at(self.cur.theta)
                step = self._direction(it)
                slope, t = float(self.cur.grad @ step), 1.0
                continue
            t *= 0.5
            if t < MIN_STEP:
                raise NotConvergedError(
                    f"The Newton line search failed at iteration {it} (relative error bound "
                    f"{self.goal:.3e}, tolerance {self.tol:.1e}): no step along the Newton direction lowers "
                    "the objective. The problem is badly conditioned; increase lam or loosen tol."
                )
        self.history[-1]["step"] = t
        self.ratio = trial.grad_norm / self.gnorm if self.gnorm > 0 else 0.0
        self.cur = trial

    def finalize(self, it: int, stopped_at: str, bound: float, cert) -> FitResult:
        """The result at the current θ (with λ = 0, after checking that a minimiser exists)."""
        cur = self.cur
        if self.lam == 0 and self.final_hessian:
            _check_not_separated(self.X, self.y, cur.theta, fit_intercept=self.fit_intercept, weights=self.weights,
                                 family=self.family)
            _check_unpenalised_hessian(cur.hessian)
        return FitResult(
            theta=cur.theta, lam=self.lam, fit_intercept=self.fit_intercept, converged=True, n_iter=it,
            n_passes=self.passes, loss=cur.loss, grad_norm=self.gnorm, rel_grad_norm=self.gnorm / self.ref,
            tol=self.tol, stopped_at=stopped_at, seconds=time.perf_counter() - self.t0, hessian=cur.hessian,
            history=tuple(self.history), hessian_passes=dict(self.counts), warm_start=self.warm,
            error_bound=bound if cert is not None else np.inf,
            mu=cert.mu if cert is not None else np.nan,
            row_norm_max=self.radius if self.radius is not None else np.nan,
        )

    def fail(self):
        """Raise why the fit stopped without an answer after ``max_iter`` iterations."""
        if self.lam == 0:  # the usual cause: no minimiser, so no bound can certify θ; name it if so
            _check_not_separated(self.X, self.y, self.cur.theta, fit_intercept=self.fit_intercept,
                                 weights=self.weights, family=self.family)
        hint = (
            " With lam = 0 this usually means the classes are separable and theta diverges; use lam > 0."
            if self.lam == 0
            else " Increase max_iter, or increase lam if the problem is badly conditioned."
        )
        raise NotConvergedError(
            f"The Newton fit did not converge in max_iter = {self.max_iter} iterations: relative error "
            f"bound {self.goal:.3e} > tol = {self.tol:.1e} (loss {self.cur.loss:.6g}).{hint}"
        )

    def solve(self, *, theta0=None, warm_start: bool = True) -> FitResult:
        """Run the steps: setup, then Newton iterations until :meth:`check_convergence`
        returns the result or ``max_iter`` is reached."""
        self.setup(theta0, warm_start)
        # the bar of the main fit (not of the inner ones); it ends with the fit, also on an error
        with Bar("fit", show=None if self.progress >= logging.INFO else False) as bar:
            for it in range(self.max_iter + 1):
                self.update_hessian()
                result = self.check_convergence(it, bar)
                if result is not None:
                    return result
                if it == self.max_iter:
                    break
                self.line_search(it, self.inner_solve(it))
        self.fail()
