"""Zarr corpora: open and validate (docs/design.md §5), and ingest from NumPy, Dask, Zarr,
``.npy``/``.npz`` sources (paths or fsspec URLs; Parquet tables: :mod:`rifscale.parquet`).

Layout, version 1::

    corpus.zarr/                      attrs: {"rifscale_format": 1, "content_sha256", "test_split"?, ...provenance}
      train/X    (n, d)  float32|float64, chunked by rows only
      train/y    (n,)    int8 0/1, chunked like the rows of X
      train/ids  (n,)    int64 (row numbers when the source has none)
      train/chunk_sha256  (chunks, 32) uint8: sha256 of each row chunk's X, y and ids bytes
      test/...                        same rules

:func:`open_corpus` checks everything that metadata and the (small) label arrays can
tell, and returns a frozen :class:`Corpus` of Dask arrays aligned to the Zarr row chunks;
it also opens Zarr groups another tool wrote with the layout's arrays, in place.
Non-finite values in X are found where X is read anyway: during ingest, and by the first
pass of the fit (:func:`find_nonfinite` then names the chunk and row).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import dask.threaded
import numpy as np
import zarr

from .errors import CorpusError
from . import progress
from .cluster import current_client, small_compute
from .outputs import atomic_dir, claim, filesystem, is_url, local_path, output_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FLOAT_DTYPES = (np.dtype("float32"), np.dtype("float64"))


@dataclass(frozen=True)
class Split:
    """One split (train or test): Dask arrays sharing the same row chunks."""

    X: da.Array
    y: da.Array
    ids: da.Array

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]


@dataclass(frozen=True)
class Corpus:
    """A validated corpus: a training split and an optional test split of Dask arrays.

    Build it with :func:`rifscale.open_corpus` (a Zarr store made by
    :func:`rifscale.ingest`, or any Zarr group with the layout) or
    :meth:`rifscale.Corpus.from_arrays` (arrays in memory); do not construct it directly.

    Parameters
    ----------
    train : Split
        ``X`` (n, d) float32/float64, ``y`` (n,) 0/1 labels and ``ids`` (n,) int64, Dask
        arrays sharing one row chunking.
    test : Split or None
        The test split the metrics are evaluated on (same d), if any.
    path : str or None
        Where the corpus is stored (absolute path or URL); None for arrays in memory.
    attrs : dict
        The store's attributes (format version, ``content_sha256``, provenance).
    fingerprint : str
        Identifies the data: runs record it and refuse a corpus that changed.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_data_path
    >>> data = np.load(demo_data_path())  # the embedded Fashion-MNIST pair
    >>> corpus = rifscale.Corpus.from_arrays(data["train_X"], data["train_y"], data["test_X"], data["test_y"])
    >>> corpus.n, corpus.d, corpus.test.n
    (1000, 196, 500)
    """

    train: Split
    test: Split | None
    path: str | None
    attrs: dict
    fingerprint: str

    @property
    def n(self) -> int:
        """Number of training rows.

        Examples
        --------
        >>> import numpy as np
        >>> import rifscale
        >>> from rifscale.demo import demo_data_path
        >>> data = np.load(demo_data_path())  # the embedded Fashion-MNIST pair
        >>> rifscale.Corpus.from_arrays(data["train_X"], data["train_y"]).n
        1000
        """
        return self.train.n

    @property
    def d(self) -> int:
        """Number of features (columns of X, without the intercept).

        Examples
        --------
        >>> import numpy as np
        >>> import rifscale
        >>> from rifscale.demo import demo_data_path
        >>> data = np.load(demo_data_path())  # the embedded Fashion-MNIST pair
        >>> rifscale.Corpus.from_arrays(data["train_X"], data["train_y"]).d
        196
        """
        return self.train.d

    @classmethod
    def from_arrays(cls, X, y, X_test=None, y_test=None, *, chunk_rows: int = 65536) -> "Corpus":
        """Wrap in-memory (NumPy, Zarr or Dask) arrays as a corpus, validated like a store.

        Nothing is written; the ids are the row numbers. To keep the data (and have runs
        that can be reopened), write a corpus with :func:`rifscale.ingest` instead.

        Parameters
        ----------
        X : (n, d) array
            Training features, float32 or float64 (NumPy, Zarr or Dask).
        y : (n,) array
            Training labels in {0, 1}.
        X_test, y_test : arrays, optional
            The test split (both or neither), with the same d.
        chunk_rows : int, default 65536
            Rows per chunk of the Dask arrays (the unit of work of every pass).

        Returns
        -------
        Corpus
            Validated: finite X, 0/1 labels, the same d in both splits.

        Raises
        ------
        CorpusError
            Naming the array and the problem (labels outside {0, 1}, NaN/Inf, ...).

        Examples
        --------
        >>> import numpy as np
        >>> import rifscale
        >>> from rifscale.demo import demo_data_path
        >>> data = np.load(demo_data_path())  # the embedded Fashion-MNIST pair
        >>> corpus = rifscale.Corpus.from_arrays(data["train_X"], data["train_y"], data["test_X"], data["test_y"],
        ...                                      chunk_rows=250)
        >>> corpus.train.X.numblocks, corpus.path is None
        ((4, 1), True)
        """
        train = _split_from_arrays("train", X, y, None, chunk_rows)
        test = None
        if X_test is not None or y_test is not None:
            if X_test is None or y_test is None:
                raise CorpusError("Pass both X_test and y_test, or neither.")
            test = _split_from_arrays("test", X_test, y_test, None, chunk_rows)
        _check_same_d(train, test)
        meta = {"source": "arrays", "train": _split_meta(train), "test": _split_meta(test) if test else None}
        return cls(train=train, test=test, path=None, attrs={}, fingerprint=_hash_json(meta))


def _hash_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _split_meta(split: Split) -> dict:
    return {"shape": list(split.X.shape), "dtype": str(split.X.dtype), "chunks": list(split.X.chunks[0][:1])}


def _to_dask(a, chunk_rows: int | None):
    if isinstance(a, da.Array):
        return a
    if isinstance(a, zarr.Array):
        return da.from_zarr(a)
    a = np.asarray(a)
    chunks = (chunk_rows,) + a.shape[1:] if a.ndim else ()
    return da.from_array(a, chunks=chunks)


def _split_from_arrays(name, X, y, ids, chunk_rows) -> Split:
    X, y = _to_dask(X, chunk_rows), _to_dask(y, chunk_rows)
    if y.ndim == 1 and y.chunks != (X.chunks[0],) and X.ndim == 2 and y.shape[0] == X.shape[0]:
        y = y.rechunk((X.chunks[0],), method="tasks")
    ids = _to_dask(ids, None) if ids is not None else da.arange(X.shape[0], chunks=X.chunks[0] if X.ndim else "auto", dtype=np.int64)
    split = Split(X=X, y=y, ids=ids)
    validate_split(name, split)
    _check_labels(name, split.y)
    return split


def validate_split(name: str, split: Split) -> None:
    """Check shapes, dtypes and row-only, aligned chunking from metadata alone."""
    X, y, ids = split.X, split.y, split.ids
    if X.ndim != 2:
        raise CorpusError(f"{name}/X must be 2-D (n, d); got shape {X.shape}.")
    n, d = X.shape
    if n == 0 or d == 0:
        raise CorpusError(f"{name}/X is empty (shape {X.shape}); a corpus needs n >= 1 rows and d >= 1 features.")
    if X.dtype not in FLOAT_DTYPES:
        raise CorpusError(
            f"{name}/X has dtype {X.dtype}; expected float32 or float64. "
            "Re-ingest with `rifscale ingest ... --dtype float32`."
        )
    if len(X.chunks[1]) != 1:
        raise CorpusError(
            f"{name}/X is chunked along columns (column chunks {X.chunks[1][:4]}...); rifscale needs "
            f"row-only chunks holding all d = {d} features. Re-ingest with "
            f"`rifscale ingest ... --chunk-rows N`, or rechunk with array.rechunk({{1: {d}}})."
        )
    for what, a in (("y", y), ("ids", ids)):
        if a.ndim != 1 or a.shape[0] != n:
            raise CorpusError(
                f"{name}/{what} has shape {a.shape}; expected ({n},) to match {name}/X with n = {n} rows."
            )
        if a.chunks[0] != X.chunks[0]:
            raise CorpusError(
                f"{name}/{what} is chunked {_short(a.chunks[0])} but {name}/X rows are chunked "
                f"{_short(X.chunks[0])}; the row chunks must be aligned. Re-ingest with "
                "`rifscale ingest ... --chunk-rows N`, which writes them aligned."
            )
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise CorpusError(f"{name}/y has dtype {y.dtype}; expected integer labels 0/1 (e.g. int8).")
    if ids.dtype != np.int64:
        raise CorpusError(f"{name}/ids has dtype {ids.dtype}; expected int64.")


def _short(chunks) -> str:
    return str(tuple(chunks[:3])) + ("..." if len(chunks) > 3 else "")


def _check_labels(name: str, y: da.Array) -> None:
    lo, hi = small_compute(y.min(), y.max())
    if lo < 0 or hi > 1:
        bad = int(da.argmax((y < 0) | (y > 1)).compute())
        raise CorpusError(
            f"{name}/y holds labels outside {{0, 1}} (min {lo}, max {hi}; first bad row {bad}). "
            "Binary logistic regression needs y in {0, 1}: map your classes to 0/1 before ingesting."
        )


def _check_same_d(train: Split, test: Split | None) -> None:
    if test is not None and test.d != train.d:
        raise CorpusError(
            f"test/X has d = {test.d} features but train/X has d = {train.d}; both splits must "
            "have the same feature columns."
        )


def open_corpus(path: str | os.PathLike) -> Corpus:
    """Open and validate a Zarr corpus, at a path or an fsspec URL.

    A corpus made by :func:`ingest` (layout version 1) is used as it is. Any other Zarr
    group with the layout's arrays (``train/X``, ``train/y``, optional ``train/ids`` and
    ``test/...``) is used in place, after the same checks: X of float32/float64, integer
    0/1 labels, integer ids without duplicates (row numbers if absent), no chunk file
    missing. Its chunks may differ from the layout's: X chunked along columns is read in
    whole rows, and y and ids follow X's row chunks. Such a corpus has no per-chunk
    digests (``rifscale verify`` needs an ingested one); its fingerprint is taken from
    its metadata and the size and modification time of every stored file, so a change
    to the data is seen as another corpus.

    Parameters
    ----------
    path : str or os.PathLike
        A local path or an fsspec URL (``s3://bucket/corpus.zarr``; the fsspec package
        of the protocol must be installed).

    Returns
    -------
    Corpus
        The splits as lazy Dask arrays over the store's chunks (nothing is read yet but
        metadata and the labels' check).

    Raises
    ------
    CorpusError
        Naming the array and the fix when the store does not follow the layout.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_data_path
    >>> data = np.load(demo_data_path())  # the embedded Fashion-MNIST pair
    >>> _ = rifscale.ingest("example-corpus.zarr", train_X=data["train_X"], train_y=data["train_y"],
    ...                     test_X=data["test_X"], test_y=data["test_y"], overwrite=True)
    >>> corpus = rifscale.open_corpus("example-corpus.zarr")
    >>> corpus.n, corpus.d, corpus.attrs["rifscale_format"]
    (1000, 196, 1)
    """
    path, root = _open_root(path)
    attrs = root.attrs.asdict()
    foreign = attrs.get("rifscale_format") is None
    train = _open_split(root, "train", path, required=True, foreign=foreign)
    test = _open_split(root, "test", path, required=False, foreign=foreign)
    _check_same_d(train, test)
    if foreign:
        log.info("%s: a Zarr group not made by `rifscale ingest`, used in place (no chunk digests; "
                 "fingerprint from its file listing)", path)
    return Corpus(train=train, test=test, path=path if is_url(path) else os.path.abspath(path), attrs=attrs,
                  fingerprint=_fingerprint(path, root))


def corpus_fingerprint(path: str | os.PathLike) -> str:
    """The fingerprint :func:`open_corpus` gives the corpus at ``path`` now, from its
    metadata alone (no chunk is read): a job compares it with the one it started on."""
    return _fingerprint(*_open_root(path))


def _open_root(path) -> tuple[str, zarr.Group]:
    """``(path, root group)`` of a corpus of a layout version this rifscale reads."""
    path = local_path(path)
    if not _exists(path):
        raise CorpusError(
            f"No corpus at {path!r}. Create one with `rifscale ingest {path} --train-X X.npy "
            "--train-y y.npy --test-X Xt.npy --test-y yt.npy`."
        )
    try:
        root = zarr.open_group(path, mode="r")
    except Exception as exc:  # zarr raises several types for "not a group"
        raise CorpusError(f"{path!r} is not a Zarr group ({exc}).") from exc
    version = root.attrs.get("rifscale_format")
    if version is not None and version != FORMAT_VERSION:
        raise CorpusError(
            f"{path!r} has rifscale_format = {version!r}; this rifscale reads layout version "
            f"{FORMAT_VERSION}. Re-create the corpus with `rifscale ingest`."
        )
    return path, root


def _fingerprint(path: str, root: zarr.Group) -> str:
    """sha256 (16 hex digits) of the layout version, the content (the digest recorded at
    ingest; for a group another tool wrote, its file listing) and each split's X shape,
    dtype and first row chunk."""
    version = root.attrs.get("rifscale_format")
    meta = {"format": version, "content": _listing_signature(path) if version is None else
            root.attrs.get("content_sha256")}
    for name in ("train", "test"):
        group = _member(root, name, path)
        X = _member(group, "X", path) if group is not None else None
        meta[name] = None if X is None else {"shape": list(X.shape), "dtype": str(X.dtype),
                                             "chunks": [min(X.chunks[0], X.shape[0])]}
    return _hash_json(meta)


def _member(group: zarr.Group, key: str, path: str):
    """``group[key]`` (an array or group), or None when absent; metadata that cannot be
    read is a :class:`CorpusError` naming its file."""
    try:
        return group[key]
    except KeyError:
        return None
    except Exception as exc:  # zarr parses the member's metadata here: JSON and schema errors
        name = f"{group.path}/{key}".lstrip("/")
        meta = f"{path.rstrip('/')}/{name}/{'zarr.json' if group.metadata.zarr_format == 3 else '.zarray'}"
        raise CorpusError(
            f"{path!r}: cannot read the metadata of {name} ({meta!r}: {type(exc).__name__}: {exc}). The file is "
            "damaged (truncated or overwritten); re-ingest the corpus from its sources."
        ) from None


def _listing_signature(path: str) -> str:
    """sha256 of every stored file's name, size and modification time (or ETag): what
    identifies the content of a store rifscale did not write, without reading it."""
    fs, root = filesystem(path)
    entries = fs.find(root, detail=True)
    h = hashlib.sha256()
    for name in sorted(entries):
        info = entries[name]
        stamp = next((info[k] for k in ("mtime", "LastModified", "ETag", "md5Hash", "created") if k in info), None)
        h.update(f"{name[len(root):]}\0{info.get('size')}\0{stamp}\n".encode())
    return h.hexdigest()


def _open_split(root, name: str, path: str, *, required: bool, foreign: bool = False) -> Split | None:
    group = _member(root, name, path)
    if group is None:
        if required:
            raise CorpusError(f"{path!r} has no '{name}' group; a corpus needs {name}/X and {name}/y.")
        return None
    arrays = {key: _member(group, key, path) for key in ("X", "y", "ids")}
    for key in ("X", "y"):
        if arrays[key] is None:
            raise CorpusError(f"{path!r} has no array '{name}/{key}'.")
    arrays = {key: arr for key, arr in arrays.items() if arr is not None}
    for key, arr in arrays.items():
        check_chunks_present(arr, f"{name}/{key}", path, written_by_rifscale=not foreign)
    X = read_array(arrays["X"], f"{name}/X", path)
    y = read_array(arrays["y"], f"{name}/y", path)
    ids = (read_array(arrays["ids"], f"{name}/ids", path) if "ids" in arrays
           else da.arange(X.shape[0], chunks=X.chunks[0], dtype=np.int64))
    if foreign:
        X, y, ids = _fit_layout(name, X, y, ids)
        if "ids" in arrays:
            _check_unique_ids(f"{name}/ids", ids)
    split = Split(X=X, y=y, ids=ids)
    validate_split(f"{name}", split)
    _check_labels(name, y)
    return split


def _fit_layout(name: str, X: da.Array, y: da.Array, ids: da.Array):
    """A foreign group's arrays in the layout's chunking (read whole rows, y and ids in
    X's row chunks) and integer ids as int64; nothing is read."""
    if X.ndim == 2 and len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})
    if y.ndim == 1 and y.shape[:1] == X.shape[:1] and y.chunks[0] != X.chunks[0]:
        y = y.rechunk((X.chunks[0],))
    if ids.ndim == 1 and ids.shape[:1] == X.shape[:1]:
        if ids.chunks[0] != X.chunks[0]:
            ids = ids.rechunk((X.chunks[0],))
        if np.issubdtype(ids.dtype, np.integer) and ids.dtype != np.int64:
            ids = ids.astype(np.int64)
    return X, y, ids


