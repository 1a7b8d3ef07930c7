"""The run directory: its format, writing it (resumably), reading it back, listing runs.

Layout (each stage folder is a Zarr group; ``zarr.open_array("run/scores/leverage")``)::

    run/                    a Zarr group (attrs: rifscale_run = 2) + manifest.json
      manifest.json         config, corpus path and fingerprint, versions, convergence,
                            counts, timings, status
      model/theta (param)  model/cholesky, model/cholesky_inverse (param, param_col)
      model/test_subset (test_point)  model/metric (metric) names
      model/metric_gradients (param, metric)  model/metric_values (metric)
      scores/sample (sample)  the corpus ids of the training rows: the coordinate
      scores/prob|residual|alpha|leverage|self_if|self_rif|flags   (sample)
      scores/if_<metric>  scores/rif_<metric>                      (sample)
      groups/               written by ``rifscale groups``: delta_theta/{if,rif,ns}
                            (set, param); attrs "names" and "estimates" (metric changes)

Every array names its dimensions, so ``xarray.open_zarr("run/scores")`` gives a Dataset
indexed by the sample ids. Runs of format 1 (before this layout) keep ``scores/if/<m>``
and ``scores/rif/<m>``; :meth:`Run.array` reads either.

Two ways to write one, both atomic (:mod:`rifscale.outputs`):

* :func:`write_run` stores an in-memory :class:`~rifscale.pipeline.Attribution`;
* :func:`run_job` is the batch job behind ``rifscale run``. It works in a fixed hidden
  sibling ``.RUN.partial`` and checkpoints the model stage there (θ̂, the factor, the
  metrics), so that the *same command* after a kill resumes from the last finished stage
  and produces bit-for-bit the same run; on a complete run with the same job it does
  nothing; a different job (config, corpus, start) is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import scipy.linalg
import zarr

from ..config import RunConfig
from ..corpus.model import Corpus, open_corpus
from ..engine.factor import Factor
from ..engine.family import family_from_record
from ..engine.kernels import to_numpy
from ..engine.kernels.logistic import SCORE_COLUMNS
from ..engine.model import FittedModel, MetricAtOptimum
from ..errors import ConfigError, CorpusError
from .. import __version__
from ..progress import compute as progress_compute
from ..outputs import atomic_dir, filesystem, is_url, output_path
from ..outputs import local_path


log = logging.getLogger(__name__)


MANIFEST = "manifest.json"


#: Run layout version: 2 = a root Zarr group, named dimensions, flat score names, ids.
FORMAT = 2


#: Rows per chunk of the stored per-sample arrays (2 MiB of float64), at least a block and
#: at most n (Zarr stores whole chunks: a 3 000-row run must not take 2 MiB per column).
OUTPUT_CHUNK_ROWS = 2**18


MODEL_ARRAYS = ("theta", "cholesky", "cholesky_inverse", "test_subset", "metric_gradients", "metric_values")


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


#: Dimension names of the run's arrays (xarray reads them).
DIMENSIONS = {
    "model/theta": ("param",),
    "model/cholesky": ("param", "param_col"),
    "model/cholesky_inverse": ("param", "param_col"),
    "model/test_subset": ("test_point",),
    "model/metric": ("metric",),
    "model/metric_gradients": ("param", "metric"),
    "model/metric_values": ("metric",),
}


def _create(run_dir: Path, name: str, **kwargs) -> zarr.Array:
    """Create array ``name`` ("stage/path") in the stage's own Zarr group under ``run_dir``,
    with its dimension names (per-sample arrays: "sample")."""
    stage, _, path = name.partition("/")
    root = zarr.open_group(str(run_dir), mode="a")
    group = root.require_group(stage)
    dims = DIMENSIONS.get(name, ("sample",) if stage == "scores" else None)
    # float64 scores have full-entropy mantissas: compression would cost time and save nothing
    return group.create_array(path, compressors=None, config={"write_empty_chunks": True}, dimension_names=dims,
                              **kwargs)


def json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_run_json(path: Path, doc: dict) -> None:
    """Write JSON atomically (a reader never sees half a manifest)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=json_default))
    os.replace(tmp, path)


