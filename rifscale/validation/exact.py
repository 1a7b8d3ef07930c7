r"""Batched exact leave-T-out retrains: the ground truth every estimate is judged by.

Every set T_k is retrained at once: each pass over the row chunks computes, for all
active sets together, the loss and gradient of ``L_{−T_k}`` at the current ``θ_k``
(a chunk × K block of logits, the model family's ``retrain_block``).

The step of set k is preconditioned by ``P_k = H − Σ_{i∈T_k} α_i z_i z_iᵀ`` evaluated at
θ̂ — the already-factored H corrected by Woodbury — so the first step from θ̂ is exactly
the NS estimate (sets start there). This chord iteration converges linearly, fast when
removing T changes the curvature little. It is safeguarded:

- a chord step that does not lower ``L_{−T}`` (Armijo) is not taken: the set switches to
  exact Newton from its last accepted point (its Hessian then comes with each pass), and
  Newton steps that fail Armijo are halved;
- a set whose gradient norm falls by less than half on two passes in a row switches to
  Newton too.

Newton problems need a p×p Hessian per pass; at most ``HESSIAN_BUDGET / p²`` of them get
one in a pass (least recently evaluated first), so task memory stays bounded. A problem's
``max_passes`` counts the passes that evaluated it.

A set is certified when a proven bound on the error of its θ (:func:`rifscale.engine.newton.certify`;
docs/design.md §8.9) is ``≤ tol · ‖θ − θ̂‖``: a relative bound on the error of Δθ itself.
The bound is of the returned θ: ∇L_{−T} there, and a lower bound μ₀ on the smallest
eigenvalue of H_{−T} there — computed from the Hessian at θ (Newton problems bring one
every pass), or carried by self-concordance from the last point that had one: a chord set
whose step falls within the tolerance gets the Hessian with its next trial, once, and
its later chord points use that. A set whose gradient reaches its rounding floor
(``32 ε Σ|r_i|‖z_i‖``) first stops there, "rounding floor", with the bound it reached; any
other is reported as not converged. Each records its bound, μ₀, passes, final gradient
norm, method and time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..engine import kernels
from .. import progress
from ..engine._blocks import reduce_blocks
from ..engine.factor import broadcast
from ..estimates.groups import SetStatistics, set_statistics
from ..engine.hessian import max_row_norm
from ..engine.newton import (EPS, MIN_STEP, ROUNDING_FACTOR, Certificate, accept, carry_curvature, certify,
    curvature, leave_out_curvature, newton_direction, penalised, penalised_hessian, stop_reason)
from ..engine.model import FittedModel
from ..cluster import entry_point

log = logging.getLogger(__name__)

#: Default tolerance: a retrain is certified when the proven bound on the error of its Δθ
#: is at most this times ‖Δθ‖.
TOL = 1e-8
SLOW = 0.5  # a chord step that shrinks ‖∇L‖ by less than this switches the set to Newton
#: Most Hessian entries (p² per Newton problem) one pass may return per chunk; Newton
#: problems beyond it take turns, so memory per task stays bounded whatever K and p are.
HESSIAN_BUDGET = 2**25


@dataclass(frozen=True)
class Retrain:
    """One exact retrain without the rows of a set."""

    name: str
    size: int
    theta: np.ndarray = field(repr=False)
    delta: np.ndarray = field(repr=False)  # θ̂_{−T} − θ̂
    converged: bool
    stopped_at: str | None
    passes: int
    grad_norm: float
    rel_grad_norm: float
    method: str  # "chord" or "newton" (after a switch)
    seconds: float
    certified: bool  # error_bound ≤ tol · ‖Δθ‖ (stopped_at "tolerance")
    error_bound: float  # proven ‖θ − θ̂_{−T}‖ ≤ error_bound at the returned θ (inf: nothing proven)
    rel_error_bound: float  # error_bound / ‖Δθ‖: a bound on the relative error of Δθ
    mu: float  # the bound's lower bound on λ_min(H_{−T}(θ)) (NaN without a Hessian at θ)
    hessians: int = 0  # passes that computed this problem's own Hessian (0: certified from H's factor)
    changes: dict = field(default_factory=dict)  # metric -> f(θ̂_{−T}) − f(θ̂), from retrain_sets

    def record(self) -> dict:
        return {k: getattr(self, k) for k in
                ("name", "size", "converged", "certified", "stopped_at", "error_bound", "rel_error_bound", "mu",
                 "passes", "hessians", "grad_norm", "rel_grad_norm", "method", "seconds")}


@dataclass
class _State:
    name: str
    size: int
    rows: np.ndarray
    theta: np.ndarray  # last accepted point
    trial: np.ndarray  # point evaluated by the next pass
    precond: object  # LeaveOutHessian or None
    ref: float  # ‖∇L_{−T}(θ̂)‖, the scale of rel_grad_norm
    method: str = "chord"
    added: tuple = ()  # (z (a, p), y (a,)) rows added to the objective (poisoning), or ()
    radius: float = np.inf  # R ≥ ‖z_i‖ over the problem's rows, for its certificates
    hessian: np.ndarray | None = None  # H at the last accepted point, if that pass brought it
    anchor: tuple | None = None  # (θ_c, μ_c): the last accepted point with a Hessian, and its μ₀
    anchor_start: bool = False  # the anchor is θ̂ with μ₀ of H_{−T}(θ̂) from the factor (no Hessian pass)
    small_steps: int = 0  # chord steps within the tolerance taken from an anchor at θ̂
    hessians: int = 0  # passes that brought this problem's Hessian
    cert: Certificate | None = None  # the error bound at the last accepted point
    certify: bool = False  # the next trial is evaluated with its Hessian, to certify it
    floor_seen: bool = False  # the point re-evaluated next had its gradient at the rounding floor
    loss: float = np.inf
    grad: np.ndarray | None = None
    step: np.ndarray | None = None
    slope: float = 0.0
    t: float = 1.0
    passes: int = 0
    slow: int = 0
    last: int = 0  # the pass that last evaluated this problem
    reeval: bool = True  # the next pass re-evaluates an accepted point: nothing to test
    done: bool = False
    stopped_at: str | None = None
    started: float = field(default_factory=time.perf_counter)
    ended: float = 0.0

    @property
    def wants_hessian(self) -> bool:
        """Whether the next pass brings this problem's Hessian at its trial point."""
        return self.method == "newton" or self.certify