DAMAGED_HINT = (
    "The chunk file is damaged (truncated, overwritten, or not written by zarr). Run `rifscale verify {path}` "
    "to list every damaged chunk, and re-ingest the corpus from its sources."
)


#: Why chunk files may be missing from a Zarr array rifscale did not write, and the ways out.
NOT_WRITTEN_HINT = (
    " If the array was written by another tool, the missing chunks may hold nothing but the fill value "
    "({fill!r}): zarr skips writing such chunks unless asked (config={{'write_empty_chunks': True}}). "
    "rifscale cannot tell that from lost files: rewrite the array with write_empty_chunks=True, or, if you know "
    "the missing chunks are the fill value, ingest it as a Dask array, "
    "rifscale.ingest(OUT, train_X=dask.array.from_zarr(...), ...), which reads them as such."
)


def check_chunks_present(arr: zarr.Array, label: str, path: str, *, written_by_rifscale: bool = True) -> None:
    """Refuse an array with chunk files missing: zarr would read them as zeros (its fill
    value) and the fit would silently use wrong data. Costs one listing of the array.
    For arrays another tool wrote, the message also names the benign cause and its fixes."""
    if arr.nchunks_initialized == arr.nchunks:
        return
    missing = [coords for coords in np.ndindex(*arr.cdata_shape) if not _chunk_file_exists(arr, coords)]
    rows = arr.chunks[0]
    first = missing[0][0] if missing else 0
    row_chunks = sorted({c[0] for c in missing})
    raise CorpusError(
        f"{path!r}: {label} is missing {arr.nchunks - arr.nchunks_initialized} of its {arr.nchunks} chunk "
        f"file(s) (first: row chunk {first}, rows {first * rows}-{min((first + 1) * rows, arr.shape[0]) - 1}; "
        f"row chunks missing: {_short(tuple(row_chunks))}). zarr would read them as zeros, so rifscale refuses "
        "them. Restore the files, or re-ingest the corpus from its sources."
        + ("" if written_by_rifscale else NOT_WRITTEN_HINT.format(fill=np.asarray(arr.metadata.fill_value).item()))
    )


