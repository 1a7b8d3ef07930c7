r"""Flip-set audits (docs/design.md §8.11): how few training rows decide a prediction?

For each audited test point t (by id, or the N least robust) :func:`audit` finds a small
set of training rows whose removal flips t's predicted label, and proves it with an exact
retrain; for the data set, the fewest removals found that lower the test accuracy by a
given amount. Per point it reports:

* the set (size, ids) — an **upper bound**, certified: the retrained margin has the other
  sign by more than the margin error its certificate allows (``‖z_t‖ · error_bound`` plus
  rounding; :func:`rifscale.engine.kernels.margins.margin_error`), so the sign is certain;
* that the set is minimal: every member is needed, each checked by a retrain without it;
* the predicted (IF, RIF, NS) and the exact change of the margin;
* a **lower bound** on the size of *any* flipping set, proven from strong convexity
  (:mod:`rifscale.flipbound`), and the gap between the two.

The search (:mod:`rifscale.flipsearch`) orders the training rows by their RIF effect on
the margin ``z_tᵀθ`` (a linear metric: ``s_RIF(i) = r_i z_iᵀH⁻¹z_t / (1 − h_i)``, additive
over a set), bisects over the greedy prefixes and then drops unneeded members; every
round of every target is judged in one batched exact retrain (:func:`rifscale.exact.retrain`).
All per-row quantities come from one pass over the training rows.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from dataclasses import asdict, dataclass, field, replace

import dask.array as da
import numpy as np

from ..engine import kernels
from .. import progress
from ..engine._blocks import block_sum, row_map
from ..errors import ConfigError
from ..validation.exact import TOL, retrain
from ..engine.factor import broadcast
from .flipbound import flip_lower_bound
from .flipsearch import Bisection, Refinement
from ..estimates.groups import set_statistics
from ..engine.family import AuditKernels
from ..engine.kernels.margins import accuracy_block, margin_error
from ..estimates.metrics import rows_of_ids
from ..cluster import entry_point

log = logging.getLogger(__name__)

#: Version of the audit directory's layout.
FORMAT = 1
#: Localisation radii tried by the lower bound (the largest √q_i is added).
RHO_GRID = np.logspace(-4, 4, 81)
#: Orderings tried by the accuracy audit: the correct test points closest to the boundary,
#: ``needed × 2^j`` of them for each j here.
ACCURACY_SPREADS = (0, 1, 2)


@dataclass(frozen=True)
class AuditConfig:
    """What :func:`rifscale.audit` audits and how hard it searches (validated on construction).

    Parameters
    ----------
    ids : sequence of int or str
        Test ids of the points to audit (text for a corpus with text ids; integers, or their
        decimal text, otherwise).
    least_robust : int
        Also audit this many least robust test points: among the ``screen`` test points of
        smallest absolute margin, those whose flip the RIF estimate puts at the fewest removals
        (ties: the smaller absolute margin).
    accuracy_drop : float, optional
        Also find the fewest removals that lower the test accuracy (over every test row)
        by at least this fraction, e.g. 0.01.
    max_size : int
        Largest set searched (the K most helpful rows per target); also the reach of the
        lower bound.
    fanout : int
        Sizes checked per target and bisection round (one batched retrain per round).
    screen : int
        Test points of smallest absolute margin ranked for ``least_robust``.
    refine : bool
        Drop unneeded members after the bisection.
    refine_max : int
        Refine only sets of at most this many rows (a round retrains the set less each
        member); larger sets are reported with ``minimal`` None (not checked).
    tol : float
        The retrains' certificate tolerance.
    batch_sets : int
        At most this many sets per batched retrain.

    Examples
    --------
    >>> import rifscale
    >>> rifscale.AuditConfig(least_robust=5, accuracy_drop=0.01).fanout
    8
    """

    ids: tuple = ()
    least_robust: int = 0
    accuracy_drop: float | None = None
    max_size: int = 1000
    fanout: int = 8
    screen: int = 256
    refine: bool = True
    refine_max: int = 128
    tol: float = TOL
    batch_sets: int = 512

    def __post_init__(self):
        ids = list(self.ids)
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, (numbers.Integral, str))]
        if bad:
            raise ConfigError(f"ids must be test ids, integers or text; got {bad[:5]!r}.")
        object.__setattr__(self, "ids", tuple(i if isinstance(i, str) else int(i) for i in ids))
        for name, low in (("least_robust", 0), ("max_size", 1), ("fanout", 1), ("screen", 1), ("batch_sets", 1),
                          ("refine_max", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ConfigError(f"The {name!r} parameter must be an integer >= {low}; got {v!r}.")
        drop = self.accuracy_drop
        if drop is not None and not (isinstance(drop, numbers.Real) and 0 < drop <= 1):
            raise ConfigError(f"accuracy_drop must be a fraction in (0, 1] (0.01 = one percentage point); "
                              f"got {drop!r}.")
        if not (isinstance(self.tol, numbers.Real) and 0 < self.tol < 1):
            raise ConfigError(f"tol must be in (0, 1); got {self.tol!r}.")
        if not self.ids and not self.least_robust and drop is None:
            raise ConfigError("Nothing to audit: name test points (ids=[...], --ids), ask for the least robust "
                              "(least_robust=N, --least-robust N), or an accuracy drop (--accuracy-drop X).")

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (as the audit's manifest records them)."""
        return asdict(self)