def write_model(run_dir: Path, model: FittedModel) -> None:
    for name, value in {
        "theta": model.theta,
        "cholesky": model.factor.L,
        "cholesky_inverse": model.factor.linv,
        "test_subset": model.test_subset,
        "metric_gradients": model.metric.grads,
        "metric_values": model.metric.values,
    }.items():
        _create(run_dir, f"model/{name}", data=np.asarray(value))
    names = _create(run_dir, "model/metric", shape=(len(model.metrics),), dtype=str)  # the metric coordinate
    names[...] = np.array(model.metrics)


def write_scores(run_dir: Path, corpus: Corpus, model: FittedModel, scores, *, progress: bool) -> dict:
    """One pass: store every score column under ``run_dir/scores``; returns the counts.

    When the row blocks are regular (all of one size but a shorter last one), each score
    column is chunked like the blocks and one task per block computes the block's scores
    and writes all its columns, where the block is (a worker of the cluster holding it):
    nothing moves between workers and no per-column task is made. Otherwise the columns
    are rechunked to regular chunks and stored column by column."""
    blocks = corpus.train.X.chunks[0]
    if len(blocks) > 1 and all(c == blocks[0] for c in blocks[:-1]) and blocks[-1] <= blocks[0]:
        return _write_scores_by_block(run_dir, corpus, model, scores, progress=progress)
    sources, targets = [], []
    # few, large chunks: each Zarr chunk write has a fixed cost, the columns are small
    rows = min(max(corpus.train.X.chunks[0][0], OUTPUT_CHUNK_ROWS), corpus.n)
    columns = {"scores/sample": corpus.train.ids, **scores.named()}  # the ids: the sample coordinate
    for name, arr in columns.items():
        arr = _regular(arr, rows).map_blocks(to_numpy, dtype=arr.dtype, meta=np.empty((0,), dtype=arr.dtype))
        targets.append(_create(run_dir, name, shape=arr.shape, chunks=(rows,), dtype=arr.dtype))
        sources.append(arr)
    stored = da.store(sources, targets, lock=False, compute=False)
    zarr.open_group(str(run_dir), mode="a").attrs.update({"rifscale_run": FORMAT})  # the run root is a group
    lev = scores.leverage
    _, n_flagged, max_lev, mean_lev = progress_compute(stored, scores.flags.sum(), lev.max(), lev.mean(),
                                                       label="scores", show=progress or None)
    if n_flagged:
        log.warning("%d sample(s) have 1 - h < %g: their RIF scores are NaN (see scores/flags)",
                    n_flagged, model.leverage_threshold)
    return {
        "flagged_low_margin": int(n_flagged),
        "test_subset": int(model.test_subset.size),
        "max_leverage": float(max_lev),
        "mean_leverage": float(mean_lev),
    }


def _write_scores_by_block(run_dir: Path, corpus: Corpus, model: FittedModel, scores, *, progress: bool) -> dict:
    """:func:`write_scores` with chunks equal to the row blocks: one task per block."""
    import dask

    rows = corpus.train.X.chunks[0][0]
    columns = [("scores/sample", None, str(corpus.train.ids.dtype)), *scores.layout()]
    targets = {name: _create(run_dir, name, shape=(corpus.n,), chunks=(rows,), dtype=dtype)
               for name, _, dtype in columns}
    zarr.open_group(str(run_dir), mode="a").attrs.update({"rifscale_run": FORMAT})  # the run root is a group
    write = dask.delayed(_store_score_block, pure=False)
    lev, flag = scores.columns.index("leverage"), scores.columns.index("flag")
    tasks = [write(table, ids, start, targets=targets, columns=columns, lev=lev, flag=flag)
             for start, table, ids in zip(range(0, corpus.n, rows), scores.table.to_delayed().ravel(),
                                          corpus.train.ids.to_delayed().ravel())]
    (stats,) = progress_compute(tasks, label="scores", show=progress or None)
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, 3)
    n_flagged = int(stats[:, 0].sum())
    if n_flagged:
        log.warning("%d sample(s) have 1 - h < %g: their RIF scores are NaN (see scores/flags)",
                    n_flagged, model.leverage_threshold)
    return {
        "flagged_low_margin": n_flagged,
        "test_subset": int(model.test_subset.size),
        "max_leverage": float(stats[:, 1].max()),
        "mean_leverage": float(stats[:, 2].sum() / corpus.n),
    }


