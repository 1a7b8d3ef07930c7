"""Ingest planning and writing: sources to a chunked, digested Zarr corpus."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import dask.threaded
import numpy as np
import zarr

from ..cluster import current_client
from .model import (Corpus, FORMAT_VERSION, Split, as_ids, check_unique_ids, listing_signature, open_corpus,
                    stored_id_dtype)
from ..errors import CorpusError
from .. import progress
from .sources.arrays import check_real, checked_x, checked_y, source_of, source_file, source_x_dtype
from ..outputs import atomic_dir, claim, is_url, local_path, output_path
from .verify import DIGESTS, plan_digests, row_numbers


log = logging.getLogger(__name__)

#: Compressors ``ingest`` can write X with. "none" is the default: on float32 embeddings
#: zstd saves under 10 % of the bytes but makes every read about 3x slower
#: (benchmarks/README.md, "Zarr compressor").
COMPRESSORS = ("none", "zstd")


#: Default stored chunk size: about this many bytes of X per chunk, rows split evenly.
CHUNK_BYTES = 32 * 2**20


def default_chunk_rows(n: int, row_bytes: int) -> int:
    """Rows per stored chunk: about :data:`CHUNK_BYTES` of X each, n split evenly (so the
    last chunk is not a sliver and no chunk is padded much)."""
    k = max(1, -(-n * row_bytes // CHUNK_BYTES))
    return max(1, -(-n // k))


@dataclass(frozen=True)
class _PlannedSplit(Split):
    """A split about to be ingested: checked, cast, row-chunked, not read yet."""

    name: str = "train"

    def digests(self) -> da.Array:
        """(chunks, 32) sha256 digests of each row chunk's X, y and ids bytes."""
        return plan_digests(self)


def _plan_split(name: str, X, y, ids, rows: int, dtype) -> _PlannedSplit:
    """Sources → validated, cast, row-chunked Dask arrays (nothing is read yet)."""
    sx, sy = source_of(f"{name}/X", X, rows), source_of(f"{name}/y", y, rows)
    out_dtype = source_x_dtype(f"{name}/X", sx, dtype)
    n, d = sx.shape
    if sy.shape != (n,):
        raise CorpusError(f"{name}/y has shape {sy.shape}; expected ({n},) to match {name}/X with n = {n} rows.")
    check_real(f"{name}/y", sy)
    if ids is not None:
        sid = source_of(f"{name}/ids", ids, rows)
        if sid.shape != (n,):
            raise CorpusError(f"{name}/ids has shape {sid.shape}; expected ({n},).")
        sid = as_ids(f"{name}/ids", sid)  # int64, or text
        check_unique_ids(f"{name}/ids", sid)
    else:
        # row numbers computed from each X chunk (not a free-standing da.arange): dask then
        # schedules each chunk's write and hash together instead of piling up checked chunks
        sid = sx.map_blocks(row_numbers, drop_axis=1, dtype=np.int64, meta=np.empty((0,), dtype=np.int64))
    cx = sx.map_blocks(checked_x, label=f"{name}/X", out_dtype=out_dtype, rows=rows, dtype=out_dtype,
                       meta=np.empty((0, 0), dtype=out_dtype))
    cy = sy.map_blocks(checked_y, label=f"{name}/y", dtype=np.int8, meta=np.empty((0,), dtype=np.int8))
    return _PlannedSplit(name=name, X=cx, y=cy, ids=sid)


def _auto_rows(train_X, dtype) -> int:
    X = source_of("train/X", train_X, 2**62, check=False)  # metadata only
    out = source_x_dtype("train/X", X, dtype)
    return default_chunk_rows(X.shape[0], X.shape[1] * out.itemsize)


def _targets(group, split: _PlannedSplit, rows: int, compressor: str) -> list:
    comp = None if compressor == "none" else "auto"
    n, d = split.X.shape
    rows = min(rows, n)
    # every chunk is written, even an all-zero one (zarr skips those by default), so that a
    # missing chunk file always means damage (check_chunks_present)
    kw = dict(compressors=comp, config={"write_empty_chunks": True})
    return [
        group.create_array(f"{split.name}/X", shape=(n, d), chunks=(rows, d), dtype=split.X.dtype, **kw),
        group.create_array(f"{split.name}/y", shape=(n,), chunks=(rows,), dtype="int8", **kw),
        group.create_array(f"{split.name}/ids", shape=(n,), chunks=(rows,), dtype=stored_id_dtype(split.ids.dtype),
                           **kw),
    ]


