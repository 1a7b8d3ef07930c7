"""Zarr corpora: open and validate (DESIGN.md §2), and ingest from NumPy / Zarr sources.

Layout, version 1::

    corpus.zarr/                      attrs: {"rifscale_format": 1, ...provenance}
      train/X    (n, d)  float32|float64, chunked by rows only
      train/y    (n,)    integer 0/1, chunked like the rows of X
      train/ids  (n,)    int64 (optional; defaults to row number)
      test/X, test/y, test/ids        same rules

:func:`open_corpus` checks everything that metadata and the (small) label arrays can
tell, and returns a frozen :class:`Corpus` of Dask arrays aligned to the Zarr row chunks.
Non-finite values in X are found where X is read anyway: during ingest, and by the first
pass of the fit (:func:`find_nonfinite` then names the chunk and row).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import dask
import dask.array as da
import numpy as np
import zarr

from .errors import CorpusError, OutputExistsError

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
    """A validated corpus. Build it with :func:`open_corpus` or :meth:`from_arrays`."""

    train: Split
    test: Split | None
    path: str | None
    attrs: dict
    fingerprint: str

    @property
    def n(self) -> int:
        return self.train.n

    @property
    def d(self) -> int:
        return self.train.d

    @classmethod
    def from_arrays(cls, X, y, X_test=None, y_test=None, *, chunk_rows: int = 65536) -> "Corpus":
        """Wrap in-memory (NumPy, Zarr or Dask) arrays as a corpus, validated like a store."""
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
        y = y.rechunk((X.chunks[0],))
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
    lo, hi = dask.compute(y.min(), y.max())
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
    """Open and validate a rifscale Zarr corpus (layout version 1).

    Raises :class:`~rifscale.errors.CorpusError` naming the array and the fix when the
    store does not follow the layout.
    """
    path = str(path)
    if not Path(path).exists():
        raise CorpusError(
            f"No corpus at {path!r}. Create one with `rifscale ingest {path} --train-X X.npy "
            "--train-y y.npy --test-X Xt.npy --test-y yt.npy`."
        )
    try:
        root = zarr.open_group(path, mode="r")
    except Exception as exc:  # zarr raises several types for "not a group"
        raise CorpusError(f"{path!r} is not a Zarr group ({exc}).") from exc
    attrs = root.attrs.asdict()
    version = attrs.get("rifscale_format")
    if version != FORMAT_VERSION:
        raise CorpusError(
            f"{path!r} has rifscale_format = {version!r}; this rifscale reads layout version "
            f"{FORMAT_VERSION}. Re-create the corpus with `rifscale ingest`."
        )
    train = _open_split(root, "train", path, required=True)
    test = _open_split(root, "test", path, required=False)
    _check_same_d(train, test)
    meta = {
        "format": version,
        "content": attrs.get("content_sha256"),
        "train": _split_meta(train),
        "test": _split_meta(test) if test else None,
    }
    return Corpus(train=train, test=test, path=os.path.abspath(path), attrs=attrs, fingerprint=_hash_json(meta))


def _open_split(root, name: str, path: str, *, required: bool) -> Split | None:
    if name not in root:
        if required:
            raise CorpusError(f"{path!r} has no '{name}' group; a corpus needs {name}/X and {name}/y.")
        return None
    group = root[name]
    for key in ("X", "y"):
        if key not in group:
            raise CorpusError(f"{path!r} has no array '{name}/{key}'.")
    X = da.from_zarr(group["X"])
    y = da.from_zarr(group["y"])
    ids = da.from_zarr(group["ids"]) if "ids" in group else da.arange(X.shape[0], chunks=X.chunks[0], dtype=np.int64)
    split = Split(X=X, y=y, ids=ids)
    validate_split(f"{name}", split)
    _check_labels(name, y)
    return split


def _first_nonfinite(x, block_info=None):
    from .kernels import array_namespace

    xp = array_namespace(x)
    bad = xp.flatnonzero(~xp.isfinite(x).all(axis=1))
    start = block_info[0]["array-location"][0][0]
    return np.array([start + int(bad[0]) if bad.size else -1], dtype=np.int64)


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


class _RowSource:
    """Reads rows of a 1-D or 2-D source in order, a chunk at a time."""

    def __init__(self, label: str, shape, dtype, read):
        self.label, self.shape, self.dtype, self._read = label, tuple(shape), np.dtype(dtype), read

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        for start in range(0, self.shape[0], rows):
            yield np.asarray(self._read(start, min(start + rows, self.shape[0])))


def _read_npy_header(fh, label: str):
    major, _ = np.lib.format.read_magic(fh)
    readers = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}
    if major not in readers:
        raise CorpusError(f"{label} uses .npy format version {major}; save it with numpy's default format.")
    return readers[major](fh)


def _npz_member_source(label: str, file: str, key: str) -> _RowSource:
    """Stream one member of an .npz (compressed or not) without reading it whole."""
    with zipfile.ZipFile(file) as zf:
        names = {n[:-4] if n.endswith(".npy") else n: n for n in zf.namelist()}
        if key not in names:
            raise CorpusError(f"{file!r} has no array {key!r}; it holds {sorted(names)}.")
        with zf.open(names[key]) as fh:
            shape, fortran, dtype = _read_npy_header(fh, f"{file}:{key}")
    if fortran and len(shape) > 1:
        raise CorpusError(f"{label}: {file}:{key} is stored in Fortran order; save it C-ordered (np.ascontiguousarray).")
    state = {"fh": None, "zf": None, "pos": 0}
    row_items = int(np.prod(shape[1:], dtype=np.int64))

    def read(start, stop):
        if state["fh"] is None or start != state["pos"]:
            state["zf"] = zipfile.ZipFile(file)
            state["fh"] = state["zf"].open(names[key])
            _read_npy_header(state["fh"], f"{file}:{key}")
            state["fh"].read(start * row_items * dtype.itemsize)
        nbytes = (stop - start) * row_items * dtype.itemsize
        buf = state["fh"].read(nbytes)
        state["pos"] = stop
        if stop == shape[0]:
            state["fh"].close()
            state["zf"].close()
            state["fh"] = None
        return np.frombuffer(buf, dtype=dtype).reshape((stop - start,) + tuple(shape[1:]))

    return _RowSource(label, shape, dtype, read)


def _source(label: str, spec) -> _RowSource:
    """Resolve an ingest source: an array, ``file.npy``, ``file.npz:key``, or a Zarr array
    (``store.zarr/path/to/array`` or ``store.zarr:path/to/array``)."""
    if not isinstance(spec, (str, os.PathLike)):
        arr = spec if isinstance(spec, zarr.Array) else np.asarray(spec)
        return _RowSource(label, arr.shape, arr.dtype, lambda a, b: arr[a:b])
    spec = str(spec)
    file, _, key = spec.partition(":") if ":" in spec and not Path(spec).exists() else (spec, "", "")
    if not Path(file).exists():
        raise CorpusError(f"{label}: source {spec!r} does not exist.")
    if file.endswith(".npz"):
        if not key:
            raise CorpusError(f"{label}: name the array inside the archive, e.g. {file}:{label.replace('/', '_')}.")
        return _npz_member_source(label, file, key)
    if file.endswith(".npy"):
        arr = np.load(file, mmap_mode="r")
        return _RowSource(label, arr.shape, arr.dtype, lambda a, b: arr[a:b])
    try:
        arr = zarr.open_array(file, path=key or None, mode="r") if key else zarr.open_array(file, mode="r")
    except Exception as exc:
        raise CorpusError(
            f"{label}: cannot read {spec!r} as .npy, .npz:key or a Zarr array ({exc})."
        ) from exc
    return _RowSource(label, arr.shape, arr.dtype, lambda a, b: arr[a:b])


def _prepare_X(src: _RowSource, dtype) -> np.dtype:
    if len(src.shape) != 2 or 0 in src.shape:
        raise CorpusError(f"{src.label} must be a non-empty 2-D array (n, d); got shape {src.shape}.")
    native = src.dtype.newbyteorder("=")  # a big-endian float64 source stays float64
    out = np.dtype(dtype) if dtype is not None else (native if native in FLOAT_DTYPES else np.dtype("float32"))
    if out not in FLOAT_DTYPES:
        raise CorpusError(f"--dtype must be float32 or float64; got {out}.")
    if not (np.issubdtype(src.dtype, np.number) or src.dtype == np.bool_):
        raise CorpusError(f"{src.label} has non-numeric dtype {src.dtype}.")
    return out


def _labels(chunk: np.ndarray, label: str, start: int) -> np.ndarray:
    bad = ~np.isin(chunk, (0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CorpusError(
            f"{label} holds a label outside {{0, 1}} at row {start + i} (value {chunk[i].item()!r}). "
            "Map your two classes to 0 and 1 before ingesting."
        )
    return chunk.astype(np.int8)


def _write_split(group, name: str, X, y, ids, chunk_rows: int, dtype, hasher) -> int:
    sx, sy = _source(f"{name}/X", X), _source(f"{name}/y", y)
    out_dtype = _prepare_X(sx, dtype)
    n, d = sx.shape
    if sy.shape != (n,):
        raise CorpusError(f"{name}/y has shape {sy.shape}; expected ({n},) to match {name}/X with n = {n} rows.")
    sid = _source(f"{name}/ids", ids) if ids is not None else None
    if sid is not None and sid.shape != (n,):
        raise CorpusError(f"{name}/ids has shape {sid.shape}; expected ({n},).")
    if sid is not None and not np.issubdtype(sid.dtype, np.integer):
        raise CorpusError(f"{name}/ids has dtype {sid.dtype}; ids must be integers (they are stored as int64).")
    rows = min(chunk_rows, n)
    aX = group.create_array(f"{name}/X", shape=(n, d), chunks=(rows, d), dtype=out_dtype)
    ay = group.create_array(f"{name}/y", shape=(n,), chunks=(rows,), dtype="int8")
    aid = group.create_array(f"{name}/ids", shape=(n,), chunks=(rows,), dtype="int64")
    id_chunks = sid.chunks(rows) if sid is not None else None
    for k, (cx, cy) in enumerate(zip(sx.chunks(rows), sy.chunks(rows), strict=True)):
        start = k * rows
        stop = start + cx.shape[0]
        cx = cx.astype(out_dtype, copy=False)
        finite = np.isfinite(cx).all(axis=1)
        if not finite.all():
            raise CorpusError(
                f"{name}/X holds NaN or Inf at row {start + int(np.flatnonzero(~finite)[0])} "
                f"(row chunk {start // rows}). Clean or impute those rows first."
            )
        cy = _labels(cy, f"{name}/y", start)
        cid = next(id_chunks).astype(np.int64) if id_chunks is not None else np.arange(start, stop, dtype=np.int64)
        aX[start:stop] = cx
        ay[start:stop] = cy
        aid[start:stop] = cid
        for part in (cx, cy, cid):
            hasher.update(np.ascontiguousarray(part).tobytes())
    return n


def ingest(
    out: str | os.PathLike,
    *,
    train_X,
    train_y,
    test_X=None,
    test_y=None,
    train_ids=None,
    test_ids=None,
    chunk_rows: int = 65536,
    dtype=None,
    overwrite: bool = False,
    provenance: dict | None = None,
) -> Corpus:
    """Build a layout-1 corpus at ``out``, streaming the sources a row chunk at a time.

    Each source is an array, a ``.npy`` file (memory-mapped), ``file.npz:key`` (streamed
    from the archive) or a Zarr array path (``store.zarr/path`` or ``store.zarr:path``).
    The corpus is written to a temporary sibling and moved into place only when complete;
    an existing ``out`` is refused unless ``overwrite``.
    """
    out = Path(out)
    if int(chunk_rows) != chunk_rows or chunk_rows < 1:
        raise CorpusError(f"chunk_rows must be a positive integer; got {chunk_rows!r}.")
    if (test_X is None) != (test_y is None):
        raise CorpusError("Pass both test_X and test_y, or neither.")
    if test_ids is not None and test_X is None:
        raise CorpusError("test_ids was given without test_X and test_y; pass the whole test split.")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{str(out)!r} already exists; choose another path or pass --overwrite to replace it.")
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        root = zarr.open_group(str(tmp), mode="w")
        hasher = hashlib.sha256()
        n = _write_split(root, "train", train_X, train_y, train_ids, int(chunk_rows), dtype, hasher)
        n_test = 0
        if test_X is not None:
            n_test = _write_split(root, "test", test_X, test_y, test_ids, int(chunk_rows), dtype, hasher)
        root.attrs.update(
            {
                "rifscale_format": FORMAT_VERSION,
                "content_sha256": hasher.hexdigest(),
                "n_train": n,
                "n_test": n_test,
                **(provenance or {}),
            }
        )
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return open_corpus(out)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished directory into place; an old one is removed only afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
