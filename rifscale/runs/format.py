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

import contextlib
import functools
import json
import logging
import os
import platform
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import scipy.linalg
import zarr

from ..config import RunConfig
from ..corpus.model import Corpus, stored_id_dtype
from ..engine._blocks import block_holders
from ..engine.kernels import to_numpy
from ..engine.model import FittedModel
from .. import __version__
from ..progress import compute as progress_compute
from ..outputs import atomic_dir, output_path
from ..cluster import entry_point, using_client


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
        dtype = stored_id_dtype(arr.dtype) if name == "scores/sample" else arr.dtype
        targets.append(_create(run_dir, name, shape=arr.shape, chunks=(rows,), dtype=dtype))
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
    columns = [("scores/sample", None, stored_id_dtype(corpus.train.ids.dtype)), *scores.layout()]
    targets = {name: _create(run_dir, name, shape=(corpus.n,), chunks=(rows,), dtype=dtype)
               for name, _, dtype in columns}
    zarr.open_group(str(run_dir), mode="a").attrs.update({"rifscale_run": FORMAT})  # the run root is a group
    lev, flag = scores.columns.index("leverage"), scores.columns.index("flag")
    # One task per block computes its scores and stores them, on the workers that hold the
    # block's rows (on a cluster): a task taking the broadcast factor may run on any worker,
    # and dask's scheduler moved some blocks (measured: the first of each worker's share,
    # 0.14-0.21 s of a 0.9 s pass at 2e5 x 384). What every task shares is bound once: as call
    # arguments, dask would search each zarr array's fields for collections in every call
    # (0.25 s of the driver's time for 46 blocks and 19 columns, before the first task ran).
    write = dask.delayed(functools.partial(_score_and_store_block, kernel=scores.kernel, targets=targets,
                                           columns=columns, lev=lev, flag=flag), pure=False)
    holders = block_holders(*scores.inputs)
    blocks = zip(*(a.to_delayed().ravel() for a in (*scores.inputs, corpus.train.ids)))
    tasks = []
    for i, (start, (X, y, ids)) in enumerate(zip(range(0, corpus.n, rows), blocks)):
        with dask.annotate(workers=holders[i], allow_other_workers=True) if holders else contextlib.nullcontext():
            tasks.append(write(X, y, ids, start, **scores.kwargs))
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


def _score_and_store_block(X, y, ids, start: int, *, kernel, targets: dict, columns, lev: int, flag: int,
                           **kwargs) -> np.ndarray:
    """:func:`_store_score_block` of ``kernel(X, y, **kwargs)``, the block's score table."""
    return _store_score_block(kernel(X, y, **kwargs), ids, start, targets=targets, columns=columns, lev=lev, flag=flag)


def _store_score_block(table, ids, start: int, *, targets: dict, columns, lev: int, flag: int) -> np.ndarray:
    """Write one block's rows of every score column (its chunk of each array); returns
    ``[flagged rows, max leverage, sum of leverages]``."""
    table = to_numpy(table)
    stop = start + table.shape[0]
    for name, col, dtype in columns:
        if col is None:  # the ids, as the corpus holds them
            targets[name][start:stop] = to_numpy(ids)
            continue
        values = table[:, col]
        targets[name][start:stop] = (values > 0.5) if dtype == "bool" else values.astype(dtype, copy=False)
    return np.array([np.count_nonzero(table[:, flag] > 0.5), table[:, lev].max(initial=-np.inf), table[:, lev].sum()])


def build_manifest(corpus: Corpus, config: RunConfig, model: FittedModel, *, fit: dict, layout: dict,
              timings: dict, status: str, job: dict | None = None) -> dict:
    record = model.family.record()  # the model family and its K (binary: nothing)
    return {
        "rifscale_run": FORMAT,
        "status": status,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "corpus": {"path": corpus.path, "fingerprint": corpus.fingerprint,
                   **({"classes": corpus.classes} if corpus.classes is not None else {})},
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


@entry_point
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
    with using_client(result.client), \
            atomic_dir(output_path(out, "run"), overwrite=overwrite, kind="run", inputs=[corpus.path]) as tmp:
        write_model(tmp, model)
        t = time.perf_counter()
        counts = write_scores(tmp, corpus, model, result.scores, progress=progress)
        result.timings["scores"] = time.perf_counter() - t
        manifest = build_manifest(corpus, result.config, model, fit=result.fit.record(), layout=result.layout,
                             timings=result.timings, status="complete")
        manifest["counts"] = counts
        write_run_json(tmp / MANIFEST, manifest)
    return manifest