def retrain(
    source,
    sets,
    *,
    tol: float = TOL,
    max_passes: int = 100,
    safeguard: bool = True,
    client=None,
) -> dict[str, Retrain]:
    """Exact retrains without each set, batched over the sets.

    Parameters
    ----------
    source : Attribution or Run (anything with ``.corpus`` and ``.model``)
    sets : mapping name -> row indices (or a list of row-index lists), or their
        :class:`~rifscale.estimates.groups.SetStatistics`
    tol : certify that the error of each Δθ is at most ``tol · ‖Δθ‖`` (a proven bound)
    max_passes : passes over the data before the remaining sets are reported unconverged
    safeguard : False runs the plain chord iteration (full steps, no Newton fallback);
        it exists to show where that iteration stalls
    """
    corpus, model = source.corpus, source.model
    train = corpus.train
    stats = sets if isinstance(sets, SetStatistics) else set_statistics(source, sets, client=client)
    sets, deltas = stats.sets, stats.deltas
    mu_fit = _fit_curvature(source)
    trace = float(np.vdot(model.factor.L, model.factor.L)) if mu_fit is not None else np.nan  # tr H = ‖L‖_F²
    states = []
    for name, rows in sets.items():
        d = deltas[name]
        start = model.theta + d.delta["ns"] if d.hessian is not None else model.theta.copy()
        anchor = None  # μ₀ of H_{−T} at θ̂ from the factor: the certificates need no Hessian pass near θ̂
        if d.hessian is not None and mu_fit is not None:
            mu0 = leave_out_curvature(mu_fit, d.hessian.relative_min, d.hessian.removed, trace=trace, p=model.p)
            anchor = (model.theta, mu0) if mu0 > 0 else None
        states.append(_State(name=name, size=rows.size, rows=rows, theta=model.theta.copy(), trial=start,
                             precond=d.hessian, ref=float(np.linalg.norm(d.G)) or 1.0,
                             method="chord" if d.hessian is not None else "newton",
                             anchor=anchor, anchor_start=anchor is not None))
    _solve(train, model, states, tol=tol, max_passes=max_passes, safeguard=safeguard, client=client,
           radius=_fit_radius(source))
    return {s.name: _result(s, model) for s in states}


