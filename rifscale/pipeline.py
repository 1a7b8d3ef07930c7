"""Stages of an attribution run and the run directory (DESIGN.md §2–3).

``attribute`` fits, factors, picks the test subset, computes the metric gradients and
returns an :class:`Attribution` whose per-sample scores are still lazy. ``write_run``
stores everything into a run directory; ``open_run`` reads one back for later stages
(group estimates).

Run directory (each stage folder is a Zarr group; ``zarr.open_array("run/scores/leverage")``)::

    run/
      manifest.json         config, corpus path and fingerprint, versions, convergence,
                            counts, timings, status
      model/theta (p,)  model/cholesky (p, p)  model/test_subset (|S|,)
      model/metric_gradients (p, M)  model/metric_values (M,)
      scores/prob|residual|alpha|leverage|self_if|self_rif|flags   (n,)
      scores/if/<metric>  scores/rif/<metric>                      (n,)
      groups/               written by ``rifscale groups``: delta_theta/{if,rif,ns}
                            (sets, p); attrs "names" and "estimates" (metric changes)

A run is written to a hidden sibling directory and moved into place only when complete,
so a crash never leaves a partial run under the requested name.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import scipy.linalg
import zarr

from . import __version__
from .cluster import current_client
from .config import RunConfig
from .errors import ConfigError, CorpusError
from .factor import Factor, factor_hessian
from .fit import FitResult, fit
from .io import Corpus, find_nonfinite, open_corpus
from .kernels import to_numpy
from .metrics import MetricAtOptimum, metric_at, select_test_subset
from .model import FittedModel
from .outputs import atomic_dir
from .partition import check_device, prepare_split
from .scores import Scores, score_table

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: Rows per chunk of the stored per-sample arrays (2 MiB of float64), at least a block.
OUTPUT_CHUNK_ROWS = 2**18


@dataclass(frozen=True)
class Attribution:
    """Result of :func:`attribute`: θ̂, its convergence record, and lazy scores."""

    corpus: Corpus
    config: RunConfig
    fit: FitResult
    model: FittedModel
    scores: Scores
    timings: dict = field(default_factory=dict)
    layout: dict = field(default_factory=dict)  # blocks, persisted, device (rifscale.partition)

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

    def to_zarr(self, out, *, overwrite: bool = False, progress: bool = False) -> dict:
        return write_run(self, out, overwrite=overwrite, progress=progress)


def attribute(corpus: Corpus | str | os.PathLike, config: RunConfig | None = None, *, client=None, **overrides) -> Attribution:
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
    """
    if not isinstance(corpus, Corpus):
        corpus = open_corpus(corpus)
    config = (config or RunConfig()).replace(**overrides) if overrides else (config or RunConfig())
    if corpus.test is None:
        raise CorpusError(
            "The corpus has no test split, which the test metrics need. Ingest one with "
            "`rifscale ingest ... --test-X Xt.npy --test-y yt.npy`."
        )
    client = client if client is not None else current_client()
    check_device(config.device, client)
    timings = {}
    t = time.perf_counter()
    train, layout = prepare_split(corpus.train, client=client, persist=config.persist, device=config.device)
    corpus = replace(corpus, train=train)
    fitted = fit(
        train.X,
        train.y,
        lam=config.lam,
        fit_intercept=config.fit_intercept,
        tol=config.tol,
        max_iter=config.max_iter,
    )
    timings["fit"] = time.perf_counter() - t  # includes the first read (and persist) of the rows
    log.info("fit converged in %d iterations (%d passes), rel grad %.2e", fitted.n_iter, fitted.n_passes, fitted.rel_grad_norm)
    t = time.perf_counter()
    factor = factor_hessian(fitted.hessian, client=client)
    timings["factor"] = time.perf_counter() - t
    t = time.perf_counter()
    subset = select_test_subset(corpus.test, fitted.theta, config)
    metric = metric_at(corpus.test, subset, fitted.theta, names=config.metrics, fit_intercept=config.fit_intercept)
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
    )
    scores = score_table(corpus.train, model, client=client)
    return Attribution(corpus=corpus, config=config, fit=fitted, model=model, scores=scores, timings=timings,
                       layout=layout)