def _store_score_block(table, ids, start: int, *, targets: dict, columns, lev: int, flag: int) -> np.ndarray:
    """Write one block's rows of every score column (its chunk of each array); returns
    ``[flagged rows, max leverage, sum of leverages]``."""
    table = to_numpy(table)
    stop = start + table.shape[0]
    for name, col, dtype in columns:
        values = to_numpy(ids) if col is None else table[:, col]
        targets[name][start:stop] = (values > 0.5) if dtype == "bool" else values.astype(dtype, copy=False)
    return np.array([np.count_nonzero(table[:, flag] > 0.5), table[:, lev].max(initial=-np.inf), table[:, lev].sum()])


def build_manifest(corpus: Corpus, config: RunConfig, model: FittedModel, *, fit: dict, layout: dict,
              timings: dict, status: str, job: dict | None = None) -> dict:
    record = model.family.record()  # the model family and its K (binary: nothing)
    return {
        "rifscale_run": FORMAT,
        "status": status,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "corpus": {"path": corpus.path, "fingerprint": corpus.fingerprint},
        "config": config.to_dict(),
        "job": job,
        "n": corpus.n,
        "d": corpus.d,
        "p": model.p,
        "metrics": list(model.metrics),
        "fit": fit,
        "factor": {"backend": model.factor.backend, "worker": model.factor.worker},
        "layout": dict(layout),
        "timings": dict(timings),
        "versions": _versions(),
        **({"model": record} if record else {}),
    }


def write_run(result, out, *, overwrite: bool = False, progress: bool = False) -> dict:
    """Compute the scores of an :class:`rifscale.Attribution` (one pass) and write
    the complete run directory ``out`` (atomically: into a hidden sibling, moved into
    place when complete).

    The layout (version 2: ``model/``, ``scores/``, ``manifest.json``) is in the user
    guide's outputs page and docs/design.md §6. ``Attribution.to_zarr`` calls this.

    Parameters
    ----------
    result : Attribution
        A result of :func:`rifscale.attribute`.
    out : str or os.PathLike
        The run directory to create.
    overwrite : bool, default False
        Replace ``out`` if it is a run rifscale made.
    progress : bool, default False
        Show a progress bar of the scores pass (in Jupyter, or on a terminal) even
        without :func:`rifscale.show_progress`.

    Returns
    -------
    dict
        The manifest written: config, corpus path and fingerprint, convergence record,
        counts, timings, versions, status.

    Raises
    ------
    OutputExistsError
        ``out`` exists and ``overwrite`` was not given.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_data_path
    >>> data = np.load(demo_data_path())  # the embedded Fashion-MNIST pair
    >>> corpus = rifscale.ingest("example-corpus.zarr", train_X=data["train_X"], train_y=data["train_y"],
    ...                          test_X=data["test_X"], test_y=data["test_y"], overwrite=True)
    >>> manifest = rifscale.write_run(rifscale.attribute(corpus, lam=1.0), "example-run", overwrite=True)
    >>> manifest["status"], manifest["config"]["lam"], manifest["counts"]["flagged_low_margin"]
    ('complete', 1.0, 0)
    """
    corpus, model = result.corpus, result.model
    with atomic_dir(output_path(out, "run"), overwrite=overwrite, kind="run", inputs=[corpus.path]) as tmp:
        write_model(tmp, model)
        t = time.perf_counter()
        counts = write_scores(tmp, corpus, model, result.scores, progress=progress)
        result.timings["scores"] = time.perf_counter() - t
        manifest = build_manifest(corpus, result.config, model, fit=result.fit.record(), layout=result.layout,
                             timings=result.timings, status="complete")
        manifest["counts"] = counts
        write_run_json(tmp / MANIFEST, manifest)
    return manifest


def run_location(path):
    """A run (or a directory of runs) as a path object: a ``pathlib.Path`` for local paths
    and ``file://`` URLs, a ``UPath`` over fsspec for other URLs (read-only use)."""
    from upath import UPath

    if isinstance(path, UPath):
        return path
    if is_url(path):
        filesystem(path)  # a missing fsspec backend: one error naming the package
    return UPath(local_path(path))


def read_manifest(path) -> dict:
    mpath = run_location(path) / MANIFEST
    if not mpath.is_file():
        raise ConfigError(f"{str(path)!r} is not a rifscale run (no {MANIFEST}); create one with `rifscale run`.")
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError as exc:
        raise ConfigError(f"{str(mpath)!r} is not valid JSON ({exc}); the run is damaged: rerun it.") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"{str(mpath)!r} is not a JSON object (it holds a {type(manifest).__name__}); the run is "
                          "damaged: rerun it.")
    return manifest