def _fit_value(source, key: str) -> float | None:
    """A finite value of the fit's record (an Attribution's fit, a run's manifest), or None."""
    fit = getattr(source, "fit", None)
    if fit is not None:
        value = getattr(fit, key, None)
    else:
        value = ((getattr(source, "manifest", None) or {}).get("fit") or {}).get(key)
    return float(value) if value is not None and np.isfinite(value) else None


def _fit_radius(source) -> float | None:
    """R = max ‖z_i‖ of the training rows as the fit recorded it, or None when it did not:
    the retrains' certificates need the same R, and reading it again is a pass over the rows."""
    return _fit_value(source, "row_norm_max")


def _fit_curvature(source) -> float | None:
    """μ ≤ λ_min(H(θ̂)) as the fit proved it (its certificate's ``mu``), or None when it proved none."""
    mu = _fit_value(source, "mu")
    return mu if mu is not None and mu > 0 else None


@entry_point
def retrain_sets(source, sets, *, tol: float = TOL, client=None) -> dict[str, Retrain]:
    """Exact retrains without each set, with the change of every test metric.

    This is ``rifscale.retrain``: ``rifscale.retrain(result, {"top10": rows})["top10"]``
    has ``delta`` (θ̂_{−T} − θ̂), ``changes`` ({metric: f(θ̂_{−T}) − f(θ̂)} over the run's
    test subset), ``certified``, ``error_bound`` and the convergence record. ``source`` is an
    :class:`~rifscale.pipeline.Attribution` or an open run; ``sets`` as in
    :func:`rifscale.group_effects` (row positions, or ``{"ids": {...}}``).
    A retrain is certified when the proven bound on the error of its Δθ is
    ``≤ tol · ‖Δθ‖``.

    Every pass over the data serves all sets at once; each set starts at its NS estimate
    (docs/design.md §2.6, §7.5).

    Parameters
    ----------
    source : Attribution or Run
        A fresh result of :func:`rifscale.attribute`, or :func:`rifscale.open_run`'s.
    sets : mapping, list or str
        The removal sets, as :func:`rifscale.group_effects` takes them.
    tol : float, default 1e-8
        Relative error certified for each Δθ.
    client : distributed.Client, optional
        Defaults to the active client, if any.

    Returns
    -------
    dict of str to Retrain
        Per set: ``theta`` (θ̂ without the set), ``delta``, ``changes`` (metric to
        f(θ̂_{−T}) − f(θ̂)), ``converged``, ``certified``, ``error_bound``,
        ``rel_error_bound``, ``passes``, ``seconds``.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_corpus
    >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
    >>> result = rifscale.attribute(corpus, lam=1.0)
    >>> top10 = np.argsort(-np.abs(result.rif_scores["test_loss"].compute()))[:10]
    >>> exact = rifscale.retrain(result, {"top10": top10})["top10"]
    >>> exact.converged, exact.certified, exact.delta.shape
    (True, True, (197,))
    >>> est = rifscale.group_effects(result, {"top10": top10})["top10"].plugin["test_loss"]
    >>> print(f"exact {exact.changes['test_loss']:.1f}, IF {est['if']:.1f}, RIF {est['rif']:.1f}, NS {est['ns']:.1f}")
    exact 10.1, IF 7.4, RIF 8.2, NS 8.9
    """
    import dataclasses

    from ..engine import kernels
    from ..estimates.metrics import metric_values

    model = source.model
    fits = retrain(source, sets, tol=tol, client=client)
    names = list(fits)
    thetas = np.stack([fits[k].theta for k in names], axis=1)
    after = kernels.to_numpy(metric_values(source.corpus.test, model.test_subset, thetas, names=model.metrics,
                                           fit_intercept=model.fit_intercept, family=model.family).compute())
    return {k: dataclasses.replace(fits[k], changes={m: float(after[i, j] - model.metric.values[i])
                                                     for i, m in enumerate(model.metrics)})
            for j, k in enumerate(names)}