@dataclass
class Audit:
    """The result of :func:`rifscale.audit`: one record per audited point, and the accuracy
    audit.

    Parameters
    ----------
    points : list of dict
        One record per audited point (the columns of ``points_frame()``).
    accuracy : dict or None
        The accuracy audit's record, if one was asked for.
    config : AuditConfig
        What was audited.
    model : dict
        λ, the intercept setting and the fit's error bound of the audited model.
    counts : dict
        Points, certified flip sets, sets checked minimal, exact retrains.
    timings : dict
        Seconds per stage.

    Examples
    --------
    >>> import rifscale
    >>> from rifscale.testing import make_problem
    >>> pr = make_problem(200, 10, n_test=50, seed=3)
    >>> result = rifscale.attribute(rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test, pr.y_test), lam=1.0)
    >>> found = rifscale.audit(result, least_robust=2)
    >>> found.counts["flips_found"], bool(found.points_frame()["retrain_certified"].all())
    (2, True)
    """

    points: list
    accuracy: dict | None
    config: AuditConfig
    model: dict
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        c = self.counts
        acc = "" if self.accuracy is None else f", accuracy audit: {'found' if self.accuracy['found'] else 'none'}"
        return (f"Audit({c.get('points')} point(s): {c.get('flips_found')} certified flip set(s), {c.get('minimal')} "
                f"checked minimal; {c.get('retrains')} exact retrains{acc}; .points_frame(), .accuracy_frame())")

    def points_frame(self):
        """One row per audited point (:data:`POINT_COLUMNS`) as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.points, columns=list(POINT_COLUMNS))

    def accuracy_frame(self):
        """The accuracy audit (:data:`ACCURACY_COLUMNS`; no row without one) as a DataFrame."""
        import pandas as pd

        return pd.DataFrame([self.accuracy] if self.accuracy else [], columns=list(ACCURACY_COLUMNS))


POINT_COLUMNS = ("test_id", "test_row", "label", "predicted", "margin", "rif_estimate", "lower_bound", "found", "size",
                 "prefix_size", "gap", "minimal", "train_ids", "train_rows", "retrained_margin", "margin_error",
                 "exact_change", "if_change", "rif_change", "ns_change", "error_bound", "retrain_certified",
                 "bisection_rounds", "refinement_rounds")
ACCURACY_COLUMNS = ("target_drop", "n_test", "correct_before", "accuracy_before", "needed", "found", "size",
                    "prefix_size", "minimal", "train_ids", "train_rows", "certified_drop", "accuracy_after",
                    "accuracy_after_at_most", "error_bound", "ordering_points", "bisection_rounds", "refinement_rounds")


@entry_point
def audit(source, config: AuditConfig | None = None, *, client=None, **overrides) -> Audit:
    """Certified flip sets of test points, and of the test accuracy (docs/design.md §8.11).

    For each audited test point: the smallest training set found whose removal flips its
    predicted label, certified by an exact retrain, checked minimal (every member needed,
    by retrain), with a proven lower bound on the size of any flip set.

    Parameters
    ----------
    source : Attribution or Run
        A result of :func:`rifscale.attribute`, or a run from :func:`rifscale.open_run`.
    config : AuditConfig, optional
        What to audit; defaults to ``AuditConfig(**overrides)``.
    client : distributed.Client, optional
        Defaults to the active client, if any; else dask's threaded scheduler.
    **overrides
        Replace single fields of ``config`` (``audit(run, ids=[7, 9])``,
        ``audit(run, least_robust=10, accuracy_drop=0.01)``).

    Returns
    -------
    Audit
        ``.points_frame()``, ``.accuracy_frame()``, ``.counts``.

    Examples
    --------
    >>> import rifscale
    >>> from rifscale.testing import make_problem
    >>> pr = make_problem(200, 10, n_test=50, seed=3)
    >>> result = rifscale.attribute(rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test, pr.y_test), lam=1.0)
    >>> frame = rifscale.audit(result, least_robust=2).points_frame()
    >>> bool(frame[["found", "minimal", "retrain_certified"]].all().all()), len(frame)
    (True, 2)
    """
    config = replace(config, **overrides) if config is not None else AuditConfig(**overrides)
    corpus, model = source.corpus, source.model
    if not isinstance(model.family, AuditKernels):  # a family without the audit kernels (softmax, for now)
        raise ConfigError(f"rifscale audit supports the binary model only (this run's model is {model.family.name!r}); "
                          "multiclass flip sets are not built yet.")
    if corpus.test is None:
        raise ConfigError("The corpus has no test split: there are no test predictions to audit.")
    t0 = time.perf_counter()
    timings = {}
    test, p, icpt = corpus.test, model.p, model.fit_intercept
    d = p - int(icpt)
    x64 = test.X.astype(np.float64)
    eta = x64 @ model.theta[:d] + (model.theta[d] if icpt else 0.0)
    test_ids, eta, y_test = progress.compute(test.ids, eta, test.y, label="audit: test margins")
    test_ids, eta, y_test = (kernels.to_numpy(a) for a in (test_ids, eta, y_test))
    wanted = rows_of_ids(test_ids, np.asarray(list(config.ids)), "--ids") if config.ids else \
        np.empty(0, np.int64)
    screened = np.argsort(np.abs(eta), kind="stable")[: max(config.screen, config.least_robust)] \
        if config.least_robust else np.empty(0, np.int64)
    pool = np.unique(np.concatenate([wanted, screened])).astype(np.int64)
    acc = _accuracy_targets(eta, y_test, config.accuracy_drop) if config.accuracy_drop is not None else None
    gather = np.unique(np.concatenate([pool, acc["rows"] if acc else np.empty(0, np.int64)])).astype(np.int64)
    (xg,) = progress.compute(test.X[gather], label="audit: test rows")
    zg = kernels.design(np.asarray(kernels.to_numpy(xg), dtype=np.float64), fit_intercept=icpt)
    Zt = zg[np.searchsorted(gather, pool)]
    sign = np.where(eta[pool] > 0, 1.0, -1.0)
    V = [Zt.T]
    if acc:
        za = zg[np.searchsorted(gather, acc["rows"])]
        V.append(np.stack([za[:m].T @ acc["weights"][:m] for m in acc["sizes"]], axis=1))
    V = np.concatenate(V, axis=1) if V else np.zeros((p, 0))
    signs = np.concatenate([sign, np.ones(V.shape[1] - pool.size)])
    t = time.perf_counter()
    rows = _pass(source, V, signs, Zt, sign, max_size=config.max_size, client=client)
    timings["scores"] = time.perf_counter() - t
    K = rows["K"]

    # --- orderings, RIF estimates, the points to audit, their lower bounds
    orders, guesses = [], []
    for j in range(V.shape[1]):
        vals, idx = rows["vals"][:, j], rows["idx"][:, j]
        helpful = np.isfinite(vals) & (vals < 0)
        orders.append(idx[helpful].astype(np.int64))
        if j < pool.size:
            after = np.abs(eta[pool[j]]) + np.cumsum(vals[helpful])
            hit = np.flatnonzero(after < 0)
            guesses.append(float(hit[0] + 1) if hit.size else math.inf)
    chosen = [int(np.searchsorted(pool, r)) for r in dict.fromkeys(wanted.tolist())]
    if config.least_robust:
        rest = [j for j in range(pool.size) if pool[j] not in set(wanted.tolist())]
        rest.sort(key=lambda j: (guesses[j], abs(eta[pool[j]])))
        chosen += rest[: config.least_robust]
    rho = np.append(RHO_GRID[RHO_GRID < rows["rmax"]], rows["rmax"])
    mass = np.append(rows["mass"][RHO_GRID < rows["rmax"]], 0.0)

    points = []
    test_id_values = test_ids.tolist()  # the ids as Python int or str
    for j in chosen:
        t_row = int(pool[j])
        lb = flip_lower_bound(abs(float(eta[t_row])), c=rows["c"][:, j], h=rows["h"], gamma=rows["gamma"], rho=rho,
                              mass=mass, c_euclid=None if rows["ce"] is None else rows["ce"][:, j], lam=model.lam,
                              fit_intercept=icpt)
        points.append(_Point(row=t_row, test_id=test_id_values[t_row], label=int(y_test[t_row]),
                             margin=float(eta[t_row]), z=Zt[j], sign=float(sign[j]), guess=guesses[j],
                             lower_bound=lb, search=Bisection(orders[j], guesses[j], config.fanout)))
    acc_searches = []
    if acc:
        for a, m in enumerate(acc["sizes"]):
            acc_searches.append((m, Bisection(orders[pool.size + a], math.inf, config.fanout)))

    # --- bisection, then refinement: every round of every target in one batched retrain
    judge = _Judge(source, points, acc, config, client)
    targets = {f"t{pt.row}": pt.search for pt in points}
    targets.update({f"a{m}": s for m, s in acc_searches})
    t = time.perf_counter()
    judge.rounds(targets, "bisection")
    refinements = {}
    for key, s in targets.items():
        if s.found is not None and config.refine and s.found[0].size <= config.refine_max:
            refinements[key] = Refinement(*s.found)
        elif s.found is not None and config.refine:
            log.warning("audit: the set of %d rows found for %s is not refined (refine_max = %d): its minimality is "
                        "not checked", s.found[0].size, key, config.refine_max)
    judge.rounds(refinements, "refinement")
    timings["search"] = time.perf_counter() - t

    t = time.perf_counter()
    records = _point_records(source, points, refinements, train_ids=_train_ids(source))
    acc_record = _accuracy_record(acc, acc_searches, refinements, _train_ids(source)) if acc else None
    timings["estimates"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    counts = {"points": len(records), "flips_found": sum(r["found"] for r in records),
              "minimal": sum(bool(r["minimal"]) for r in records), "retrains": judge.n_retrains,
              "retrain_rounds": judge.n_rounds, "candidate_rows": K}
    log.info("audit: %d point(s), %d flip set(s) found and certified, %d exact retrains in %d batched round(s)",
             counts["points"], counts["flips_found"], counts["retrains"], counts["retrain_rounds"])
    return Audit(points=records, accuracy=acc_record, config=config, counts=counts, timings=timings,
                 model={"lam": model.lam, "fit_intercept": icpt, "p": p, "n": corpus.n, "n_test": test.n})


@dataclass
class _Point:
    row: int
    test_id: int | str
    label: int
    margin: float
    z: np.ndarray
    sign: float
    guess: float
    lower_bound: int
    search: Bisection

    def judge(self, fit) -> tuple:
        """(flipped for certain, signed retrained margin, fit)."""
        m = float(self.z @ fit.theta)
        err = float(margin_error(np.abs(self.z) @ np.abs(fit.theta), np.linalg.norm(self.z), fit.error_bound))
        return (bool(np.isfinite(err) and self.sign * m < -err), self.sign * m, fit)


def _accuracy_targets(eta, y, drop: float) -> dict:
    """The accuracy audit's orderings: the correct test points nearest the boundary,
    weighted to push each across it (``w_t = s_t / (|m_t| + mean |m|)``)."""
    correct = (eta > 0) == (y == 1)
    n_test, n_correct = eta.size, int(correct.sum())
    needed = int(math.ceil(drop * n_test - 1e-9))
    if needed > n_correct:
        raise ConfigError(f"An accuracy drop of {drop} needs {needed} of the {n_test} test predictions to turn wrong, "
                          f"but only {n_correct} are right; ask for a drop of at most {n_correct / n_test:.4g}.")
    near = np.flatnonzero(correct)[np.argsort(np.abs(eta[correct]), kind="stable")]
    sizes = sorted({min(n_correct, needed * 2**j) for j in ACCURACY_SPREADS})
    rows = near[: sizes[-1]]
    m = np.abs(eta[rows])
    weights = np.where(eta[rows] > 0, 1.0, -1.0) / (m + m.mean())
    return {"rows": rows, "weights": weights, "sizes": sizes, "needed": needed, "n_test": n_test,
            "correct": n_correct, "drop": drop}


def _pass(source, V, signs, Zt, sign, *, max_size: int, client) -> dict:
    """One pass over the training rows: the K most helpful rows of every column of V (by
    ``signs · s_RIF``) and the ingredients of the lower bounds."""
    corpus, model = source.corpus, source.model
    train, icpt = corpus.train, model.fit_intercept
    N, M = Zt.shape[0], V.shape[1]
    U = model.factor.solve(V) if M else np.zeros((model.p, 0))
    Wz = Zt.T if not icpt else np.zeros((model.p, 0))
    table = row_map(model.family.audit_block, train.X, train.y, width=4 + M + Wz.shape[1], theta=model.theta,
                    linv=broadcast(model.factor.linv, client=client), U=U, Wz=Wz, fit_intercept=icpt)
    r, alpha, q, zn = (table[:, k] for k in range(4))
    h = alpha * q
    sif = table[:, 4 : 4 + M]
    low = (1.0 - h) < model.leverage_threshold  # flagged rows: RIF undefined, ordered last
    v = da.where(low[:, None], np.inf, sif * signs[None, :] / da.where(low, 1.0, 1.0 - h)[:, None])
    K = int(min(max_size, train.n - 1))  # dask's argtopk fails for k = n (2025.x); removing every row has no fit
    sq = da.sqrt(q)
    gamma = da.fabs(r) * sq
    nzt = np.sqrt(np.einsum("ij,ji->i", Zt, U[:, :N])) if N else np.zeros(0)  # ‖z_t‖_{H⁻¹}
    c = (gamma[:, None] * nzt[None, :] - sign[None, :] * sif[:, :N]) / 2
    out = {"vals": da.topk(v, -K, axis=0), "idx": da.argtopk(v, -K, axis=0), "c": da.topk(c, K, axis=0),
           "h": da.topk(h, K), "gamma": da.topk(gamma, K), "rmax": sq.max(),
           "mass": (h[:, None] * (sq[:, None] > RHO_GRID[None, :])).sum(axis=0)}
    if not icpt:  # the Euclidean bound: λ-strong convexity holds only without an intercept
        zz = table[:, 4 + M :]
        ce = (da.fabs(r)[:, None] * zn[:, None] * np.linalg.norm(Zt, axis=1)[None, :]
              - sign[None, :] * r[:, None] * zz) / 2
        out["ce"] = da.topk(ce, K, axis=0)
    (got,) = progress.compute(out, label="audit: scores")
    got = {k: kernels.to_numpy(v) for k, v in got.items()}
    got["rmax"] = float(got["rmax"])
    got.setdefault("ce", None)
    got["K"] = K
    return got


class _Judge:
    """Judges the sets of every target in one batched retrain per round."""

    def __init__(self, source, points, acc, config: AuditConfig, client):
        self.source, self.acc, self.config, self.client = source, acc, config, client
        self.points = {f"t{pt.row}": pt for pt in points}
        self.n_retrains = self.n_rounds = 0

    def rounds(self, targets: dict, phase: str) -> None:
        with progress.Bar(f"audit: {phase}", total=len(targets)) as bar:
            while True:
                wanted = {(key, tag): rows for key, s in targets.items() if not s.done
                          for tag, rows in s.sets().items()}
                if not wanted:
                    break
                judged = self.judge(wanted)
                for key, s in targets.items():
                    mine = {tag: j for (k, tag), j in judged.items() if k == key}
                    if mine:
                        s.take(mine)
                done = sum(s.done for s in targets.values())
                log.info("audit %s round: %d set(s) retrained, %d of %d target(s) done", phase, len(wanted), done,
                         len(targets))
                bar.update(done, text=f"round {self.n_rounds}")

    def judge(self, wanted: dict) -> dict:
        keys = list(wanted)
        names = {f"{key}|{tag}": kt for kt in keys for key, tag in [kt]}
        fits = {}
        items = list(names.items())
        for b in range(0, len(items), self.config.batch_sets):
            batch = dict(items[b : b + self.config.batch_sets])
            out = retrain(self.source, {name: wanted[kt] for name, kt in batch.items()}, tol=self.config.tol,
                          client=self.client)
            fits.update({batch[name]: fit for name, fit in out.items()})
        self.n_retrains += len(fits)
        self.n_rounds += 1
        judged = {kt: self.points[kt[0]].judge(fit) for kt, fit in fits.items() if kt[0] in self.points}
        acc_keys = [kt for kt in fits if kt[0] not in self.points]
        if acc_keys:
            counts = self._accuracy_counts([fits[kt] for kt in acc_keys])
            for kt, (lost, gained, correct) in zip(acc_keys, counts):
                drop = lost - gained
                judged[kt] = (drop >= self.acc["needed"], -drop, fits[kt], correct)
        return judged

    def _accuracy_counts(self, fits) -> list:
        test, model = self.source.corpus.test, self.source.model
        thetas = np.stack([f.theta for f in fits], axis=1)
        bounds = np.array([f.error_bound for f in fits], dtype=np.float64)
        packed = block_sum(accuracy_block, test.X, test.y, width=1 + 3 * len(fits), theta=model.theta,
                           thetas=thetas, bounds=bounds, fit_intercept=model.fit_intercept, client=self.client)
        (packed,) = progress.compute(packed, label="audit: test accuracy")
        per = kernels.to_numpy(packed)[1:].reshape(-1, 3)
        return [tuple(int(round(v)) for v in row) for row in per]


def _final(key, search, refinements):
    """(rows, judgement, minimal) of a target's final set, or None."""
    if key in refinements:
        ref = refinements[key]
        return ref.rows, ref.judgement, ref.minimal
    return (*search.found, None) if search.found is not None else None  # not refined: minimality not checked


