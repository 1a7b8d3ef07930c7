"""The corpus model: splits, opening and validating a corpus, its fingerprint (docs/design.md §5)."""

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

from .checks import short_chunks, check_chunks_present, read_array
from ..cluster import small_compute
from ..config import MAX_CLASSES
from ..errors import CorpusError
from ..outputs import filesystem, is_url, local_path


log = logging.getLogger(__name__)


FORMAT_VERSION = 1


FLOAT_DTYPES = (np.dtype("float32"), np.dtype("float64"))

#: Text ids in memory: NumPy's variable-width strings, which is what Zarr v3 reads back from
#: its ``string`` arrays. Stored ids are int64 or that Zarr type (docs/design.md §5).
TEXT_IDS = np.dtypes.StringDType()


def text_ids(block, label: str = "ids", block_info=None) -> np.ndarray:
    """One block of text ids (NumPy unicode, or Python ``str`` objects) as :data:`TEXT_IDS`;
    a missing or non-text value is refused naming its row."""
    a = np.asarray(block)
    if a.dtype.kind == "O":
        bad = next((i for i, v in enumerate(a.ravel()) if not isinstance(v, str)), None)
        if bad is not None:
            start = block_info[0]["array-location"][0][0] if block_info else 0
            raise CorpusError(f"{label} holds {a.ravel()[bad]!r} (a {type(a.ravel()[bad]).__name__}) at row "
                              f"{start + bad}; text ids must all be strings, none missing.")
    return a.astype(TEXT_IDS)


def as_ids(label: str, ids: da.Array) -> da.Array:
    """Ids as a corpus keeps them: integers as int64, text as :data:`TEXT_IDS`; nothing is read."""
    if np.issubdtype(ids.dtype, np.integer):
        return ids if ids.dtype == np.int64 else ids.astype(np.int64)
    if ids.dtype.kind in "UTO":
        if ids.dtype == TEXT_IDS:
            return ids
        return ids.map_blocks(text_ids, label=label, dtype=TEXT_IDS, meta=np.empty((0,), dtype=TEXT_IDS))
    raise CorpusError(f"{label} has dtype {ids.dtype}; ids are integers (stored as int64) or text (strings).")


def stored_id_dtype(dtype):
    """The Zarr dtype that stores ids of ``dtype``: ``"int64"``, or ``str`` (Zarr's ``string``)."""
    return str if np.dtype(dtype).kind in "UTO" else "int64"


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
        ``X`` (n, d) float32/float64, ``y`` (n,) class labels 0..K−1 and ``ids`` (n,) int64 or
        text (NumPy strings), Dask arrays sharing one row chunking.
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
    >>> import rifscale
    >>> from rifscale.demo import demo_corpus
    >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
    >>> corpus.n, corpus.d, corpus.test.n
    (1000, 196, 500)
    """

    train: Split
    test: Split | None
    path: str | None
    attrs: dict
    fingerprint: str

    @property
    def classes(self) -> list | None:
        """The class names of text labels — label k is ``classes[k]``, the distinct values
        of a Parquet label column of strings in sorted order — or None for integer labels.

        Examples
        --------
        >>> from rifscale.demo import demo_corpus
        >>> demo_corpus().classes is None  # integer labels
        True
        """
        classes = self.attrs.get("classes")
        return list(classes) if classes is not None else None

    @property
    def n(self) -> int:
        """Number of training rows.

        Examples
        --------
        >>> from rifscale.demo import demo_corpus
        >>> demo_corpus().n
        1000
        """
        return self.train.n

    @property
    def d(self) -> int:
        """Number of features (columns of X, without the intercept).

        Examples
        --------
        >>> from rifscale.demo import demo_corpus
        >>> demo_corpus().d
        196
        """
        return self.train.d

    @classmethod
    def from_arrays(cls, X, y, X_test=None, y_test=None, *, ids=None, test_ids=None,
                    chunk_rows: int = 65536) -> "Corpus":
        """Wrap in-memory (NumPy, Zarr or Dask) arrays as a corpus, validated like a store.

        Nothing is written. To keep the data (and have runs that can be reopened), write a
        corpus with :func:`rifscale.ingest` instead.

        Parameters
        ----------
        X : (n, d) array
            Training features, float32 or float64 (NumPy, Zarr or Dask).
        y : (n,) array
            Training labels: classes 0/1 (binary model) or 0..K−1 (``model="softmax"``).
        X_test, y_test : arrays, optional
            The test split (both or neither), with the same d.
        ids, test_ids : (n,) arrays, optional
            The rows' ids, unique, integers or text (default: the row numbers).
        chunk_rows : int, default 65536
            Rows per chunk of the Dask arrays (the unit of work of every pass).

        Returns
        -------
        Corpus
            Validated: finite X, integer labels 0..999, the same d in both splits.

        Raises
        ------
        CorpusError
            Naming the array and the problem (negative labels, NaN/Inf, ...).

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
        train = _split_from_arrays("train", X, y, ids, chunk_rows)
        test = None
        if X_test is not None or y_test is not None:
            if X_test is None or y_test is None:
                raise CorpusError("Pass both X_test and y_test, or neither.")
            test = _split_from_arrays("test", X_test, y_test, test_ids, chunk_rows)
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
    if ids is not None:
        aligned = X.ndim == 2 and np.shape(ids)[:1] == (X.shape[0],)  # else validate_split names the shapes
        ids = as_ids(f"{name}/ids", _to_dask(ids, X.chunks[0] if aligned else None))
        if ids.ndim == 1 and ids.shape[0] == X.shape[0] and ids.chunks[0] != X.chunks[0]:
            ids = ids.rechunk((X.chunks[0],))
        check_unique_ids(f"{name}/ids", ids)
    ids = (ids if ids is not None
           else da.arange(X.shape[0], chunks=X.chunks[0] if X.ndim else "auto", dtype=np.int64))
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
                f"{name}/{what} is chunked {short_chunks(a.chunks[0])} but {name}/X rows are chunked "
                f"{short_chunks(X.chunks[0])}; the row chunks must be aligned. Re-ingest with "
                "`rifscale ingest ... --chunk-rows N`, which writes them aligned."
            )
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise CorpusError(f"{name}/y has dtype {y.dtype}; expected integer labels 0/1 (e.g. int8).")
    if ids.dtype != np.int64 and ids.dtype != TEXT_IDS:
        raise CorpusError(f"{name}/ids has dtype {ids.dtype}; expected int64 or text (Zarr's string type).")