def _result(s: _State, model: FittedModel) -> Retrain:
    gnorm = float(np.linalg.norm(s.grad)) if s.grad is not None else np.nan
    delta = s.theta - model.theta
    size = float(np.linalg.norm(delta))
    bound = s.cert.bound if s.cert is not None else np.inf
    return Retrain(
        name=s.name, size=s.size, theta=s.theta, delta=delta, converged=s.stopped_at is not None,
        stopped_at=s.stopped_at, passes=s.passes, grad_norm=gnorm, rel_grad_norm=gnorm / s.ref,
        method=s.method, seconds=(s.ended or time.perf_counter()) - s.started,
        certified=s.stopped_at == "tolerance", error_bound=bound, rel_error_bound=bound / size if size > 0 else np.inf,
        mu=s.cert.mu if s.cert is not None else np.nan, hessians=s.hessians,
    )


def _added_terms(s: _State, theta: np.ndarray, want_hessian: bool, family):
    """Loss, gradient, gradient scale and Hessian of the rows added to a problem."""
    p = theta.shape[0]
    if not s.added:
        return 0.0, np.zeros(p), 0.0, (np.zeros((p, p)) if want_hessian else None)
    z, y = s.added
    loss, grads, roots = family.row_terms(z, y, theta=theta)
    H = roots.T @ roots if want_hessian else None
    return float(loss.sum()), grads.sum(axis=0), float(np.linalg.norm(grads, axis=1).sum()), H