def _train_ids(source) -> np.ndarray:
    ids = getattr(source, "ids", None)  # a Run keeps them beside the scores
    return np.asarray(ids if ids is not None else kernels.to_numpy(source.corpus.train.ids.compute()))


def _point_records(source, points, refinements, *, train_ids) -> list:
    finals = {f"t{pt.row}": _final(f"t{pt.row}", pt.search, refinements) for pt in points}
    found = {k: f[0] for k, f in finals.items() if f is not None}
    deltas = set_statistics(source, found).deltas if found else {}
    records = []
    for pt in points:
        key = f"t{pt.row}"
        rec = {"test_id": pt.test_id, "test_row": pt.row, "label": pt.label, "predicted": int(pt.margin > 0),
               "margin": pt.margin, "rif_estimate": pt.guess if math.isfinite(pt.guess) else None,
               "lower_bound": pt.lower_bound, "found": False, "size": None, "gap": None, "minimal": None,
               "train_ids": [], "train_rows": [], "bisection_rounds": pt.search.rounds, "prefix_size": pt.search.hi,
               "refinement_rounds": refinements[key].rounds if key in refinements else 0}
        final = finals[key]
        if final is not None:
            rows, (_, signed, fit), minimal = final
            err = float(margin_error(np.abs(pt.z) @ np.abs(fit.theta), np.linalg.norm(pt.z), fit.error_bound))
            change = {m: float(pt.z @ deltas[key].delta[m]) for m in ("if", "rif", "ns")}
            rec.update(found=True, size=int(rows.size), gap=int(rows.size) - pt.lower_bound, minimal=minimal,
                       train_ids=train_ids[rows].tolist(), train_rows=rows.tolist(),
                       retrained_margin=float(pt.z @ fit.theta), margin_error=err,
                       exact_change=float(pt.z @ fit.delta), if_change=change["if"], rif_change=change["rif"],
                       ns_change=change["ns"], error_bound=float(fit.error_bound),
                       retrain_certified=bool(fit.certified))
        records.append({k: rec.get(k) for k in POINT_COLUMNS})
    return records