def _chunk_span(index, chunk: int, size: int):
    """Chunk coordinates along one dimension that ``index`` (a slice, an integer or an
    integer array) touches."""
    if isinstance(index, slice):
        start, stop, _ = index.indices(size)
        return range(start // chunk, -(-stop // chunk))
    return np.unique(np.asarray(index) % size // chunk).tolist()


def _chunk_file_exists(arr: zarr.Array, coords: tuple) -> bool:
    """Whether the stored file (object) of chunk ``coords`` of ``arr`` exists."""
    from zarr.core.sync import sync

    return sync(arr.store.exists(f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}".lstrip("/")))


class _GuardedRows:
    """A Zarr array whose reads name the array, the chunk and the likely cause on failure
    (instead of a codec traceback), and refuse a chunk file that went missing after the
    corpus was opened (zarr would read it as zeros): one existence check per chunk read,
    after the read, so a file lost before or during it is caught."""

    def __init__(self, arr: zarr.Array, label: str, path: str):
        self.arr, self.label, self.path = arr, label, path
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key += (slice(None),) * (self.ndim - len(key))
        grid = self.arr.shards or self.arr.chunks  # the chunks that are files (shards, when sharded)
        spans = [_chunk_span(k, c, n) for k, c, n in zip(key, grid, self.shape)]
        try:
            block = self.arr[key]
        except Exception as exc:
            chunk = next(iter(spans[0]), 0)
            raise CorpusError(
                f"{self.path!r}: cannot read {self.label} row chunk {chunk} ({type(exc).__name__}: {exc}). "
                + DAMAGED_HINT.format(path=self.path)
            ) from None
        lost = next((c for c in itertools.product(*spans) if not _chunk_file_exists(self.arr, c)), None)
        if lost is not None:
            rows = grid[0]
            raise CorpusError(
                f"{self.path!r}: {self.label} row chunk {lost[0]} (rows {lost[0] * rows}-"
                f"{min((lost[0] + 1) * rows, self.shape[0]) - 1}): its chunk file is missing (deleted or lost after "
                "the corpus was opened); zarr would read it as zeros, so rifscale stops. Restore the file, or "
                "re-ingest the corpus from its sources; then run the same command again."
            )
        return block


def read_array(arr: zarr.Array, label: str, path: str) -> da.Array:
    """A stored array as a Dask array in its own chunks, with reads that fail clearly."""
    return da.from_array(_GuardedRows(arr, label, path), chunks=arr.chunks, name=f"read-{label}-{uuid.uuid4().hex}",
                         meta=np.empty((0,) * arr.ndim, dtype=arr.dtype), asarray=False)


def _first_nonfinite(x, block_info=None):
    from .kernels import array_namespace

    xp = array_namespace(x)
    bad = xp.flatnonzero(~xp.isfinite(x).all(axis=1))
    start = block_info[0]["array-location"][0][0]
    return np.array([start + int(bad[0]) if bad.size else -1], dtype=np.int64)


def _chunk_max_abs(x, block_info=None):
    from .kernels import array_namespace, to_numpy

    xp = array_namespace(x)
    row_max = to_numpy(xp.abs(x).max(axis=1)).astype(np.float64)
    start = block_info[0]["array-location"][0][0]
    i = int(np.argmax(row_max))
    return np.array([[row_max[i], start + i]])


def scale_outliers(split_name: str, X: da.Array, *, factor: float = 1e6) -> str:
    """A sentence naming the row chunk whose largest |x| exceeds the typical chunk's by
    ``factor`` or more (a damaged chunk reads like that), or "" when none does."""
    if X.numblocks[0] < 2:
        return ""
    peaks = X.map_blocks(_chunk_max_abs, chunks=((1,) * X.numblocks[0], (2,)), dtype=np.float64).compute()
    typical = float(np.median(peaks[:, 0]))
    k = int(np.argmax(peaks[:, 0]))
    if not peaks[k, 0] > factor * max(typical, np.finfo(np.float64).tiny):
        return ""
    return (
        f" {split_name}/X row chunk {k} holds |x| up to {peaks[k, 0]:.3g} (row {int(peaks[k, 1])}) while the typical "
        f"chunk stays below {typical:.3g}: if the data were not like this at ingest, that chunk is damaged (run "
        "`rifscale verify CORPUS`)."
    )


def find_nonfinite(split_name: str, X: da.Array) -> None:
    """Raise a :class:`CorpusError` naming the first chunk and row of X holding NaN/Inf."""
    firsts = X.map_blocks(_first_nonfinite, drop_axis=1, chunks=((1,) * X.numblocks[0],), dtype=np.int64).compute()
    hits = np.flatnonzero(firsts >= 0)
    if hits.size:
        row = int(firsts[hits[0]])
        raise CorpusError(
            f"{split_name}/X holds NaN or Inf: first in row chunk {int(hits[0])}, row {row} "
            f"({hits.size} chunk(s) affected). Clean or impute those rows and re-ingest."
        )


# ---------------------------------------------------------------------------- ingest

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


def _read_npy_header(fh, label: str):
    try:
        major, _ = np.lib.format.read_magic(fh)
    except (EOFError, ValueError) as exc:
        raise CorpusError(f"{label} is empty or not a .npy file ({exc}); save it with numpy.save.") from None
    readers = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}
    if major not in readers:
        raise CorpusError(f"{label} uses .npy format version {major}; save it with numpy's default format.")
    return readers[major](fh)


def _read_rows(file: str, member: str | None, offset: int, dtype, shape, block_info=None):
    """Rows ``block_info``'s location of a stored C-ordered array whose data start at
    ``offset``: of a file (``member`` None), or of one member of a zip (.npz) archive. One
    seek and one read; the file may be at a URL."""
    (start, stop), *_ = block_info[None]["array-location"]
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(_open(file))
        if member is not None:
            fh = stack.enter_context(stack.enter_context(zipfile.ZipFile(fh)).open(member))
        fh.seek(offset + start * row_bytes)
        buf = fh.read((stop - start) * row_bytes)
    return np.frombuffer(buf, dtype=dtype).reshape((stop - start,) + tuple(shape[1:]))


def _npz_memmap(file: str, member: str, offset: int, dtype, shape, label: str):
    """A Fortran-ordered member as a read-only memory map (stored members), or loaded
    whole (compressed members cannot be mapped)."""
    with _open(file) as raw, zipfile.ZipFile(raw) as zf:
        info = zf.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED or is_url(file):
            logging.getLogger(__name__).warning(
                "%s: %s:%s is Fortran-ordered and compressed or at a URL: loading it whole into memory",
                label, file, member)
            with zf.open(member) as fh:
                return np.lib.format.read_array(fh)
    with open(file, "rb") as fh:  # the member's data start: past its local header
        fh.seek(info.header_offset)
        header = fh.read(30)
        start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    return np.memmap(file, dtype=dtype, mode="r", offset=start + offset, shape=tuple(shape), order="F")


def _npz_member(label: str, file: str, key: str, rows: int) -> da.Array:
    """One member of an .npz (compressed or not) as a Dask array whose tasks each read
    their own rows. Members saved uncompressed (``np.savez``) seek directly; compressed
    ones decompress from the start of the member, so big archives should be uncompressed."""
    with _open(file) as raw, zipfile.ZipFile(raw) as zf:
        names = {n[:-4] if n.endswith(".npy") else n: n for n in zf.namelist()}
        if key not in names:
            raise CorpusError(f"{file!r} has no array {key!r}; it holds {sorted(names)}.")
        with zf.open(names[key]) as fh:
            shape, fortran, dtype = _read_npy_header(fh, f"{file}:{key}")
            offset = fh.tell()
    if dtype.hasobject:
        raise CorpusError(f"{label}: {file}:{key} has dtype {dtype}, which holds Python objects; save a numeric array.")
    if fortran and len(shape) > 1:  # column-major: rows are strided, read them through a memory map
        return da.from_array(_npz_memmap(file, names[key], offset, dtype, shape, label),
                             chunks=(rows,) + tuple(shape[1:]))
    chunks = (_row_chunks(shape[0], rows),) + tuple((s,) for s in shape[1:])
    return da.map_blocks(_read_rows, file, names[key], offset, dtype, shape, chunks=chunks, dtype=dtype,
                         meta=np.empty((0,) * len(shape), dtype=dtype))


def _row_chunks(n: int, rows: int) -> tuple[int, ...]:
    return tuple(min(rows, n - s) for s in range(0, n, rows)) or (0,)


def _source(label: str, spec, rows: int, *, check: bool = True) -> da.Array:
    """An ingest source as a Dask array chunked by ``rows`` rows (all columns in one
    chunk): a NumPy/Dask/Zarr array, ``file.npy`` (memory-mapped), ``file.npz:key``,
    or a Zarr array (``store.zarr/path/to/array`` or ``store.zarr:path/to/array``).
    ``check``: refuse Zarr arrays with chunk files missing (one listing of the array);
    off for the calls that read only the shape, so each source is listed once."""
    if isinstance(spec, da.Array):
        arr = spec
    elif isinstance(spec, zarr.Array):
        if check:
            check_chunks_present(spec, label, f"source {spec.store_path}", written_by_rifscale=False)
        arr = da.from_zarr(spec)
    elif not isinstance(spec, (str, os.PathLike)):
        arr = np.asarray(spec)
        arr = da.from_array(arr, chunks=(rows,) + arr.shape[1:] if arr.ndim else ())
    else:
        arr = _source_path(label, str(spec), rows, check=check)
    if arr.ndim >= 1:
        arr = arr.rechunk((rows,) + arr.shape[1:], method="tasks")
    return arr


def _exists(location: str) -> bool:
    if is_url(location):
        fs, path = filesystem(location)
        return fs.exists(path)
    return Path(location).exists()


def _open(location: str):
    """A binary, seekable file object for a local path or a URL."""
    if is_url(location):
        fs, path = filesystem(location)
        return fs.open(path, "rb")
    return open(location, "rb")


def _split_spec(spec: str) -> tuple[str, str]:
    """``file.npz:key`` / ``store.zarr:path`` -> (file, key); a location that exists as
    given (colons and all) is a file. The colon of a URL's scheme is not a separator."""
    spec = local_path(spec)
    scheme, sep, rest = spec.rpartition("://")
    if ":" in rest and not _exists(spec):
        file, _, key = rest.rpartition(":")
        return scheme + sep + file, key
    return spec, ""


def _source_file(spec) -> str:
    return _split_spec(str(spec))[0]


def _npy_url(label: str, file: str, rows: int) -> da.Array:
    with _open(file) as fh:
        shape, fortran, dtype = _read_npy_header(fh, f"{label} {file}")
        offset = fh.tell()
    if dtype.hasobject:
        raise CorpusError(f"{label}: {file} has dtype {dtype}, which holds Python objects; save a numeric array.")
    if fortran and len(shape) > 1:
        raise CorpusError(f"{label}: {file} is Fortran-ordered, so its rows cannot be read one range at a time "
                          "from a URL. Save it C-ordered (np.save(path, np.ascontiguousarray(X))).")
    chunks = (_row_chunks(shape[0], rows),) + tuple((s,) for s in shape[1:]) if shape else ()
    return da.map_blocks(_read_rows, file, None, offset, dtype, shape, chunks=chunks, dtype=dtype,
                         meta=np.empty((0,) * len(shape), dtype=dtype))


def _source_path(label: str, spec: str, rows: int, *, check: bool = True) -> da.Array:
    file, key = _split_spec(spec)
    if not _exists(file):
        raise CorpusError(f"{label}: source {spec!r} does not exist.")
    if file.endswith(".npz"):
        if not key:
            raise CorpusError(f"{label}: name the array inside the archive, e.g. {file}:{label.replace('/', '_')}.")
        return _npz_member(label, file, key, rows)
    if file.endswith(".npy"):
        if is_url(file):
            return _npy_url(label, file, rows)
        try:
            arr = np.load(file, mmap_mode="r")
        except EOFError as exc:  # 0 bytes, or cut short inside the header
            raise CorpusError(f"{label}: {spec!r} is empty or cut short ({exc}), not a whole .npy array; save it "
                              "again with numpy.save.") from None
        except ValueError as exc:  # e.g. object dtype: cannot be memory-mapped (and would need pickle)
            raise CorpusError(f"{label}: cannot read {spec!r} as a numeric .npy array ({exc}). Save it with a "
                              "numeric dtype, e.g. np.save(path, X.astype(np.float32)).") from None
        return da.from_array(arr, chunks=(rows,) + arr.shape[1:] if arr.ndim else ())
    try:
        arr = zarr.open_array(file, path=key or None, mode="r") if key else zarr.open_array(file, mode="r")
    except Exception as exc:
        raise CorpusError(
            f"{label}: cannot read {spec!r} as .npy, .npz:key or a Zarr array ({exc})."
        ) from exc
    if check:
        check_chunks_present(arr, label, spec, written_by_rifscale=False)
    return da.from_zarr(arr)


def _x_dtype(label: str, X: da.Array, dtype) -> np.dtype:
    if X.ndim != 2 or 0 in X.shape:
        raise CorpusError(f"{label} must be a non-empty 2-D array (n, d); got shape {X.shape}.")
    native = X.dtype.newbyteorder("=")  # a big-endian float64 source stays float64
    out = np.dtype(dtype) if dtype is not None else (native if native in FLOAT_DTYPES else np.dtype("float32"))
    if out not in FLOAT_DTYPES:
        raise CorpusError(f"--dtype must be float32 or float64; got {out}.")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise CorpusError(f"{label} has non-numeric dtype {X.dtype}.")
    _check_real(label, X)
    return out


def _check_real(label: str, a: da.Array) -> None:
    """Refuse complex values: casting them to float would drop the imaginary part."""
    if np.issubdtype(a.dtype, np.complexfloating):
        raise CorpusError(f"{label} is complex ({a.dtype}); rifscale fits real features and labels and will not drop "
                          "the imaginary part. Pass the real part, or real and imaginary parts as separate columns.")


def _checked_x(x, *, label: str, out_dtype, rows: int, block_info=None):
    """The chunk cast to the corpus dtype; a CorpusError naming the row if not finite, or
    if a finite value does not fit the corpus dtype."""
    source = np.asarray(x)
    with np.errstate(over="ignore"):  # an overflowing cast is reported below, by row
        x = source.astype(out_dtype, copy=False)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        start = block_info[0]["array-location"][0][0]
        i = int(np.flatnonzero(~finite)[0])
        if np.isfinite(source[i]).all():
            j = int(np.flatnonzero(~np.isfinite(x[i]))[0])
            raise CorpusError(
                f"{label} row {start + i} holds {source[i, j].item():.4g}, which {out_dtype} cannot hold (row chunk "
                f"{start // rows}). Ingest with --dtype float64, or rescale X (e.g. standardise each column)."
            )
        raise CorpusError(
            f"{label} holds NaN or Inf at row {start + i} (row chunk {start // rows}). Clean or impute those rows first."
        )
    return x


def _checked_y(y, *, label: str, block_info=None):
    y = np.asarray(y)
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        start = block_info[0]["array-location"][0][0]
        raise CorpusError(
            f"{label} holds a label outside {{0, 1}} at row {start + i} (value {y[i].item()!r}). "
            "Map your two classes to 0 and 1 before ingesting."
        )
    return y.astype(np.int8)


#: Array of each split holding the sha256 digest of every row chunk (chunks, 32) uint8.
DIGESTS = "chunk_sha256"


def verify_corpus(corpus: Corpus) -> dict:
    """Re-read every chunk and compare its sha256 with the digest recorded at ingest.

    Raises a :class:`CorpusError` listing the chunks whose bytes changed (or that cannot
    be read); returns ``{"chunks", "bytes", "arrays"}`` when everything matches. Corpora
    written before per-chunk digests were stored are checked against ``content_sha256``
    as a whole."""
    if corpus.path is None:
        raise CorpusError("verify needs a corpus on disk (this one was built from in-memory arrays).")
    expected = corpus.attrs.get("content_sha256")
    if not expected:
        raise CorpusError(f"{corpus.path!r} records no content_sha256, so there is nothing to verify against; "
                          "re-ingest it with this rifscale to record one.")
    root = zarr.open_group(corpus.path, mode="r")
    splits = [(name, sp) for name, sp in (("train", corpus.train), ("test", corpus.test)) if sp is not None]
    digests = small_compute(*[_plan_digests(sp) for _, sp in splits])
    bad, hasher = [], hashlib.sha256()
    for (name, sp), got in zip(splits, digests):
        hasher.update(np.ascontiguousarray(got).tobytes())
        stored = _member(_member(root, name, corpus.path), DIGESTS, corpus.path)
        if stored is not None:
            want = np.asarray(stored[...])
            if want.shape != got.shape:
                raise CorpusError(f"{corpus.path!r}: {name}/{DIGESTS} has shape {want.shape}, expected {got.shape}; "
                                  "the corpus was changed after ingest. Re-ingest it.")
            offsets = np.concatenate([[0], np.cumsum(sp.X.chunks[0])])
            for i in np.flatnonzero((want != got).any(axis=1)):
                bad.append(f"{name} row chunk {i} (rows {offsets[i]}-{offsets[i + 1] - 1})")
    if bad:
        raise CorpusError(
            f"{corpus.path!r}: {len(bad)} chunk(s) differ from what ingest wrote: {', '.join(bad[:10])}"
            f"{' ...' if len(bad) > 10 else ''}. Their bytes changed on storage (bit flips, partial overwrites). "
            "Re-ingest the corpus from its sources."
        )
    if hasher.hexdigest() != expected:
        raise CorpusError(
            f"{corpus.path!r}: the content hash {hasher.hexdigest()[:16]}... differs from the {expected[:16]}... "
            "recorded at ingest: the stored data changed. Re-ingest the corpus from its sources."
        )
    n_chunks = sum(g.shape[0] for g in digests)
    n_bytes = sum(sp.X.nbytes + sp.y.nbytes + sp.ids.nbytes for _, sp in splits)
    return {"chunks": n_chunks, "bytes": int(n_bytes), "arrays": [f"{n}/{a}" for n, _ in splits for a in ("X", "y", "ids")]}


def _plan_digests(split: Split) -> da.Array:
    return da.blockwise(_chunk_digest, "ij", split.X, "ik", split.y, "i", split.ids, "i",
                        new_axes={"j": 32}, adjust_chunks={"i": 1}, concatenate=True,
                        dtype=np.uint8, meta=np.empty((0, 0), dtype=np.uint8))


def _row_numbers(x, block_info=None):
    start, stop = block_info[0]["array-location"][0]
    return np.arange(start, stop, dtype=np.int64)


def _chunk_digest(x, y, ids):
    h = hashlib.sha256()
    for part in (x, y, ids):
        h.update(np.ascontiguousarray(part).tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8)[None, :]


@dataclass(frozen=True)
class _PlannedSplit(Split):
    """A split about to be ingested: checked, cast, row-chunked, not read yet."""

    name: str = "train"

    def digests(self) -> da.Array:
        """(chunks, 32) sha256 digests of each row chunk's X, y and ids bytes."""
        return _plan_digests(self)


def _plan_split(name: str, X, y, ids, rows: int, dtype) -> _PlannedSplit:
    """Sources → validated, cast, row-chunked Dask arrays (nothing is read yet)."""
    sx, sy = _source(f"{name}/X", X, rows), _source(f"{name}/y", y, rows)
    out_dtype = _x_dtype(f"{name}/X", sx, dtype)
    n, d = sx.shape
    if sy.shape != (n,):
        raise CorpusError(f"{name}/y has shape {sy.shape}; expected ({n},) to match {name}/X with n = {n} rows.")
    _check_real(f"{name}/y", sy)
    if ids is not None:
        sid = _source(f"{name}/ids", ids, rows)
        if sid.shape != (n,):
            raise CorpusError(f"{name}/ids has shape {sid.shape}; expected ({n},).")
        if not np.issubdtype(sid.dtype, np.integer):
            raise CorpusError(f"{name}/ids has dtype {sid.dtype}; ids must be integers (they are stored as int64).")
        sid = sid.astype(np.int64)
        _check_unique_ids(f"{name}/ids", sid)
    else:
        # row numbers computed from each X chunk (not a free-standing da.arange): dask then
        # schedules each chunk's write and hash together instead of piling up checked chunks
        sid = sx.map_blocks(_row_numbers, drop_axis=1, dtype=np.int64, meta=np.empty((0,), dtype=np.int64))
    cx = sx.map_blocks(_checked_x, label=f"{name}/X", out_dtype=out_dtype, rows=rows, dtype=out_dtype,
                       meta=np.empty((0, 0), dtype=out_dtype))
    cy = sy.map_blocks(_checked_y, label=f"{name}/y", dtype=np.int8, meta=np.empty((0,), dtype=np.int8))
    return _PlannedSplit(name=name, X=cx, y=cy, ids=sid)


def _check_unique_ids(label: str, ids: da.Array) -> None:
    """Ids name rows: a duplicate would make every join of scores back to documents wrong.
    Reads the ids (8 bytes per row) once, before anything is written."""
    values = np.asarray(ids.compute(scheduler=dask.threaded.get))
    uniq, first, counts = np.unique(values, return_index=True, return_counts=True)
    if uniq.size == values.size:
        return
    dup = int(np.flatnonzero(counts > 1)[0])
    rows = np.flatnonzero(values == uniq[dup])[:2]
    raise CorpusError(
        f"{label} holds {values.size - uniq.size} duplicated value(s) (e.g. {uniq[dup]} at rows {rows[0]} and "
        f"{rows[1]}); ids must name the rows uniquely. Fix the ids, or leave them out to use row numbers."
    )


def _auto_rows(train_X, dtype) -> int:
    X = _source("train/X", train_X, 2**62, check=False)  # metadata only
    out = _x_dtype("train/X", X, dtype)
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
        group.create_array(f"{split.name}/ids", shape=(n,), chunks=(rows,), dtype="int64", **kw),
    ]


def _hold_out(X, y, ids, fraction: float, seed: int, rows: int):
    """Seeded train/test split of one source: (train parts, test parts, record)."""
    n = _source("train/X", X, 2**62, check=False).shape[0]  # metadata only
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
    values = np.asarray(_compute_local(_source("split", split, rows), label="ingest: split column")[0]).astype(str)
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
    sx, sy = _source("train/X", X, rows), _source("train/y", y, rows)
    n = sx.shape[0]
    sid = _source("train/ids", ids, rows) if ids is not None else da.arange(n, chunks=sx.chunks[0], dtype=np.int64)
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
                        "files": _listing_signature(_source_file(location))}
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
    inputs = [_source_file(v) for v in sources if isinstance(v, (str, os.PathLike))] + [local_path(p) for p in inputs]
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