def _solve(train, model: FittedModel, states: list[_State], *, tol, max_passes, safeguard, client,
           radius: float | None = None) -> None:
    """Advance every problem until certified, stuck, or out of passes; all share each pass.
    ``radius``: max ‖z_i‖ of the training rows if known (else one light pass reads it)."""
    p = model.p
    if radius is None:
        radius = max_row_norm(train.X, fit_intercept=model.fit_intercept)
    for s in states:  # the certificates' radius: the family's constant times max ‖z_i‖
        rows = max(radius, float(np.linalg.norm(s.added[0], axis=1).max())) if s.added else radius
        s.radius = model.family.self_concordance * rows
    all_sets = broadcast([s.rows for s in states], client=client)
    budget = max(1, HESSIAN_BUDGET // (p * p))
    npass = 0
    with progress.Bar("exact retrains", total=len(states)) as bar:
        while True:
            for s in states:
                if not s.done and s.passes >= max_passes:
                    s.done, s.ended = True, time.perf_counter()
            running = [k for k, s in enumerate(states) if not s.done]
            if not running:
                break
            npass += 1
            waiting = sorted((k for k in running if states[k].wants_hessian), key=lambda k: states[k].last)
            skip = set(waiting[budget:])  # least recently evaluated problems wanting a Hessian go first
            pos = [k for k in running if k not in skip]
            active = [states[k] for k in pos]
            newton = [j for j, s in enumerate(active) if s.wants_hessian]
            slot = {j: i for i, j in enumerate(newton)}
            thetas = np.stack([s.trial for s in active], axis=1)
            K = len(active)
            packed = reduce_blocks(
                _retrain_active, train.X, train.y, width=2 * K + p * K + len(newton) * p * p, row_start=True,
                thetas=thetas, all_sets=all_sets, active=pos, newton=newton, fit_intercept=model.fit_intercept,
                family=model.family,
                client=client,
            )
            D = model.family.penalty_diag(p, fit_intercept=model.fit_intercept)
            loss, grads, floors = penalised(thetas, packed[:K], packed[2 * K : 2 * K + p * K].reshape(p, K),
                                            packed[K : 2 * K], lam=model.lam, fit_intercept=model.fit_intercept, D=D)
            hess = packed[2 * K + p * K :].reshape(len(newton), p, p)
            for j, s in enumerate(active):  # a problem's passes: those that evaluated it
                s.passes, s.last = s.passes + 1, npass
                H = (penalised_hessian(hess[slot[j]], lam=model.lam, fit_intercept=model.fit_intercept, D=D)
                     if j in slot else None)
                a_loss, a_grad, a_scale, a_hess = _added_terms(s, thetas[:, j], H is not None, model.family)
                if H is not None:
                    H = H + a_hess
                    s.hessians += 1
                floor = floors[j] + ROUNDING_FACTOR * EPS * a_scale
                _advance(s, loss[j] + a_loss, grads[:, j] + a_grad, floor, H, tol=tol, safeguard=safeguard,
                         model=model)
            log.debug("retrain pass %d: %d of %d problems still running", npass, sum(not s.done for s in states), len(states))
            bar.update(sum(s.done for s in states), text=f"done after pass {npass}")
    log.info("retrains: %d of %d problems certified, %d at the rounding floor, in %d passes over the data",
             sum(s.stopped_at == "tolerance" for s in states), len(states),
             sum(s.stopped_at == "rounding floor" for s in states), npass)


def _retrain_active(x, y, *, row_start, thetas, all_sets, active, newton, fit_intercept, family):
    rows = np.arange(row_start, row_start + x.shape[0], dtype=np.int64)
    return family.retrain_block(x, y, rows, thetas=thetas, sets=[all_sets[k] for k in active],
                                 newton=newton, fit_intercept=fit_intercept)


def _advance(s: _State, loss: float, grad: np.ndarray, floor: float, H, *, tol: float, safeguard: bool,
             model: FittedModel) -> None:
    """Take the pass's values at ``s.trial``: accept or backtrack, certify, choose the next trial."""
    gnorm = float(np.linalg.norm(grad))
    first = s.grad is None or s.reeval
    s.reeval = False
    accepted = first or not safeguard or accept(
        loss, gnorm, prev_loss=s.loss, prev_gnorm=float(np.linalg.norm(s.grad)), t=s.t, slope=s.slope
    )
    if not accepted:
        s.t *= 0.5
        if s.method == "chord":  # the fixed preconditioner misleads here: exact Newton from θ
            s.method, s.t, s.trial, s.reeval = "newton", 1.0, s.theta, True
            return
        if s.t < MIN_STEP:
            s.done, s.ended = True, time.perf_counter()
            return
        s.trial = s.theta + s.t * s.step
        return
    if not first and safeguard and s.method == "chord":
        s.slow = s.slow + 1 if gnorm > SLOW * np.linalg.norm(s.grad) else 0
    s.theta, s.loss, s.grad, s.hessian, s.certify = s.trial, loss, grad, H, False
    # the bound is of this θ: its gradient, and μ₀ from its Hessian or carried from the anchor's
    if H is not None:
        s.anchor, s.anchor_start = (s.theta, curvature(H)), False
    s.cert = None
    if s.anchor is not None:
        theta_c, mu_c = s.anchor
        mu = carry_curvature(mu_c, distance=float(np.linalg.norm(s.theta - theta_c)), radius=s.radius)
        s.cert = certify(mu, gnorm, floor, radius=s.radius, lam=model.lam, fit_intercept=model.fit_intercept)
    size = float(np.linalg.norm(s.theta - model.theta))  # ‖Δθ‖: the tolerance is relative to it
    # μ₀ carried from θ̂ may be too weak to prove the tolerance: then this θ is treated as
    # having no certificate yet (a Hessian is fetched where one is needed, as without it);
    # at the rounding floor no Hessian can make the set certified, and it stops with this bound
    if (s.cert is not None and s.anchor_start and not s.cert.bound <= tol * size
            and not (gnorm <= floor or s.floor_seen)):
        cert_from_start, s.cert = s.cert, None
    else:
        cert_from_start = None
    if s.cert is not None:
        at_floor = gnorm <= floor or s.floor_seen  # one θ, two sums: either may show the floor
        s.stopped_at = stop_reason(s.cert.bound, 0.0 if at_floor else gnorm, ref=size, floor=floor, tol=tol)
        s.floor_seen = False
        if s.stopped_at:
            s.done, s.ended = True, time.perf_counter()
            return
    elif gnorm <= floor:  # no step can help: evaluate H here for the bound, then stop
        s.trial, s.reeval, s.certify, s.floor_seen = s.theta, True, True, True
        return
    s.cert = s.cert or cert_from_start  # recorded if the set ends here (out of passes)
    if s.slow >= 2:
        s.method, s.slow = "newton", 0
    if s.method == "newton" and H is None:  # switched: get the Hessian at θ first
        s.trial, s.t, s.reeval = s.theta, 1.0, True
        return
    try:
        s.step = -s.precond.solve(grad) if s.method == "chord" else newton_direction(s.hessian, grad)
    except np.linalg.LinAlgError:
        s.done, s.ended = True, time.perf_counter()  # H_{−T} not PD: reported as not converged
        return
    s.slope, s.t = float(grad @ s.step), 1.0
    s.trial = s.theta + s.step
    # the first chord step within the tolerance: its end comes with the Hessian, for μ₀ there
    # — unless μ₀ carried from θ̂ may prove it: then only after a second such step
    small = bool(np.linalg.norm(s.step) <= tol * np.linalg.norm(s.trial - model.theta))
    if s.method == "chord" and s.anchor_start and small:
        s.small_steps += 1
    s.certify = (s.method == "chord" and small
                 and (s.anchor is None or (s.anchor_start and s.small_steps >= 2)))


def poisoned_fits(source, x: np.ndarray, y: np.ndarray, *, tol: float = TOL, max_passes: int = 60,
                  client=None) -> tuple[list[Retrain], list[np.ndarray | None]]:
    """Exact fits of the training objective plus one added row each: problem j adds the
    row ``x[j]`` with label ``y[j]``, warm-started at θ̂, by exact Newton steps.

    Returns
    -------
    (list of Retrain, list of (p, p) Hessians at each θ_P)
    """
    corpus, model = source.corpus, source.model
    z = kernels.design(np.asarray(x), fit_intercept=model.fit_intercept)
    y = np.asarray(y, dtype=np.float64)
    empty = np.empty(0, dtype=np.int64)
    states = []
    for j in range(z.shape[0]):
        g = float(np.linalg.norm(model.family.row_terms(z[j : j + 1], y[j : j + 1], theta=model.theta)[1]))
        states.append(_State(name=f"poison-{j}", size=0, rows=empty, theta=model.theta.copy(), trial=model.theta.copy(),
                             precond=None, ref=g or 1.0, method="newton", added=(z[j : j + 1], y[j : j + 1])))
    _solve(corpus.train, model, states, tol=tol, max_passes=max_passes, safeguard=True, client=client,
           radius=_fit_radius(source))
    return [_result(s, model) for s in states], [s.hessian for s in states]