def manifest_or_none(path: Path) -> dict | None:
    """The manifest at ``path`` if it is a readable JSON object, else None."""
    try:
        doc = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def checkpoint_of(out) -> Path:
    """Where ``rifscale run`` checkpoints the stages of ``out``: ``.OUT.partial`` beside it."""
    out = output_path(out, "run")
    return out.with_name(f".{out.name}.partial")


def read_theta(path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(run_location(path) / "model" / "theta"), mode="r")[...])


@dataclass(frozen=True)
class Run:
    """A finished run read back from disk."""

    path: Path
    manifest: dict
    corpus: Corpus
    model: FittedModel

    def array(self, name: str) -> zarr.Array:
        """A stored array by its run name, e.g. ``"scores/rif_test_loss"`` (format-1
        runs: ``"scores/rif/test_loss"``; either spelling reads either format)."""
        path = self.path / name
        if not path.exists():
            stage, _, rest = name.partition("/")
            for old, new in (("if/", "if_"), ("rif/", "rif_"), ("if_", "if/"), ("rif_", "rif/")):
                if rest.startswith(old) and (self.path / stage / (new + rest[len(old):])).exists():
                    path = self.path / stage / (new + rest[len(old):])
                    break
        return zarr.open_array(str(path), mode="r")

    @property
    def ids(self) -> np.ndarray:
        """The corpus ids of the training rows, in row order."""
        if (self.path / "scores" / "sample").exists():
            return np.asarray(self.array("scores/sample")[...])
        return np.asarray(self.corpus.train.ids.compute())

    def to_dataframe(self, columns=None):
        """The per-sample scores as a pandas DataFrame indexed by the corpus ids (``id``):
        prob, residual, alpha, leverage, self_if, self_rif, flags, if_<metric>,
        rif_<metric> (or the ``columns`` named). Reads them into memory: about
        (7 + 2M) x 8 bytes per training row."""
        cols = columns or score_columns(self.model.metrics, self.model.family.score_columns)
        return _frame(self.ids, {c: self.array(f"scores/{c}") for c in cols})

    def groups_dataframe(self):
        """The stored group estimates (``rifscale groups``) as a long DataFrame: set x
        method x metric x form (see :func:`rifscale.estimates.groups.estimates_frame`)."""
        from ..estimates.groups import estimates_frame

        if not (self.path / "groups").is_dir():
            raise ConfigError(f"The run at {str(self.path)!r} has no groups yet; run `rifscale groups` first.")
        return estimates_frame(zarr.open_group(str(self.path / "groups"), mode="r").attrs["estimates"])

    def _repr_html_(self) -> str:
        from ..engine.fit import describe

        m = self.manifest
        fit, counts = m.get("fit", {}), m.get("counts", {})
        return summary_html(f"rifscale run {self.path.name}", {
            "path": str(self.path), "status": m.get("status"), "created": m.get("created"),
            "n × d": f"{m.get('n')} × {m.get('d')}", "λ": m["config"]["lam"],
            "intercept": m["config"]["fit_intercept"], "metrics": ", ".join(self.model.metrics),
            "fit": describe(fit),
            "leverage": f"mean {counts.get('mean_leverage', float('nan')):.3g}, max {counts.get('max_leverage', float('nan')):.3g}",
            "flagged": counts.get("flagged_low_margin"),
            "corpus": f"{m['corpus']['path']} ({m['corpus']['fingerprint']})",
        })

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Run({str(self.path)!r}: n = {m.get('n')}, d = {m.get('d')}, lam = {m['config']['lam']}, "
                f"metrics = {list(self.model.metrics)}, status = {m.get('status')!r})")


def summary_html(title: str, rows: dict) -> str:
    """A small two-column HTML table (notebook reprs)."""
    import html

    body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                   f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<div><strong>{html.escape(title)}</strong><table>{body}</table></div>"


def score_columns(metrics, columns=SCORE_COLUMNS) -> list[str]:
    """The per-sample columns of a run, in order (``columns``: the model family's ``score_columns``)."""
    base = ["flags" if c == "flag" else c for c in columns]
    return [*base, *(f"if_{m}" for m in metrics), *(f"rif_{m}" for m in metrics)]


def _frame(ids, columns: dict):
    import pandas as pd

    index = pd.Index(np.asarray(ids), name="id")
    return pd.DataFrame({name: np.asarray(col[...]) for name, col in columns.items()}, index=index)


