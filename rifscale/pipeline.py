"""Stages of an attribution run (docs/design.md §7), in memory.

``attribute`` fits, factors, picks the test subset, computes the metric gradients and
returns an :class:`Attribution` whose per-sample scores are still lazy; ``rescore``
rebuilds the lazy scores of a model read back from disk. Writing and reading run
directories (and resuming killed runs) is :mod:`rifscale.runs.format`'s job (reading them back, :mod:`rifscale.runs.reading`'s).
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
from .engine.family import family_for
from .engine.fit import FitResult, describe, fit
from .corpus.model import Corpus, open_corpus
from .corpus.checks import find_nonfinite
from .estimates.metrics import metric_at, read_index_file, select_test_subset
from .engine.model import FittedModel
from .engine.partition import check_device, hold_split, prepare_split
from .engine.scores import Scores, score_table
from .cluster import entry_point

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attribution:
    """Result of :func:`rifscale.attribute`: θ̂, its convergence record, and lazy scores.

    The per-sample scores are Dask arrays, one value per training row, computed only when
    asked for (``.compute()``, :meth:`~rifscale.Attribution.to_dataframe`,
    :meth:`~rifscale.Attribution.to_zarr`). The sign
    convention is the removal effect: a score is the change of the metric when the row is
    removed (docs/design.md §1.4).

    Parameters
    ----------
    corpus : Corpus
        The corpus the model was fitted on (its training rows laid out for the passes).
    config : RunConfig
        The configuration of the run.
    fit : FitResult
        θ̂ and the convergence record: ``n_iter``, ``n_passes``, ``converged``,
        ``error_bound`` (a proven bound on ‖θ̂ − θ*‖), ``rel_error_bound``, ``loss``.
    model : FittedModel
        θ̂, the Cholesky factor of the Hessian, the test subset and the metric gradients.
    scores : Scores
        The lazy per-sample arrays (leverage, IF and RIF scores per metric, ...).
    timings : dict
        Seconds per stage (fit, factor, metrics; scores once written).
    layout : dict
        How the rows are laid out on the workers (blocks, persisted, device).
    client : distributed.Client or None
        The client whose workers hold the rows (None on dask's local scheduler);
        :meth:`to_zarr` computes the scores on it.

    Examples
    --------
    >>> import rifscale
    >>> from rifscale.demo import demo_corpus
    >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
    >>> result = rifscale.attribute(corpus, lam=1.0)
    >>> result.fit.converged, result.theta.shape  # d = 196 features and the intercept
    (True, (197,))
    >>> result.rif_scores["test_loss"].shape
    (1000,)
    """

    corpus: Corpus
    config: RunConfig
    fit: FitResult
    model: FittedModel
    scores: Scores
    timings: dict = field(default_factory=dict)
    layout: dict = field(default_factory=dict)  # blocks, persisted, device (rifscale.engine.partition)
    client: object = field(default=None, repr=False, compare=False)

    @property
    def theta(self) -> np.ndarray:
        """θ̂, shape (p,): the d weights, then the intercept (p = d + 1 with an intercept).

        Examples
        --------
        >>> import rifscale
        >>> from rifscale.demo import demo_corpus
        >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
        >>> result = rifscale.attribute(corpus, lam=1.0)
        >>> result.theta.shape
        (197,)
        """
        return self.model.theta

    @property
    def leverage(self) -> da.Array:
        """The leverages h_i = α_i z_iᵀ H⁻¹ z_i, a lazy (n,) Dask array.

        Examples
        --------
        >>> import rifscale
        >>> from rifscale.demo import demo_corpus
        >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
        >>> result = rifscale.attribute(corpus, lam=1.0)
        >>> h = result.leverage.compute()
        >>> bool(((h > 0) & (h < 1)).all())
        True
        """
        return self.scores.leverage

    @property
    def if_scores(self) -> dict[str, da.Array]:
        """IF scores per metric: the linear change of the metric when row i is removed,
        without the 1/(1 − h_i) rescaling; lazy (n,) Dask arrays.

        Examples
        --------
        >>> import rifscale
        >>> from rifscale.demo import demo_corpus
        >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
        >>> result = rifscale.attribute(corpus, lam=1.0)
        >>> sorted(result.if_scores)
        ['test_loss', 'test_prediction']
        """
        return self.scores.if_scores

    @property
    def rif_scores(self) -> dict[str, da.Array]:
        """RIF scores per metric: the IF score divided by 1 − h_i (NaN where the row is
        flagged, 1 − h_i below the threshold); lazy (n,) Dask arrays.

        Examples
        --------
        >>> import numpy as np
        >>> import rifscale
        >>> from rifscale.demo import demo_corpus
        >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
        >>> result = rifscale.attribute(corpus, lam=1.0)
        >>> rif, if_ = result.rif_scores["test_loss"].compute(), result.if_scores["test_loss"].compute()
        >>> h = result.leverage.compute()
        >>> bool(np.allclose(rif, if_ / (1 - h)))
        True
        """
        return self.scores.rif_scores

    def to_dataframe(self, columns=None):
        """The per-sample scores as a pandas DataFrame indexed by the corpus ids (``id``);
        computes them (one pass) and holds them in memory.

        Parameters
        ----------
        columns : list of str, optional
            Columns to compute (default: prob, residual, alpha, leverage, self_if,
            self_rif, flags, then if_<metric> and rif_<metric> per metric).

        Returns
        -------
        pandas.DataFrame
            One row per training sample, indexed by its corpus id.

        Examples
        --------
        >>> import rifscale
        >>> from rifscale.demo import demo_corpus
        >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
        >>> result = rifscale.attribute(corpus, lam=1.0)
        >>> frame = result.to_dataframe()
        >>> frame.index.name, len(frame), "rif_test_loss" in frame
        ('id', 1000, True)
        >>> top = frame["rif_test_loss"].abs().nlargest(10).index  # the ten most influential ids
        """
        from .runs.reading import _frame, score_columns

        named = {k.removeprefix("scores/"): v for k, v in self.scores.named().items()}
        cols = list(columns or score_columns(self.model.metrics, self.scores.columns))
        values = dask.compute(self.corpus.train.ids, *[named[c] for c in cols])
        return _frame(values[0], dict(zip(cols, values[1:])))

    def __repr__(self) -> str:
        return (f"Attribution(n = {self.corpus.n}, d = {self.corpus.d}, lam = {self.config.lam}, "
                f"metrics = {list(self.model.metrics)}, fit: {describe(self.fit.record())}; scores lazy)")

    def _repr_html_(self) -> str:
        from .runs.reading import summary_html

        return summary_html("rifscale attribution", {
            "n × d": f"{self.corpus.n} × {self.corpus.d}", "λ": self.config.lam,
            "intercept": self.config.fit_intercept, "metrics": ", ".join(self.model.metrics),
            "fit": describe(self.fit.record()),
            "test subset": f"{self.model.test_subset.size} test rows",
            "scores": "lazy: .leverage, .if_scores, .rif_scores, .to_dataframe(), .to_zarr(path)",
            "corpus": self.corpus.path or "in memory",
        })

    def to_zarr(self, out, *, overwrite: bool = False, progress: bool = False) -> dict:
        """Compute the scores and write the run directory (:func:`rifscale.write_run`).

        Parameters
        ----------
        out : str or os.PathLike
            The run directory to create.
        overwrite : bool, default False
            Replace ``out`` if it is a run rifscale made.
        progress : bool, default False
            Show a progress bar of the scores pass.

        Returns
        -------
        dict
            The manifest written (``out/manifest.json``).

        Examples
        --------
        >>> import rifscale
        >>> from rifscale.demo import demo_corpus
        >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
        >>> result = rifscale.attribute(corpus, lam=1.0)
        >>> manifest = result.to_zarr("example-run", overwrite=True)
        >>> manifest["status"], manifest["n"]
        ('complete', 1000)
        """
        from .runs.format import write_run

        return write_run(self, out, overwrite=overwrite, progress=progress)


@entry_point
def attribute(corpus: Corpus | str | os.PathLike, config: RunConfig | None = None, *, client=None,
              theta0: np.ndarray | None = None, _layout: dict | None = None, _radius: float | None = None,
              **overrides) -> Attribution:
    """Fit, factor and build the (lazy) IF/RIF scores of every training sample.

    Parameters
    ----------
    corpus : Corpus or path of a Zarr corpus
        A :class:`rifscale.Corpus`, or a path or URL that :func:`rifscale.open_corpus`
        opens. It needs a test split (the metrics are evaluated on it).
    config : RunConfig, optional
        Defaults from :class:`rifscale.RunConfig`; keyword ``overrides`` replace
        single fields (``attribute(path, lam=0.1)``).
    client : distributed.Client, optional
        Defaults to the active client, if any; the factor is then broadcast to all
        workers and the factorisation pinned to a ``GPU`` worker when one exists. A
        client that is not dask's default (``set_as_default=False``) is the current one
        while this runs, and :meth:`Attribution.to_zarr` uses it too; to compute the lazy
        scores yourself, do it inside ``with client.as_current():``.
    theta0 : (p,) array, optional
        Start the Newton fit here (e.g. a previous run's θ̂) instead of from a subsample fit.
    **overrides
        Fields of :class:`rifscale.RunConfig` (``lam``, ``fit_intercept``, ``metrics``,
        ``test_subset``, ...).

    Other Parameters
    ----------------
    _layout, _radius
        Private, for :class:`rifscale.Session` (its held row layout, and the rows' max
        ‖z_i‖ its warm fits reuse); do not pass them.

    Returns
    -------
    Attribution
        θ̂ and its convergence record (fitted and factored: the work is done), and the
        per-sample scores as lazy Dask arrays.

    Raises
    ------
    NotConvergedError
        The fit did not reach its certified tolerance in ``max_iter`` iterations.
    NotPositiveDefiniteError
        The Hessian is singular (λ = 0 with separable data, or d > n).
    CorpusError
        No test split, one class with an intercept, non-finite metrics.

    Notes
    -----
    Several calls on one corpus read it once when made through a :class:`rifscale.Session`.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_corpus
    >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
    >>> result = rifscale.attribute(corpus, lam=1.0)
    >>> result.fit.converged, result.fit.rel_error_bound <= 1e-10
    (True, True)
    >>> rif = result.rif_scores["test_loss"].compute()    # one value per training row
    >>> top = np.argsort(-np.abs(rif))[:10]               # the ten most influential rows
    >>> small = rifscale.attribute(corpus, lam=10.0, metrics=("test_loss",))
    >>> list(small.rif_scores)
    ['test_loss']
    """
    corpus, config, client = _setup(corpus, config, client, overrides)
    if _layout is None:
        train, layout = prepare_split(corpus.train, client=client, persist=config.persist, device=config.device)
        # the test split too where the rows are held: on a cluster it is read during the fit,
        # not after it, and its two passes (test subset, metrics) read it once
        corpus = replace(corpus, train=train, test=hold_split(corpus.test, client) if layout["persisted"] else corpus.test)
    else:  # laid out and held by a rifscale.Session
        train, layout = corpus.train, dict(_layout)
    timings = {}
    t = time.perf_counter()
    family = check_objective(train, config, test=corpus.test)  # the model family of every stage below
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
                       layout=layout, client=client)


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


def resolve_model(model: str, top_label: int) -> str:
    """The family ``RunConfig.model`` selects when the largest training label is
    ``top_label``: "auto" is "softmax" for more than two classes (labels 0..K−1, K > 2),
    else "binary"; "binary" and "softmax" are themselves."""
    if model == "auto":
        return "softmax" if top_label > 1 else "binary"
    return model


def check_objective(train, config: RunConfig, *, test=None):
    """The model family of ``config.model`` (rifscale.engine.family; softmax with K = the
    largest training label + 1), after refusing labels it cannot take (the family's
    ``check_labels``, on both splits) and objectives without a finite minimum: a single
    class with an unpenalised intercept (or lam = 0), softmax with lam = 0. (Overflowing
    features are caught by the fit's first pass, which reads X anyway.)"""
    parts = [train.y.min(), train.y.max()] + ([test.y.min(), test.y.max()] if test is not None else [])
    lo, hi, *tested = small_compute(*parts)
    lo, hi = int(lo), int(hi)
    model = resolve_model(config.model, hi)
    if model != config.model:
        log.info("training labels %d..%d: the %s model (--model %s)", lo, hi, model, config.model)
    family = family_for(model, max(hi + 1, 2))  # softmax: K from the training labels
    family.check_settings(lam=config.lam, device=config.device)
    counts = None
    if family.counts_labels and lo >= 0:  # rows per class, for the family's check of empty classes
        counts = np.asarray(small_compute(da.bincount(train.y.astype(np.int64), minlength=hi + 1))[0])
    family.check_labels("train", lo, hi, counts)
    if tested:
        family.check_labels("test", int(tested[0]), int(tested[1]))
    if lo == hi and (config.fit_intercept or config.lam == 0):
        why = "the unpenalised intercept" if config.fit_intercept else "lam = 0"
        raise CorpusError(
            f"Every training label is {int(lo)}: with {why} the loss has no finite minimum (the fit "
            "would push the logits to infinity and the scores would mean nothing). Use a training set "
            "with both classes."
        )
    return family
