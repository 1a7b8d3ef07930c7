r"""Approximate leave-one-out along a λ path: what ``rifscale tune`` computes (docs/design.md §8.10).

For every λ of a grid, from the largest down, :func:`rifscale.attribute` fits θ̂(λ)
starting from the θ̂ of the nearest λ already fitted (the warm start of
:class:`rifscale.Session`), moved by the Newton step of the new penalty when that λ was
fitted just before (:func:`predict_theta`: no pass over the data), factors H, and one pass over the
training rows (the model family's ``loo_block`` (:mod:`rifscale.engine.kernels.logistic`)) sums the losses of every row's
approximate leave-one-out logit

    η̃_i = η_i + q_i r_i / (1 − h_i),      q_i = z_iᵀ H⁻¹ z_i,  h_i = α_i q_i

— the logit at θ̂ + Δθ_RIF(i), the exact single-sample Newton step of removing row i —
as log-loss, 0/1 error and Brier score, beside the same losses at θ̂ on the training rows
and on the whole test split. The λ with the lowest approximate-LOO criterion wins (ties:
the largest such λ). Exact LOO, by batched single-point retrains
(:func:`rifscale.exact.retrain_sets`) of a seeded sample of training rows, is reported
beside the estimate on the same rows: at the chosen λ (``exact_at="best"``) or at every λ.

This module computes in memory; :mod:`rifscale.tuning` is the API (``rifscale.tune``)
and the resumable job that writes the tune directory.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, get_args

import dask
import numpy as np

from ..cluster import wide_blas
from ..engine import kernels
from ..engine._blocks import per_block, persist_rows, reduce_blocks
from ..config import RunConfig
from ..errors import ConfigError
from ..engine.factor import broadcast
from ..corpus.model import Corpus
from ..engine.family import BINARY, ModelFamily
from ..engine.kernels.logistic import HELDOUT_COLUMNS, LOO_COLUMNS
from ..engine.kernels.products import square_norm_block
from ..progress import Bar

log = logging.getLogger(__name__)

Criterion = Literal["logloss", "error", "brier"]
CRITERIA: tuple[Criterion, ...] = get_args(Criterion)
ExactAt = Literal["best", "all"]
#: The default grid: GRID_POINTS values, log-spaced over GRID_DECADES about the scale
#: E‖x‖² of the rows (docs/design.md §8.10 says why that scale).
GRID_DECADES, GRID_POINTS = (-3.0, 3.0), 13
#: Training rows retrained exactly (leave-one-out) by default, at the chosen λ.
EXACT_LOO = 20
LOSSES = ("logloss", "error", "brier")
#: The columns of the table, one row per λ (ascending).
COLUMNS = (
    "lam",
    *(f"loo_{m}" for m in LOSSES), *(f"train_{m}" for m in LOSSES), *(f"test_{m}" for m in LOSSES),
    "leverage_sum", "flagged",
    "fit_iter", "fit_passes", "fit_certified", "fit_rel_error_bound", "seconds",
    "exact_n", *(f"exact_{m}" for m in LOSSES), *(f"sample_{m}" for m in LOSSES),
    "exact_certified", "exact_converged", "exact_max_logit_diff", "exact_seconds",
    "selected",
)


@dataclass(frozen=True)
class TuneConfig:
    """What ``rifscale tune`` computes, besides the fit settings (a :class:`RunConfig`).

    Parameters
    ----------
    lams : tuple of float > 0, or None
        The grid (sorted, distinct); None for the default: 13 values log-spaced over
        1e-3..1e3 times E‖x‖² (the mean squared row norm of the training features).
    criterion : "logloss", "error" or "brier"
        The approximate-LOO loss λ is chosen by.
    exact_loo : int >= 0
        Training rows (a seeded sample) retrained exactly without themselves; 0: none.
    exact_at : "best" or "all"
        Retrain them at the chosen λ only, or at every λ of the grid (that many times
        the cost: each retrain certifies with its own Hessian, n p² per row).
    """

    lams: tuple[float, ...] | None = None
    criterion: Criterion = "logloss"
    exact_loo: int = EXACT_LOO
    exact_at: ExactAt = "best"

    def __post_init__(self) -> None:
        if self.lams is not None:
            object.__setattr__(self, "lams", check_lams(self.lams))
        if self.criterion not in CRITERIA:
            raise ConfigError(f"The 'criterion' parameter must be one of {CRITERIA}. Got {self.criterion!r} instead.")
        if isinstance(self.exact_loo, bool) or not isinstance(self.exact_loo, numbers.Integral) or self.exact_loo < 0:
            raise ConfigError(f"The 'exact_loo' parameter must be an integer >= 0 (training rows retrained "
                              f"exactly; 0 for none). Got {self.exact_loo!r} instead.")
        if self.exact_at not in get_args(ExactAt):
            raise ConfigError(f"The 'exact_at' parameter must be 'best' or 'all'. Got {self.exact_at!r} instead.")
        object.__setattr__(self, "exact_loo", int(self.exact_loo))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lams"] = list(self.lams) if self.lams is not None else "default"
        return d


def check_lams(values) -> tuple[float, ...]:
    """The grid as a sorted tuple of distinct finite floats > 0, or a ConfigError."""
    try:
        lams = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"The λ grid must be numbers > 0 (e.g. --lams 0.01 0.1 1 10). Got {values!r}.") from None
    bad = [v for v in lams if not (math.isfinite(v) and v > 0)]
    if not lams or bad:
        raise ConfigError(
            f"The λ grid must be a non-empty list of finite numbers > 0 (λ = 0 has no leave-one-out "
            f"estimate where d > n, and a log grid has no 0). Got {bad or 'nothing'}; e.g. --lams 0.01 0.1 1 10, "
            "or --lams 1e-2:1e2:9 for 9 values log-spaced from 0.01 to 100."
        )
    if len(set(lams)) != len(lams):
        dup = sorted({v for v in lams if lams.count(v) > 1})
        raise ConfigError(f"The λ grid has repeated values {dup}; give each λ once (e.g. --lams 0.1 1 10).")
    return tuple(sorted(lams))


def parse_lams(specs) -> tuple[float, ...]:
    """The grid of ``--lams``: numbers (``0.1 1 10`` or ``0.1,1,10``) or one log range
    ``LO:HI:N`` (N values log-spaced from LO to HI, both included)."""
    parts = [p for s in ([specs] if isinstance(specs, str) else specs) for p in str(s).replace(",", " ").split()]
    if len(parts) == 1 and parts[0].count(":") == 2:
        lo, hi, num = parts[0].split(":")
        try:
            lo, hi, num = float(lo), float(hi), int(num)
        except ValueError:
            raise ConfigError(f"--lams {parts[0]!r} is not a range LO:HI:N (e.g. 1e-3:1e3:13).") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi and num >= 2):
            raise ConfigError(f"--lams {parts[0]!r}: a range LO:HI:N needs 0 < LO < HI and N >= 2 "
                              "(e.g. 1e-3:1e3:13).")
        return check_lams(np.geomspace(lo, hi, num).tolist())
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--lams takes numbers > 0 (e.g. --lams 0.01 0.1 1 10) or one range LO:HI:N (e.g. "
                          f"1e-3:1e3:13). Got {' '.join(parts)!r}.") from None
    return check_lams(values)


def default_grid(scale: float) -> tuple[float, ...]:
    """:data:`GRID_POINTS` values log-spaced over :data:`GRID_DECADES` about ``scale``."""
    return tuple(float(scale * 10.0**e) for e in np.linspace(*GRID_DECADES, GRID_POINTS))


def row_scale(train, *, fit_intercept: bool) -> tuple[float, float]:
    """(E‖x‖², R = max ‖z_i‖) of the training rows, in one light pass."""
    blocks = per_block(square_norm_block, train.X, width=2)
    total, top = dask.compute(blocks[:, 0].sum(), blocks[:, 1].max())
    return float(total) / max(train.n, 1), math.sqrt(float(top) + float(fit_intercept))


def predict_theta(theta: np.ndarray, hessian: np.ndarray, lam0: float, lam: float, *, fit_intercept: bool):
    """θ̂(λ) predicted from θ̂(λ₀) and the Hessian H there, without a pass over the data:
    the Newton step of the λ objective from θ̂(λ₀), whose gradient there is (λ − λ₀) D θ̂ and
    whose Hessian is H + (λ − λ₀) D (only the penalty changed). None when that matrix has
    no Cholesky factor (the fit then starts from θ̂(λ₀) itself)."""
    import scipy.linalg

    d = np.ones(len(theta))
    if fit_intercept:
        d[-1] = 0.0
    try:
        with wide_blas(len(d)):
            factor = scipy.linalg.cho_factor(hessian + (lam - lam0) * np.diag(d), lower=True, check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        return None
    start = theta - scipy.linalg.cho_solve(factor, (lam - lam0) * d * theta, check_finite=False)
    return start if np.isfinite(start).all() else None


def nearest_lam(done, lam: float) -> float | None:
    """The fitted λ nearest to ``lam`` on a log scale (as :class:`rifscale.Session` chooses
    its warm start), or None."""
    return min(done, key=lambda l0: abs(math.log(l0) - math.log(lam)), default=None)


# ------------------------------------------------------------------------- one λ

def loo_sums(result, *, client=None) -> dict:
    """The approximate-LOO and training losses of a fitted :class:`~rifscale.pipeline.Attribution`
    (means over the rows), the sum of the leverages and the flagged rows: one pass."""
    model, train = result.model, result.corpus.train
    packed = reduce_blocks(model.family.loo_block, train.X, train.y, width=len(LOO_COLUMNS), client=client, theta=model.theta,
                           linv=broadcast(model.factor.linv, client=client), fit_intercept=model.fit_intercept,
                           threshold=model.leverage_threshold)
    sums = dict(zip(LOO_COLUMNS, packed.tolist()))
    n = sums.pop("rows")
    out = {k: v / n for k, v in sums.items() if k not in ("leverage", "flagged")}
    return out | {"leverage_sum": sums["leverage"], "flagged": int(round(sums["flagged"]))}


def heldout(test, theta, *, fit_intercept: bool, client=None, family: ModelFamily = BINARY) -> dict:
    """The three losses at θ, averaged over every row of the test split."""
    packed = reduce_blocks(family.heldout_block, test.X, test.y, width=len(HELDOUT_COLUMNS), client=client,
                           theta=np.asarray(theta, dtype=np.float64), fit_intercept=fit_intercept)
    sums = dict(zip(HELDOUT_COLUMNS, packed.tolist()))
    return {f"test_{m}": sums[m] / sums["rows"] for m in LOSSES}


def exact_sample(n: int, size: int, seed: int) -> np.ndarray:
    """The sorted training rows retrained exactly: a seeded draw without replacement."""
    rng = np.random.default_rng([seed, 18])
    return np.sort(rng.choice(n, size=min(size, n), replace=False)).astype(np.int64)


def exact_loo(result, rows: np.ndarray, *, client=None) -> dict:
    """Exact leave-one-out of ``rows`` (batched certified retrains, one set per row) and the
    approximate LOO of the same rows: mean losses of both, the retrains' certificates and
    the largest difference of the two logits."""
    from ..validation.exact import retrain_sets

    t0 = time.perf_counter()
    model, train = result.model, result.corpus.train
    fits = retrain_sets(result, {str(int(i)): [int(i)] for i in rows}, client=client)
    thetas = np.stack([fits[str(int(i))].theta for i in rows], axis=1)
    x, y = (kernels.to_numpy(a) for a in dask.compute(train.X[rows], train.y[rows]))
    _, approx, _, _ = model.family.loo_rows(x, y, theta=model.theta, linv=model.factor.linv, fit_intercept=model.fit_intercept,
                               threshold=model.leverage_threshold)
    z = kernels.design(np.asarray(x), fit_intercept=model.fit_intercept)
    family = model.family
    exact = np.concatenate([family.predict_logits(z[j : j + 1], thetas[:, j]) for j in range(len(rows))])  # at θ̂_{−i}
    out = {"exact_n": len(rows)}
    for m, e, a in zip(LOSSES, family.loo_losses(exact, y), family.loo_losses(approx, y)):
        out[f"exact_{m}"], out[f"sample_{m}"] = float(e.mean()), float(a.mean())
    out |= {"exact_certified": sum(f.stopped_at == "tolerance" for f in fits.values()),
            "exact_converged": sum(f.converged for f in fits.values()),
            "exact_max_logit_diff": float(np.max(np.abs(exact - approx))),
            "exact_seconds": time.perf_counter() - t0}
    return out


def fit_at(corpus: Corpus, config: RunConfig, lam: float, *, theta0, radius, layout, client):
    """:func:`rifscale.attribute` at ``lam`` on rows laid out once for the whole path."""
    from ..pipeline import attribute

    return attribute(corpus, config.replace(lam=lam), client=client, theta0=theta0, _layout=layout, _radius=radius)


def step(corpus: Corpus, config: RunConfig, lam: float, *, theta0, radius, layout, client,
         exact_rows: np.ndarray | None):
    """Fit at ``lam`` and measure it: (its table row, with ``theta`` and ``row_norm_max``;
    the fitted :class:`~rifscale.pipeline.Attribution`, whose Hessian at θ̂ starts the next λ)."""
    t0 = time.perf_counter()
    result = fit_at(corpus, config, lam, theta0=theta0, radius=radius, layout=layout, client=client)
    row = {"lam": lam, **loo_sums(result, client=client),
           **heldout(corpus.test, result.theta, fit_intercept=config.fit_intercept, client=client,
                     family=result.model.family)}
    fit = result.fit
    row |= {"fit_iter": fit.n_iter, "fit_passes": fit.n_passes, "fit_certified": bool(fit.certified),
            "fit_rel_error_bound": float(fit.rel_error_bound), "seconds": time.perf_counter() - t0}
    if exact_rows is not None and len(exact_rows):
        row |= exact_loo(result, exact_rows, client=client)
    return row | {"theta": result.theta.tolist(), "row_norm_max": float(fit.row_norm_max)}, result


def finite_or_none(value):
    """``value`` as a float when finite (a radius worth reusing), else None."""
    return float(value) if value is not None and math.isfinite(value) else None


# ------------------------------------------------------------------------- the path

@dataclass
class TunePath:
    """The grid and the finished steps of a tune (a checkpoint's contents)."""

    lams: tuple[float, ...]
    scale: float | None = None  # E‖x‖² when the grid is the default one
    radius: float | None = None  # R = max ‖z_i‖ of the training rows
    steps: dict = field(default_factory=dict)  # lam -> table row (with "theta")
    best_exact: dict | None = None  # the exact-LOO columns at the chosen λ (exact_at="best")


def prepare(corpus: Corpus, config: RunConfig, *, client=None) -> tuple[Corpus, dict]:
    """The corpus with its training rows laid out (and persisted as ``config.persist``
    says) once for every fit of the path, its test split held beside them."""
    from ..engine.partition import prepare_split

    train, layout = prepare_split(corpus.train, client=client, persist=config.persist, device=config.device)
    test = corpus.test
    if layout["persisted"] and test is not None:
        tX, ty, tids = persist_rows([test.X, test.y, test.ids], client)
        test = replace(test, X=tX, y=ty, ids=tids)
    return replace(corpus, train=train, test=test), layout


def run_path(corpus: Corpus, config: RunConfig, settings: TuneConfig, path: TunePath, *, layout: dict, client=None,
             on_step=None) -> TunePath:
    """Fit every λ of ``path.lams`` not in ``path.steps``, largest first, each from the
    nearest λ fitted; ``on_step(lam, row)`` after each (the checkpoint). Then the exact
    LOO at the chosen λ when ``exact_at="best"``."""
    rows = exact_sample(corpus.n, settings.exact_loo, config.seed) if settings.exact_loo else None
    todo = [lam for lam in sorted(path.lams, reverse=True) if lam not in path.steps]
    last = None  # (λ, H at θ̂) of the step just fitted
    kept = None  # (λ, Attribution) of the best λ fitted in this call: the exact LOO needs no refit
    with Bar("tune", total=len(path.lams)) as bar:
        bar.update(len(path.steps), text=f"{len(path.steps)} of {len(path.lams)} lambda values")
        for lam in todo:
            near = nearest_lam(path.steps, lam)
            start = None if near is None else np.asarray(path.steps[near]["theta"], dtype=np.float64)
            if last is not None and near == last[0]:
                predicted = predict_theta(start, last[1], near, lam, fit_intercept=config.fit_intercept)
                start = predicted if predicted is not None else start
            row, result = step(corpus, config, lam, theta0=start, radius=path.radius, layout=layout, client=client,
                               exact_rows=rows if settings.exact_at == "all" else None)
            last = (lam, result.fit.hessian)
            value = row[f"loo_{settings.criterion}"]
            if kept is None or value < path.steps[kept[0]][f"loo_{settings.criterion}"]:  # ties: the larger λ
                kept = (lam, result)
            path.steps[lam] = row
            path.radius = path.radius or finite_or_none(row["row_norm_max"])
            log.info("tune: lam = %.4g: LOO log-loss %.5f, error %.4f (test %.5f, %.4f), %d Newton passes, %.2f s",
                     lam, row["loo_logloss"], row["loo_error"], row["test_logloss"], row["test_error"],
                     row["fit_passes"], row["seconds"])
            if on_step is not None:
                on_step(lam, row)
            bar.update(len(path.steps), text=f"lambda = {lam:.3g} done")
    if rows is not None and settings.exact_at == "best" and path.best_exact is None:
        lam = path.lams[select(table_of(path), settings.criterion)]
        if kept is not None and kept[0] == lam:
            result = kept[1]
        else:  # chosen among λ values fitted before a resume: fitted again, from its θ̂
            result = fit_at(corpus, config, lam, theta0=np.asarray(path.steps[lam]["theta"]), radius=path.radius,
                            layout=layout, client=client)
        path.best_exact = {"lam": lam, **exact_loo(result, rows, client=client)}
        log.info("tune: exact LOO of %d rows at lam = %.4g: log-loss %.5f (approximate %.5f on the same rows)",
                 len(rows), lam, path.best_exact["exact_logloss"], path.best_exact["sample_logloss"])
        if on_step is not None:
            on_step(None, path.best_exact)
    return path


def table_of(path: TunePath):
    """The table (pandas DataFrame, ascending λ, :data:`COLUMNS`) of the finished steps."""
    import pandas as pd

    rows = []
    for lam in path.lams:
        row = {k: v for k, v in path.steps[lam].items() if k not in ("theta", "row_norm_max")}
        if path.best_exact is not None and path.best_exact["lam"] == lam:
            row |= {k: v for k, v in path.best_exact.items() if k != "lam"}
        rows.append(row)
    frame = pd.DataFrame(rows).reindex(columns=[c for c in COLUMNS if c != "selected"])
    frame["exact_n"] = frame["exact_n"].fillna(0).astype("int64")
    return frame


def select(table, criterion: Criterion) -> int:
    """Position (in ascending λ) of the λ with the lowest approximate-LOO ``criterion``;
    among equal values the largest λ (the simplest model). Never the training loss."""
    values = table[f"loo_{criterion}"].to_numpy(dtype=np.float64)
    if not np.isfinite(values).any():
        raise ConfigError(f"No λ of the grid has a finite leave-one-out {criterion}; check the data.")
    best = np.nanmin(values)
    return int(np.flatnonzero(values == best)[-1])


# ------------------------------------------------------------------------- the result

@dataclass(frozen=True)
class Tuning:
    """The result of :func:`rifscale.tune` (or a tune directory read back with
    :func:`rifscale.tuning.open_tune`)."""

    table: object  # pandas DataFrame, one row per λ (ascending), columns COLUMNS
    lam: float  # the chosen λ
    criterion: Criterion
    manifest: dict = field(default_factory=dict)
    path: os.PathLike | None = None

    @property
    def best(self):
        """The chosen λ's row of the table (a pandas Series)."""
        return self.table.loc[self.table["selected"]].iloc[0]

    def plot(self, axes=None):
        """The LOO curves beside the training and test ones (see :func:`plot_tuning`)."""
        return plot_tuning(self, axes=axes)

    def __repr__(self) -> str:
        b = self.best
        return (f"Tuning(lam = {self.lam:.6g} by LOO {self.criterion} over {len(self.table)} values "
                f"{self.table['lam'].min():.3g}..{self.table['lam'].max():.3g}: LOO log-loss "
                f"{b['loo_logloss']:.5f}, test log-loss {b['test_logloss']:.5f})")


def finish(path: TunePath, settings: TuneConfig) -> tuple[object, int]:
    """The table with its ``selected`` column, and the chosen position; a warning when the
    choice is at an end of the grid."""
    table = table_of(path)
    best = select(table, settings.criterion)
    table["selected"] = np.arange(len(table)) == best
    if len(table) > 1 and best in (0, len(table) - 1):
        log.warning("tune: the chosen lam = %.4g is at the %s end of the grid: the LOO %s may fall further "
                    "beyond it. Extend the grid with --lams.", path.lams[best],
                    "lower" if best == 0 else "upper", settings.criterion)
    if table["flagged"].iloc[best]:
        log.warning("tune: %d training row(s) at the chosen lam have 1 - h below the leverage threshold: their "
                    "LOO logits are bounded, not estimated", table["flagged"].iloc[best])
    return table, best


def start_path(corpus: Corpus, config: RunConfig, settings: TuneConfig) -> TunePath:
    """The grid of a new tune: given, or the default one about E‖x‖² (one light pass)."""
    if settings.lams is not None:
        return TunePath(lams=settings.lams)
    scale, radius = row_scale(corpus.train, fit_intercept=config.fit_intercept)
    if not scale > 0:
        raise ConfigError("Every training row is zero, so the default λ grid has no scale; give one with --lams.")
    log.info("tune: default grid of %d values over 1e%+g..1e%+g x E|x|^2 = %.4g", GRID_POINTS, *GRID_DECADES, scale)
    return TunePath(lams=default_grid(scale), scale=scale, radius=radius)


# ------------------------------------------------------------------------- the plot

def plot_tuning(tuning: Tuning, *, axes=None):
    """Three panels (log-loss, 0/1 error, Brier) against λ: the approximate LOO curve,
    the training and test curves, the exact LOO of the sample beside the approximate
    LOO of the same rows where computed, and the chosen λ. Returns the axes."""
    t = tuning.table
    if axes is None:
        import matplotlib.pyplot as plt

        axes = plt.subplots(1, 3, figsize=(12, 3.6))[1]
    exact = t[t["exact_n"] > 0]
    for ax, m, name in zip(axes, LOSSES, ("log-loss", "0/1 error", "Brier score")):
        ax.plot(t["lam"], t[f"loo_{m}"], "o-", color="#1b9e77", ms=3, label="LOO (approximate)")
        ax.plot(t["lam"], t[f"test_{m}"], "s--", color="#7570b3", ms=3, label="test")
        ax.plot(t["lam"], t[f"train_{m}"], ":", color="0.5", label="training")
        if len(exact):
            n = int(exact["exact_n"].iloc[0])
            ax.plot(exact["lam"], exact[f"exact_{m}"], "x", color="#d95f02", ms=8, mew=2,
                    label=f"exact LOO ({n} rows)")
            ax.plot(exact["lam"], exact[f"sample_{m}"], "+", color="#1b9e77", ms=9, mew=1.5,
                    label=f"approximate LOO (same {n} rows)")
        ax.axvline(tuning.lam, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("λ")
        ax.set_title(name + (" (criterion)" if m == tuning.criterion else ""))
    axes[0].legend(frameon=False, fontsize=7)
    return axes