def read_model(path: Path, cfg: dict, manifest: dict | None = None) -> FittedModel:
    group = zarr.open_group(str(run_location(path) / "model"), mode="r")

    def read(name):
        return np.asarray(group[name][...])

    L = read("cholesky")
    if "cholesky_inverse" in group:
        linv = read("cholesky_inverse")
    else:  # runs written before the inverse was stored
        linv = scipy.linalg.solve_triangular(L, np.eye(L.shape[0]), lower=True, check_finite=False)
    factor = (manifest or {}).get("factor", {})
    return FittedModel(
        theta=read("theta"),
        lam=cfg["lam"],
        fit_intercept=cfg["fit_intercept"],
        factor=Factor(L=L, linv=linv, backend=factor.get("backend", "numpy"), worker=factor.get("worker")),
        test_subset=read("test_subset"),
        metric=MetricAtOptimum(names=tuple(cfg["metrics"]), values=read("metric_values"),
                               grads=read("metric_gradients")),
        leverage_threshold=cfg["leverage_threshold"],
        family=family_from_record((manifest or {}).get("model")),
    )


def open_run(path, *, corpus: Corpus | str | os.PathLike | None = None) -> Run:
    """Open a complete run; the corpus is re-opened (from the manifest unless given, as a
    path or a :class:`rifscale.Corpus`) and must still have the fingerprint the run was
    made from.

    Parameters
    ----------
    path : str or os.PathLike
        A run directory made by ``rifscale run`` or :func:`rifscale.write_run`; may be an
        fsspec URL (``s3://bucket/runs/today``).
    corpus : str, os.PathLike or Corpus, optional
        The corpus, if it moved since the run (default: the path in the manifest).

    Returns
    -------
    Run
        ``.manifest`` (dict), ``.corpus``, ``.model`` (θ̂, the factor, the test subset),
        ``.ids``, ``.array(name)`` (a stored Zarr array, e.g. ``"scores/rif_test_loss"``),
        ``.to_dataframe()`` (the scores, indexed by id) and ``.groups_dataframe()``. It
        can be passed wherever a result is: :func:`rifscale.group_effects`,
        :func:`rifscale.retrain`.

    Raises
    ------
    ConfigError
        The run is not complete.
    CorpusError
        The corpus is gone or is not the one the run was made from.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_data_path
    >>> data = np.load(demo_data_path())  # the embedded Fashion-MNIST pair
    >>> corpus = rifscale.ingest("example-corpus.zarr", train_X=data["train_X"], train_y=data["train_y"],
    ...                          test_X=data["test_X"], test_y=data["test_y"], overwrite=True)
    >>> _ = rifscale.attribute(corpus, lam=1.0).to_zarr("example-run", overwrite=True)
    >>> run = rifscale.open_run("example-run")
    >>> run.manifest["n"], run.to_dataframe().index.name
    (1000, 'id')
    >>> est = rifscale.group_effects(run, {"first10": range(10)})   # a stored run, as a fresh result
    """
    path = run_location(path)
    manifest = read_manifest(path)
    if manifest.get("status") != "complete":
        raise ConfigError(f"The run at {str(path)!r} is not complete (status {manifest.get('status')!r}); rerun it.")
    corpus_path = corpus if corpus is not None else manifest["corpus"]["path"]
    if corpus_path is None:
        raise ConfigError(
            f"The run at {str(path)!r} was made from in-memory arrays, not a corpus on disk; "
            "pass the same data again: open_run(path, corpus=Corpus.from_arrays(...))."
        )
    if corpus is None and not is_url(corpus_path) and not os.path.exists(corpus_path):
        raise CorpusError(
            f"The corpus the run at {str(path)!r} was made from, {corpus_path!r}, is not there any more (moved or "
            "deleted); pass --corpus with its new path (Python: open_run(path, corpus=...))."
        )
    c = corpus_path if isinstance(corpus_path, Corpus) else open_corpus(corpus_path)
    if c.fingerprint != manifest["corpus"]["fingerprint"]:
        raise CorpusError(
            f"The corpus at {str(corpus_path)!r} is not the one this run was made from (fingerprint "
            f"{c.fingerprint} != {manifest['corpus']['fingerprint']}); rerun `rifscale run` on it."
        )
    cfg = dict(manifest["config"], metrics=manifest["metrics"])
    return Run(path=path, manifest=manifest, corpus=c, model=read_model(path, cfg, manifest))