def _check_labels(name: str, y: da.Array) -> None:
    """Labels are classes 0, 1, ... (the model checks them against its classes: 0/1 for the
    binary model, 0..K−1 for softmax, when a run starts)."""
    lo, hi = small_compute(y.min(), y.max())
    if lo < 0 or hi >= MAX_CLASSES:
        bad = int(da.argmax((y < 0) | (y >= MAX_CLASSES)).compute())
        raise CorpusError(
            f"{name}/y holds labels outside 0..{MAX_CLASSES - 1} (min {lo}, max {hi}; first bad row {bad}). "
            "Labels are class numbers: 0/1 for binary logistic regression, 0..K-1 for the softmax model; "
            "map your classes to these before ingesting."
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
    if not store_exists(path):
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
    meta = {"format": version, "content": listing_signature(path) if version is None else
            root.attrs.get("content_sha256")}
    for name in ("train", "test"):
        group = zarr_member(root, name, path)
        X = zarr_member(group, "X", path) if group is not None else None
        meta[name] = None if X is None else {"shape": list(X.shape), "dtype": str(X.dtype),
                                             "chunks": [min(X.chunks[0], X.shape[0])]}
    return _hash_json(meta)


def zarr_member(group: zarr.Group, key: str, path: str):
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


def listing_signature(path: str) -> str:
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
    group = zarr_member(root, name, path)
    if group is None:
        if required:
            raise CorpusError(f"{path!r} has no '{name}' group; a corpus needs {name}/X and {name}/y.")
        return None
    arrays = {key: zarr_member(group, key, path) for key in ("X", "y", "ids")}
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
            check_unique_ids(f"{name}/ids", ids)
    split = Split(X=X, y=y, ids=ids)
    validate_split(f"{name}", split)
    _check_labels(name, y)
    return split


def _fit_layout(name: str, X: da.Array, y: da.Array, ids: da.Array):
    """A foreign group's arrays in the layout's chunking (read whole rows, y and ids in
    X's row chunks), integer ids as int64 and text ids as :data:`TEXT_IDS`; nothing is read."""
    if X.ndim == 2 and len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})
    if y.ndim == 1 and y.shape[:1] == X.shape[:1] and y.chunks[0] != X.chunks[0]:
        y = y.rechunk((X.chunks[0],))
    if ids.ndim == 1 and ids.shape[:1] == X.shape[:1]:
        if ids.chunks[0] != X.chunks[0]:
            ids = ids.rechunk((X.chunks[0],))
        if np.issubdtype(ids.dtype, np.integer) or ids.dtype.kind in "UTO":
            ids = as_ids(f"{name}/ids", ids)
    return X, y, ids


def store_exists(location: str) -> bool:
    if is_url(location):
        fs, path = filesystem(location)
        return fs.exists(path)
    return Path(location).exists()


def open_node(location: str):
    """A binary, seekable file object for a local path or a URL."""
    if is_url(location):
        fs, path = filesystem(location)
        return fs.open(path, "rb")
    return open(location, "rb")


def check_unique_ids(label: str, ids: da.Array) -> None:
    """Ids name rows: a duplicate would make every join of scores back to documents wrong.
    Reads the ids once, before anything is written."""
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