def _accuracy_record(acc, searches, refinements, train_ids) -> dict:
    rec = {"target_drop": acc["drop"], "n_test": acc["n_test"], "correct_before": acc["correct"],
           "accuracy_before": acc["correct"] / acc["n_test"], "needed": acc["needed"], "found": False,
           "train_ids": [], "train_rows": [], "bisection_rounds": max(s.rounds for _, s in searches)}
    best = None
    for m, s in searches:
        final = _final(f"a{m}", s, refinements)
        if final is not None and (best is None or final[0].size < best[1][0].size):
            best = (m, final)
    if best is not None:
        m, (rows, (_, neg_drop, fit, correct), minimal) = best
        key = f"a{m}"
        rec.update(found=True, size=int(rows.size), minimal=minimal, train_ids=train_ids[rows].tolist(),
                   train_rows=rows.tolist(), certified_drop=-neg_drop, accuracy_after=correct / acc["n_test"],
                   accuracy_after_at_most=(acc["correct"] + neg_drop) / acc["n_test"],
                   error_bound=float(fit.error_bound), ordering_points=m, prefix_size=dict(searches)[m].hi,
                   refinement_rounds=refinements[key].rounds if key in refinements else 0)
    return {k: rec.get(k) for k in ACCURACY_COLUMNS}
