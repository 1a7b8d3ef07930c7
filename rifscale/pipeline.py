"""Stages of an attribution run (docs/design.md §7), in memory.

``attribute`` fits, factors, picks the test subset, computes the metric gradients and
returns an :class:`Attribution` whose per-sample scores are still lazy; ``rescore``
rebuilds the lazy scores of a model read back from disk. Writing and reading run
directories (and resuming killed runs) is :mod:`rifscale.runs.format`'s job.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace

import dask
import dask.array as da
import numpy as np

from .cluster import current_client, small_compute
from .config import RunConfig
from .errors import CorpusError
from .engine.factor import factor_hessian
from .engine.family import BINARY
from .engine.fit import FitResult, describe, fit
from .corpus.model import Corpus, open_corpus
from .corpus.checks import find_nonfinite
from .estimates.metrics import metric_at, read_index_file, select_test_subset
from .engine.model import FittedModel
from .engine.partition import check_device, prepare_split
from .engine.scores import Scores, score_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attribution:
    """Result of :func:`attribute`: θ̂, its convergence record, and lazy scores."""

    corpus: Corpus
    config: RunConfig
    fit: FitResult
    model: FittedModel
    scores: Scores
    timings: dict = field(default_factory=dict)
    layout: dict = field(default_factory=dict)  # blocks, persisted, device (rifscale.engine.partition)

    @property
    def theta(self) -> np.ndarray:
        return self.model.theta

    @property
    def leverage(self) -> da.Array:
        return self.scores.leverage

    @property
    def if_scores(self) -> dict[str, da.Array]:
        return self.scores.if_scores

    @property
    def rif_scores(self) -> dict[str, da.Array]:
        return self.scores.rif_scores

    def to_dataframe(self, columns=None):
        """The per-sample scores as a pandas DataFrame indexed by the corpus ids (``id``);
        computes them (one pass) and holds them in memory."""
        from .runs.format import _frame, score_columns

        named = {k.removeprefix("scores/"): v for k, v in self.scores.named().items()}
        cols = list(columns or score_columns(self.model.metrics))
        values = dask.compute(self.corpus.train.ids, *[named[c] for c in cols])
        return _frame(values[0], dict(zip(cols, values[1:])))

    def __repr__(self) -> str:
        return (f"Attribution(n = {self.corpus.n}, d = {self.corpus.d}, lam = {self.config.lam}, "
                f"metrics = {list(self.model.metrics)}, fit: {describe(self.fit.record())}; scores lazy)")

    def _repr_html_(self) -> str:
        from .runs.format import summary_html

        return summary_html("rifscale attribution", {
            "n × d": f"{self.corpus.n} × {self.corpus.d}", "λ": self.config.lam,
            "intercept": self.config.fit_intercept, "metrics": ", ".join(self.model.metrics),
            "fit": describe(self.fit.record()),
            "test subset": f"{self.model.test_subset.size} test rows",
            "scores": "lazy: .leverage, .if_scores, .rif_scores, .to_dataframe(), .to_zarr(path)",
            "corpus": self.corpus.path or "in memory",
        })

    def to_zarr(self, out, *, overwrite: bool = False, progress: bool = False) -> dict:
        """Compute the scores and write the run directory (:func:`rifscale.runs.format.write_run`)."""
        from .runs.format import write_run

        return write_run(self, out, overwrite=overwrite, progress=progress)


def attribute(corpus: Corpus | str | os.PathLike, config: RunConfig | None = None, *, client=None,
              theta0: np.ndarray | None = None, _layout: dict | None = None, _radius: float | None = None,
              **overrides) -> Attribution:
    """Fit, factor and build the (lazy) IF/RIF scores of every training sample.

    Parameters
    ----------
    corpus : Corpus or path of a Zarr corpus
    config : RunConfig, optional
        Defaults from :class:`~rifscale.config.RunConfig`; keyword ``overrides`` replace
        single fields (``attribute(path, lam=0.1)``).
    client : distributed.Client, optional
        Defaults to the active client, if any; the factor is then broadcast to all
        workers and the factorisation pinned to a ``GPU`` worker when one exists.
    theta0 : (p,) array, optional
        Start the Newton fit here (e.g. a previous run's θ̂) instead of from a subsample fit.

    Several calls on one corpus read it once when made through a :class:`rifscale.Session`.
    """
    corpus, config, client = _setup(corpus, config, client, overrides)
    if _layout is None:
        train, layout = prepare_split(corpus.train, client=client, persist=config.persist, device=config.device)
        corpus = replace(corpus, train=train)
    else:  # laid out and held by a rifscale.Session
        train, layout = corpus.train, dict(_layout)
    timings = {}
    t = time.perf_counter()
    check_objective(train, config)
    family = BINARY  # the model family of every stage below (rifscale.engine.family)
    fitted = fit(
        train.X,
        train.y,
        lam=config.lam,
        fit_intercept=config.fit_intercept,
        tol=config.tol,
        max_iter=config.max_iter,
        theta0=theta0,
        radius=_radius,
        family=family,
    )
    timings["fit"] = time.perf_counter() - t  # includes the first read (and persist) of the rows
    log.info("fit converged in %s", describe(fitted.record()))
    t = time.perf_counter()
    factor = factor_hessian(fitted.hessian, client=client)
    timings["factor"] = time.perf_counter() - t
    t = time.perf_counter()
    subset = select_test_subset(corpus.test, fitted.theta, config, family=family)
    metric = metric_at(corpus.test, subset, fitted.theta, names=config.metrics, fit_intercept=config.fit_intercept,
                       family=family)
    if not (np.isfinite(metric.values).all() and np.isfinite(metric.grads).all()):
        find_nonfinite("test", corpus.test.X)
        raise CorpusError("The test metrics are not finite at the fitted theta; check the scale of test/X.")
    timings["metrics"] = time.perf_counter() - t
    model = FittedModel(
        theta=fitted.theta,
        lam=config.lam,
        fit_intercept=config.fit_intercept,
        factor=factor,
        test_subset=subset,
        metric=metric,
        leverage_threshold=config.leverage_threshold,
        family=family,
    )
    scores = score_table(corpus.train, model, client=client)
    return Attribution(corpus=corpus, config=config, fit=fitted, model=model, scores=scores, timings=timings,
                       layout=layout)


def rescore(corpus: Corpus | str | os.PathLike, config: RunConfig, model: FittedModel, *, client=None) -> tuple:
    """The lazy scores of a fitted model (read back from a run): ``(corpus, scores, layout)``
    with the training rows laid out exactly as :func:`attribute` lays them out, so the
    scores are bit for bit the ones an uninterrupted run computes."""
    corpus, config, client = _setup(corpus, config, client, {})
    train, layout = prepare_split(corpus.train, client=client, persist=config.persist, device=config.device)
    corpus = replace(corpus, train=train)
    return corpus, score_table(train, model, client=client), layout


def _setup(corpus, config, client, overrides):
    if not isinstance(corpus, Corpus):
        corpus = open_corpus(corpus)
    config = (config or RunConfig()).replace(**overrides) if overrides else (config or RunConfig())
    if corpus.test is None:
        raise CorpusError(
            "The corpus has no test split, which the test metrics need. Ingest one with "
            "`rifscale ingest ... --test-X Xt.npy --test-y yt.npy` (or `--split-column` for a Parquet table), or "
            "hold out a seeded share of the rows with `rifscale ingest ... --test-fraction 0.1 --seed 0`."
        )
    if config.test_subset not in ("paper", "all"):
        read_index_file(config.test_subset, corpus.test.n, ids=corpus.test.ids)  # a bad file fails now
    client = client if client is not None else current_client()
    check_device(config.device, client)
    return corpus, config, client


def check_objective(train, config: RunConfig) -> None:
    """Refuse, before the fit, labels whose objective has no finite minimum: a single class
    with an unpenalised intercept (or lam = 0). (Overflowing features are caught by the
    fit's first pass, which reads X anyway.)"""
    lo, hi = small_compute(train.y.min(), train.y.max())
    if lo == hi and (config.fit_intercept or config.lam == 0):
        why = "the unpenalised intercept" if config.fit_intercept else "lam = 0"
        raise CorpusError(
            f"Every training label is {int(lo)}: with {why} the loss has no finite minimum (the fit "
            "would push the logits to infinity and the scores would mean nothing). Use a training set "
            "with both classes."
        )
