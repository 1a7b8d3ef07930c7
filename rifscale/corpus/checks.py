"""Data checks on a corpus: chunks present, non-finite values, outlying scales; named errors."""

from __future__ import annotations

import itertools
import uuid

import dask.array as da
import numpy as np
import zarr

from ..errors import CorpusError


def short_chunks(chunks) -> str:
    return str(tuple(chunks[:3])) + ("..." if len(chunks) > 3 else "")


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
        f"row chunks missing: {short_chunks(tuple(row_chunks))}). zarr would read them as zeros, so rifscale refuses "
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
    from .._namespace import array_namespace

    xp = array_namespace(x)
    bad = xp.flatnonzero(~xp.isfinite(x).all(axis=1))
    start = block_info[0]["array-location"][0][0]
    return np.array([start + int(bad[0]) if bad.size else -1], dtype=np.int64)


def _chunk_max_abs(x, block_info=None):
    from .._namespace import array_namespace, to_numpy

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