def _versions() -> dict:
    from importlib.metadata import version

    return {
        "rifscale": __version__,
        "dask": dask.__version__,
        "distributed": version("distributed"),
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


def _regular(a: da.Array, rows: int) -> da.Array:
    """``a`` in row chunks of ``rows`` (Zarr needs regular chunks; score blocks may not be)."""
    if all(c == rows for c in a.chunks[0][:-1]) and a.chunks[0][-1] <= rows:
        return a
    return a.rechunk({0: rows}, method="tasks")


def compute(*collections, progress: bool = False):
    """``dask.compute`` with a progress bar on stdout when asked: dask's ProgressBar on the
    local schedulers; with an active client, a bar over the collections' persisted
    pieces (distributed's own text bar leaves an error trace when the cluster closes)."""
    if not progress:
        return dask.compute(*collections)
    client = current_client()
    if client is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return dask.compute(*collections)
    from distributed import as_completed, futures_of

    persisted = client.persist(list(collections))
    futures = futures_of(persisted)
    for done, _ in enumerate(as_completed(futures), 1):
        filled = 40 * done // len(futures)
        print(f"\r[{'#' * filled}{' ' * (40 - filled)}] | {100 * done // len(futures):3d}% Completed", end="", flush=True)
    print(flush=True)
    return dask.compute(*persisted)


def write_run(result: Attribution, out, *, overwrite: bool = False, progress: bool = False) -> dict:
    """Compute the scores (one pass) and write the complete run directory.

    ``progress`` shows a progress bar of the scores pass on stdout."""
    with atomic_dir(Path(out), overwrite=overwrite, kind="run") as tmp:
        t = time.perf_counter()
        model = result.model
        for name, value in {
            "model/theta": model.theta,
            "model/cholesky": model.factor.L,
            "model/test_subset": model.test_subset,
            "model/metric_gradients": model.metric.grads,
            "model/metric_values": model.metric.values,
        }.items():
            _create(tmp, name, data=np.asarray(value))
        named = result.scores.named()
        sources, targets = [], []
        # few, large chunks: each Zarr chunk write has a fixed cost, the columns are small
        rows = max(result.corpus.train.X.chunks[0][0], OUTPUT_CHUNK_ROWS)
        for name, arr in named.items():
            arr = _regular(arr, rows).map_blocks(to_numpy, dtype=arr.dtype, meta=np.empty((0,), dtype=arr.dtype))
            targets.append(_create(tmp, name, shape=arr.shape, chunks=(rows,), dtype=arr.dtype))
            sources.append(arr)
        stored = da.store(sources, targets, lock=False, compute=False)
        lev = result.scores.leverage
        _, n_flagged, max_lev, mean_lev = compute(
            stored, result.scores.flags.sum(), lev.max(), lev.mean(), progress=progress
        )
        result.timings["scores"] = time.perf_counter() - t
        manifest = {
            "rifscale_run": 1,
            "status": "complete",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "corpus": {"path": result.corpus.path, "fingerprint": result.corpus.fingerprint},
            "config": result.config.to_dict(),
            "n": result.corpus.n,
            "d": result.corpus.d,
            "p": model.p,
            "metrics": list(model.metrics),
            "fit": result.fit.record(),
            "factor": {"backend": model.factor.backend, "worker": model.factor.worker},
            "layout": dict(result.layout),
            "counts": {
                "flagged_low_margin": int(n_flagged),
                "test_subset": int(model.test_subset.size),
                "max_leverage": float(max_lev),
                "mean_leverage": float(mean_lev),
            },
            "timings": dict(result.timings),
            "versions": _versions(),
        }
        if n_flagged:
            log.warning(
                "%d sample(s) have 1 - h < %g: their RIF scores are NaN (see scores/flags)",
                n_flagged,
                model.leverage_threshold,
            )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default))
    return manifest


def _create(run_dir: Path, name: str, **kwargs) -> zarr.Array:
    """Create array ``name`` ("stage/path") in the stage's own Zarr group under ``run_dir``."""
    stage, _, path = name.partition("/")
    # float64 scores have full-entropy mantissas: compression would cost time and save nothing
    return zarr.open_group(str(run_dir / stage), mode="a").create_array(path, compressors=None, **kwargs)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


@dataclass(frozen=True)
class Run:
    """A finished run read back from disk."""

    path: Path
    manifest: dict
    corpus: Corpus
    model: FittedModel

    def array(self, name: str) -> zarr.Array:
        """A stored array by its run name, e.g. ``"scores/rif/test_loss"``."""
        return zarr.open_array(str(self.path / name), mode="r")


def open_run(path, *, corpus: Corpus | str | os.PathLike | None = None) -> Run:
    """Open a complete run; the corpus is re-opened (from the manifest unless given, as a
    path or a :class:`Corpus`) and must still have the fingerprint the run was made from."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ConfigError(f"{str(path)!r} is not a rifscale run (no {MANIFEST}); create one with `rifscale run`.")
    manifest = json.loads(mpath.read_text())
    if manifest.get("status") != "complete":
        raise ConfigError(f"The run at {str(path)!r} is not complete (status {manifest.get('status')!r}); rerun it.")
    corpus_path = corpus if corpus is not None else manifest["corpus"]["path"]
    if corpus_path is None:
        raise ConfigError(
            f"The run at {str(path)!r} was made from in-memory arrays, not a corpus on disk; "
            "pass the same data again: open_run(path, corpus=Corpus.from_arrays(...))."
        )
    c = corpus_path if isinstance(corpus_path, Corpus) else open_corpus(corpus_path)
    if c.fingerprint != manifest["corpus"]["fingerprint"]:
        raise CorpusError(
            f"The corpus at {str(corpus_path)!r} is not the one this run was made from (fingerprint "
            f"{c.fingerprint} != {manifest['corpus']['fingerprint']}); rerun `rifscale run` on it."
        )
    model_group = zarr.open_group(str(path / "model"), mode="r")

    def read(name):
        return np.asarray(model_group[name][...])

    L = read("cholesky")
    linv = scipy.linalg.solve_triangular(L, np.eye(L.shape[0]), lower=True)
    cfg = manifest["config"]
    model = FittedModel(
        theta=(read("theta")),
        lam=cfg["lam"],
        fit_intercept=cfg["fit_intercept"],
        factor=Factor(L=L, linv=linv, backend=manifest["factor"]["backend"], worker=manifest["factor"]["worker"]),
        test_subset=(read("test_subset")),
        metric=MetricAtOptimum(
            names=tuple(manifest["metrics"]),
            values=(read("metric_values")),
            grads=(read("metric_gradients")),
        ),
        leverage_threshold=cfg["leverage_threshold"],
    )
    return Run(path=path, manifest=manifest, corpus=c, model=model)
