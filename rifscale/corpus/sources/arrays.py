"""Array sources: .npy and .npz files, Zarr arrays and URLs, read row range by row range."""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile

import dask.array as da
import numpy as np
import zarr

from ..checks import check_chunks_present
from ..model import FLOAT_DTYPES, store_exists, open_node
from ...errors import CorpusError
from ...outputs import is_url, local_path


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
        fh = stack.enter_context(open_node(file))
        if member is not None:
            fh = stack.enter_context(stack.enter_context(zipfile.ZipFile(fh)).open(member))
        fh.seek(offset + start * row_bytes)
        buf = fh.read((stop - start) * row_bytes)
    return np.frombuffer(buf, dtype=dtype).reshape((stop - start,) + tuple(shape[1:]))


def _npz_memmap(file: str, member: str, offset: int, dtype, shape, label: str):
    """A Fortran-ordered member as a read-only memory map (stored members), or loaded
    whole (compressed members cannot be mapped)."""
    with open_node(file) as raw, zipfile.ZipFile(raw) as zf:
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
    with open_node(file) as raw, zipfile.ZipFile(raw) as zf:
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


def source_of(label: str, spec, rows: int, *, check: bool = True) -> da.Array:
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


def _split_spec(spec: str) -> tuple[str, str]:
    """``file.npz:key`` / ``store.zarr:path`` -> (file, key); a location that exists as
    given (colons and all) is a file. The colon of a URL's scheme is not a separator."""
    spec = local_path(spec)
    scheme, sep, rest = spec.rpartition("://")
    if ":" in rest and not store_exists(spec):
        file, _, key = rest.rpartition(":")
        return scheme + sep + file, key
    return spec, ""


def source_file(spec) -> str:
    return _split_spec(str(spec))[0]


def _npy_url(label: str, file: str, rows: int) -> da.Array:
    with open_node(file) as fh:
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
    if not store_exists(file):
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


def source_x_dtype(label: str, X: da.Array, dtype) -> np.dtype:
    if X.ndim != 2 or 0 in X.shape:
        raise CorpusError(f"{label} must be a non-empty 2-D array (n, d); got shape {X.shape}.")
    native = X.dtype.newbyteorder("=")  # a big-endian float64 source stays float64
    out = np.dtype(dtype) if dtype is not None else (native if native in FLOAT_DTYPES else np.dtype("float32"))
    if out not in FLOAT_DTYPES:
        raise CorpusError(f"--dtype must be float32 or float64; got {out}.")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise CorpusError(f"{label} has non-numeric dtype {X.dtype}.")
    check_real(label, X)
    return out


def check_real(label: str, a: da.Array) -> None:
    """Refuse complex values: casting them to float would drop the imaginary part."""
    if np.issubdtype(a.dtype, np.complexfloating):
        raise CorpusError(f"{label} is complex ({a.dtype}); rifscale fits real features and labels and will not drop "
                          "the imaginary part. Pass the real part, or real and imaginary parts as separate columns.")


def checked_x(x, *, label: str, out_dtype, rows: int, block_info=None):
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


#: Largest label a corpus stores (as int8): up to 128 classes 0..127.
MAX_STORED_LABEL = 127


def checked_y(y, *, label: str, block_info=None):
    """Class labels 0..127 as int8 (0/1 for the binary model, 0..K−1 for softmax; the model
    checks them against its classes when a run starts)."""
    y = np.asarray(y)
    bad = ~np.isin(y, np.arange(MAX_STORED_LABEL + 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        start = block_info[0]["array-location"][0][0]
        raise CorpusError(
            f"{label} holds a label outside 0..{MAX_STORED_LABEL} at row {start + i} (value {y[i].item()!r}). "
            "Labels are class numbers: 0 and 1 for the binary model, 0..K-1 for softmax; map your classes to "
            "these before ingesting."
        )
    return y.astype(np.int8)