def _hold_out(X, y, ids, fraction: float, seed: int, rows: int):
    """Seeded train/test split of one source: (train parts, test parts, record)."""
    n = source_of("train/X", X, 2**62, check=False).shape[0]  # metadata only
    k = int(round(fraction * n))
    if not 1 <= k < n:
        raise CorpusError(f"test_fraction = {fraction} of n = {n} rows leaves {k} test row(s); choose a fraction "
                          "that keeps at least one row in each split.")
    test = np.sort(np.random.default_rng(seed).choice(n, k, replace=False))
    record = {"fraction": fraction, "seed": seed, "n_test": k,
              "method": "numpy.random.default_rng(seed).choice(n, round(fraction * n), replace=False)"}
    return (*_select_rows(X, y, ids, test, rows), record)


def _split_by_values(X, y, ids, split, rows: int):
    """The train/test split a per-row "train"/"test" column names: (train parts, test
    parts, record). Reads the column (one value per row); other values are refused."""
    values = np.asarray(_compute_local(source_of("split", split, rows), label="ingest: split column")[0]).astype(str)
    bad = sorted(set(np.unique(values).tolist()) - {"train", "test"})
    if bad:
        raise CorpusError(f"The split column holds {bad[:5]}; rifscale reads 'train' and 'test'. Map the other "
                          "values (e.g. 'validation') before ingesting, or leave the split column out.")
    test = np.flatnonzero(values == "test")
    if not 1 <= test.size < values.size:
        raise CorpusError(f"The split column names {test.size} test row(s) of {values.size}; both splits need "
                          "at least one row (leave the split column out and use test_fraction to draw one).")
    record = {"from": "split column", "n_test": int(test.size)}
    return (*_select_rows(X, y, ids, test, rows), record)


def _select_rows(X, y, ids, test: np.ndarray, rows: int):
    """(train parts, test parts) of one source, ``test`` its sorted test row numbers.
    Rows are selected lazily, so nothing is read yet; ids default to the source's row
    numbers, so both splits keep the rows' identity."""
    sx, sy = source_of("train/X", X, rows), source_of("train/y", y, rows)
    n = sx.shape[0]
    sid = source_of("train/ids", ids, rows) if ids is not None else da.arange(n, chunks=sx.chunks[0], dtype=np.int64)
    train = np.setdiff1d(np.arange(n), test, assume_unique=True)
    return [tuple(a[idx] for a in (sx, sy, sid)) for idx in (train, test)]


def _compute_local(*collections, label: str = "ingest"):
    """``dask.compute`` on local threads of our own pool, so that after an interruption
    (Ctrl-C, SIGTERM) every chunk write in flight has ended before the temporary output is
    deleted (dask's shared pool would go on writing into it)."""
    from concurrent.futures import ThreadPoolExecutor

    from dask.system import CPU_COUNT

    pool = ThreadPoolExecutor(dask.config.get("num_workers", None) or CPU_COUNT)
    try:
        return progress.compute(*collections, label=label, scheduler=dask.threaded.get, pool=pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ingest_key(sources: dict, options: dict) -> dict | None:
    """What makes two ingests the same job: every source file's location, size and
    modification time (of each stored file, for a Zarr source) and the options. None
    when a source is an array in memory: a rerun then has nothing to compare with."""
    stamps = {}
    for name, spec in sources.items():
        if spec is None:
            continue
        if not isinstance(spec, (str, os.PathLike)):
            return None
        location = local_path(str(spec))
        stamps[name] = {"source": location if is_url(location) else os.path.abspath(location),
                        "files": listing_signature(source_file(location))}
    return json.loads(json.dumps({"sources": stamps, "options": options}, default=str))


def _ingested_before(out: Path, key: dict) -> Corpus | None:
    """The corpus at ``out`` if this very ingest (:func:`_ingest_key`) wrote it, else None."""
    if not out.is_dir():
        return None
    with claim(out):  # not while another job replaces it
        try:
            same = zarr.open_group(str(out), mode="r").attrs.get("ingest_job") == key
        except Exception:  # not a Zarr group: ingest refuses it as an existing output
            return None
        return open_corpus(out) if same else None


def ingest(
    out: str | os.PathLike,
    *,
    train_X,
    train_y,
    test_X=None,
    test_y=None,
    train_ids=None,
    test_ids=None,
    chunk_rows: int | None = None,
    dtype=None,
    compressor: str = "none",
    overwrite: bool = False,
    provenance: dict | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    split=None,
    inputs=(),
) -> Corpus:
    """Build a layout-1 corpus at ``out``, chunk-parallel.

    ``test_fraction`` (with no test split given) holds out that fraction of the rows as
    the test split: ``numpy.random.default_rng(seed)`` draws them, the rows keep their
    ids (row numbers of the source when no ids are given), and the split is recorded in
    the corpus attributes (``test_split``). ``split`` instead names each training row's
    split, "train" or "test" (e.g. a table's split column).

    Each source is an array (NumPy, Zarr or Dask — a Dask array is never gathered), a
    ``.npy`` file (memory-mapped), ``file.npz:key`` or a Zarr array path
    (``store.zarr/path`` or ``store.zarr:path``); files may be fsspec URLs (``s3://...``,
    read a row range per task). Every row chunk is read, checked (finite X, labels in
    {0, 1}), cast, hashed and written by its own task: on the active distributed client
    when the sources are Dask arrays and a client is active (they are then read where the
    workers run), otherwise by local threads. ``inputs`` names further source paths the
    output must not overlap (e.g. a Parquet directory).
    ``content_sha256`` is the sha256 of the per-chunk sha256 digests of X, y and ids
    bytes, train chunks then test chunks, in row order.

    The corpus is written to a temporary sibling and moved into place only when
    complete; an existing ``out`` is refused unless ``overwrite``. The same call on the
    corpus it completed (file sources unchanged) writes nothing and returns it.

    Parameters
    ----------
    out : str or os.PathLike
        The corpus to create (a local path, or a ``file://`` URL).
    train_X, train_y : array or str
        Training features (n, d) and 0/1 labels (n,): arrays, or source paths as above.
    test_X, test_y : array or str, optional
        The test split (both or neither).
    train_ids, test_ids : array or str, optional
        Integer ids of the rows, unique per split (default: row numbers).
    chunk_rows : int, optional
        Rows per stored chunk (default: about 32 MiB of X per chunk, rows split evenly).
    dtype : "float32" or "float64", optional
        Storage dtype of X (default: the source's; float32 for non-float sources).
    compressor : "none" or "zstd", default "none"
        Compression of the stored arrays (zstd saves little on embeddings and makes
        every read about 3x slower).
    overwrite : bool, default False
        Replace ``out`` if it is a corpus rifscale made.
    provenance : dict, optional
        More attributes to record in the corpus.
    test_fraction : float, optional
        Hold out this fraction of the rows as the test split (no test split given).
    seed : int, default 0
        Seed of ``test_fraction``.
    split : array or str, optional
        Each row's split, "train" or "test" (e.g. a table's split column).
    inputs : sequence of paths, optional
        Further source paths the output must not overlap.

    Returns
    -------
    Corpus
        The corpus as :func:`rifscale.open_corpus` opens it.

    Raises
    ------
    CorpusError
        Bad input, before anything is written: labels outside {0, 1}, NaN/Inf, values
        that do not fit the dtype, duplicate ids, splits of different widths, ...
    OutputExistsError
        ``out`` exists and ``overwrite`` was not given.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_data_path
    >>> data = np.load(demo_data_path())  # the embedded Fashion-MNIST pair
    >>> corpus = rifscale.ingest("example-corpus.zarr", train_X=data["train_X"], train_y=data["train_y"],
    ...                          test_X=data["test_X"], test_y=data["test_y"], chunk_rows=250, overwrite=True)
    >>> corpus.n, corpus.train.X.numblocks[0], len(corpus.attrs["content_sha256"])
    (1000, 4, 64)

    From files: ``rifscale.ingest("corpus.zarr", train_X="X.npy", train_y="y.npy")``;
    the command line is ``rifscale ingest corpus.zarr --train-X X.npy --train-y y.npy``.
    """
    out = Path(output_path(out, "corpus"))
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or int(chunk_rows) != chunk_rows or chunk_rows < 1):
        raise CorpusError(f"chunk_rows must be a positive integer; got {chunk_rows!r}.")
    if compressor not in COMPRESSORS:
        raise CorpusError(f"compressor must be one of {COMPRESSORS}; got {compressor!r}.")
    if (test_X is None) != (test_y is None):
        raise CorpusError("Give both --test-X and --test-y, or neither.")
    if test_ids is not None and test_X is None:
        raise CorpusError("test_ids was given without test_X and test_y; pass the whole test split.")
    split_record = None
    if split is not None and (test_X is not None or test_fraction is not None):
        raise CorpusError("Give the test split one way only: --test-X and --test-y, --split-column, or "
                          "--test-fraction.")
    if test_fraction is not None:
        if test_X is not None:
            raise CorpusError("Give the test split one way only: --test-X and --test-y, or --test-fraction.")
        if isinstance(test_fraction, bool) or not (0 < float(test_fraction) < 1):
            raise CorpusError(f"test_fraction must be in (0, 1); got {test_fraction!r}.")
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise CorpusError(f"seed must be an integer >= 0; got {seed!r}.")
    named = dict(train_X=train_X, train_y=train_y, test_X=test_X, test_y=test_y, train_ids=train_ids,
                 test_ids=test_ids, split=split)
    key = _ingest_key(named, dict(chunk_rows=chunk_rows, dtype=dtype and str(np.dtype(dtype)), compressor=compressor,
                                  test_fraction=test_fraction, seed=seed, provenance=provenance))
    if key is not None and not overwrite and (done := _ingested_before(out, key)) is not None:
        log.info("%s is already complete (same sources and options): nothing to do", out)
        return done
    sources = (train_X, train_y, test_X, test_y, train_ids, test_ids)
    inputs = [source_file(v) for v in sources if isinstance(v, (str, os.PathLike))] + [local_path(p) for p in inputs]
    inputs = [p for p in inputs if not is_url(p)]
    # the output is claimed (and refused if it exists) before the sources are read
    with atomic_dir(out, overwrite=overwrite, kind="corpus", inputs=inputs) as tmp:
        rows = int(chunk_rows) if chunk_rows is not None else _auto_rows(train_X, dtype)
        # data in this process (arrays, local files) is ingested by local threads; only
        # Dask-array sources run where the active scheduler (e.g. a cluster) puts them
        lazy = all(isinstance(v, da.Array) for v in (train_X, test_X) if v is not None) \
            and current_client() is not None
        if test_fraction is not None:
            (train_X, train_y, train_ids), (test_X, test_y, test_ids), split_record = _hold_out(
                train_X, train_y, train_ids, float(test_fraction), int(seed), rows)
        elif split is not None:
            (train_X, train_y, train_ids), (test_X, test_y, test_ids), split_record = _split_by_values(
                train_X, train_y, train_ids, split, rows)
        splits = [_plan_split("train", train_X, train_y, train_ids, rows, dtype)]
        if test_X is not None:
            splits.append(_plan_split("test", test_X, test_y, test_ids, rows, dtype))
            if splits[1].X.shape[1] != splits[0].X.shape[1]:
                raise CorpusError(
                    f"test/X has d = {splits[1].X.shape[1]} features but train/X has d = {splits[0].X.shape[1]}; "
                    "both splits must have the same feature columns."
                )
        root = zarr.open_group(str(tmp), mode="a")
        sources, targets = [], []
        for sp in splits:
            sources += [sp.X, sp.y, sp.ids]
            targets += _targets(root, sp, rows, compressor)
        stored = da.store(sources, targets, lock=False, compute=False)
        _, *digests = _compute_local(stored, *[sp.digests() for sp in splits]) if not lazy else \
            progress.compute(stored, *[sp.digests() for sp in splits], label="ingest")
        hasher = hashlib.sha256()
        for sp, dg in zip(splits, digests):
            hasher.update(np.ascontiguousarray(dg).tobytes())
            root.create_array(f"{sp.name}/{DIGESTS}", data=np.ascontiguousarray(dg), compressors=None)
        root.attrs.update(
            {
                "rifscale_format": FORMAT_VERSION,
                "content_sha256": hasher.hexdigest(),
                "content_hash": "sha256 of per-chunk sha256(X, y, ids bytes), train then test, row order; "
                                f"the per-chunk digests are SPLIT/{DIGESTS}",
                "compressor": compressor,
                "n_train": splits[0].n,
                "n_test": splits[1].n if len(splits) > 1 else 0,
                **({"test_split": split_record} if split_record else {}),
                **({"ingest_job": key} if key is not None else {}),
                **(provenance or {}),
            }
        )
    return open_corpus(out)
