"""Parquet tables as ingest sources, read row group by row group (never whole).

An embedding table is a Parquet file, a directory of them, or a glob, on any file system
fsspec knows (a local path, ``file://``, ``s3://``, ``gs://``, ``memory://``...). Its
columns:

- the embedding: one column of lists (``fixed_size_list<float>`` or ``list<float>``, every
  row of the same length d), or one numeric column per dimension (``x_columns``: a list of
  names or a glob such as ``"f*"``, in the table's column order);
- the label (integers or booleans 0/1), optionally the ids (integers or text) and a split column
  whose values are ``"train"`` and ``"test"``.

:func:`parquet_sources` reads the footers only and returns Dask arrays whose tasks each
read one row group's columns (the unit Parquet stores and compresses together), which
:func:`rifscale.corpus.ingest.ingest` then checks, rechunks and writes chunk-parallel. A task holds
one row group's columns in memory: write the table with row groups of at most about
100 MB (pyarrow's ``row_group_size``) so that the ingest is parallel and small per task.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.base import tokenize

from ...errors import CorpusError
from ..model import TEXT_IDS, text_ids

@dataclass(frozen=True)
class _Piece:
    """One row group of one file, starting at row ``start`` of the table."""

    file: str
    row_group: int
    rows: int
    start: int = 0


def _filesystem(url: str):
    from ...outputs import filesystem

    return filesystem(url)


def _files(fs, path: str, url: str) -> list[str]:
    if fs.isdir(path):
        files = sorted(f for f in fs.find(path) if f.endswith((".parquet", ".parq", ".pq")))
        where = "under the directory"
    elif any(c in path for c in "*?["):
        files = sorted(fs.glob(path))
        where = "matching the pattern"
    elif fs.exists(path):
        files = [path]
        where = ""
    else:
        raise CorpusError(f"Parquet source {url!r} does not exist.")
    if not files:
        raise CorpusError(f"No Parquet files (*.parquet, *.parq, *.pq) {where} {url!r}.")
    return files


def _parquet_file(fs, file: str):
    import pyarrow.parquet as pq

    return pq.ParquetFile(fs.open(file, "rb"))


def _read_columns(fs, piece: _Piece, columns: list[str]):
    try:
        return _parquet_file(fs, piece.file).read_row_group(piece.row_group, columns=columns)
    except Exception as exc:
        raise CorpusError(f"Cannot read row group {piece.row_group} of {piece.file!r} ({exc}); the file is "
                          "damaged or was changed while ingesting.") from exc


def _where(piece: _Piece, start: int, row: int) -> str:
    return f"row {start + row} (row {row} of row group {piece.row_group} in {piece.file!r})"


def _no_nulls(column, name: str, piece: _Piece, start: int) -> None:
    if column.null_count:
        row = int(np.flatnonzero(np.asarray(column.is_null()))[0])
        raise CorpusError(f"Parquet column {name!r} is null at {_where(piece, start, row)}; fill or drop those rows.")


def _list_rows(column, name: str, d: int, piece: _Piece, start: int) -> np.ndarray:
    """A list column as an (m, d) array; every row must hold d numbers."""
    import pyarrow as pa

    column = column.combine_chunks()
    _no_nulls(column, name, piece, start)
    if pa.types.is_fixed_size_list(column.type):
        values = column.flatten()
    else:
        lengths = np.diff(np.asarray(column.offsets))
        if (lengths != d).any():
            row = int(np.flatnonzero(lengths != d)[0])
            raise CorpusError(f"Parquet column {name!r} holds {lengths[row]} values at {_where(piece, start, row)}; "
                              f"every row must hold d = {d} (the length of the first row).")
        values = column.flatten()
    if values.null_count:
        row = int(np.flatnonzero(np.asarray(values.is_null()))[0]) // d
        raise CorpusError(f"Parquet column {name!r} holds a null value at {_where(piece, start, row)}.")
    return values.to_numpy(zero_copy_only=False).reshape(len(column), d)


def _read_piece(block, *, fs, columns, kind, d, classes=None):
    """The block of one row group (``block``: a one-element array of its :class:`_Piece`):
    X (m, d), or one column (m,); ``kind="codes"``: the column's values as their positions
    in the sorted ``classes`` (int16)."""
    piece = block[0]
    start = piece.start
    table = _read_columns(fs, piece, columns)
    if kind == "list":
        return _list_rows(table.column(0), columns[0], d, piece, start)
    for name in columns:
        _no_nulls(table.column(name), name, piece, start)
    if kind == "columns":
        return np.column_stack([table.column(name).to_numpy() for name in columns])
    values = table.column(0).to_numpy(zero_copy_only=False)
    if kind == "text":
        return text_ids(values, f"The id column {columns[0]!r} (row group {piece.row_group} of {piece.file!r})")
    if kind == "codes":
        values = values.astype(str)
        codes = np.searchsorted(classes, values)
        found = codes < len(classes)
        if not (found.all() and (classes[codes[found]] == values[found]).all()):
            raise CorpusError(f"The label column {columns[0]!r} changed while it was ingested: row group "
                              f"{piece.row_group} of {piece.file!r} holds a class the first read did not see. "
                              "Ingest again.")
        return codes.astype(np.int16)
    return values


def _piece_classes(piece, *, fs, column: str) -> np.ndarray:
    """The distinct values (sorted, as str) of a label column in one row group."""
    col = _read_columns(fs, piece, [column]).column(0)
    _no_nulls(col, column, piece, piece.start)
    return np.unique(col.to_numpy(zero_copy_only=False).astype(str))


def _is_text(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _numeric(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _x_layout(schema, x_column: str | None, x_columns, url: str):
    """(kind, column names, d, dtype) of the embedding."""
    import pyarrow as pa

    names = schema.names
    if x_columns is not None:
        if isinstance(x_columns, str):
            wanted = [n for n in names if fnmatch.fnmatchcase(n, x_columns)]
            if not wanted:
                raise CorpusError(f"No column of {url!r} matches x_columns {x_columns!r}; its columns are "
                                  f"{names[:12]}{'...' if len(names) > 12 else ''}.")
        else:
            wanted = list(x_columns)
            missing = [n for n in wanted if n not in names]
            if missing:
                raise CorpusError(f"{url!r} has no column(s) {missing[:5]}; its columns are {names[:12]}.")
        bad = [n for n in wanted if not _numeric(schema.field(n).type)]
        if bad:
            raise CorpusError(f"Embedding column(s) {bad[:5]} of {url!r} are not numeric "
                              f"({schema.field(bad[0]).type}).")
        dtype = np.result_type(*[schema.field(n).type.to_pandas_dtype() for n in wanted])
        return "columns", wanted, len(wanted), dtype
    if x_column not in names:
        raise CorpusError(f"{url!r} has no embedding column {x_column!r}; its columns are {names[:12]}. Name it "
                          "with --x-column NAME (a list column), or --x-columns 'PATTERN' (one column per dimension).")
    t = schema.field(x_column).type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
            or not _numeric(t.value_type):
        raise CorpusError(f"Embedding column {x_column!r} of {url!r} has type {t}; expected a list of numbers "
                          "(e.g. fixed_size_list<float>), or use --x-columns for one column per dimension.")
    d = t.list_size if pa.types.is_fixed_size_list(t) else None
    return "list", [x_column], d, np.dtype(t.value_type.to_pandas_dtype())


def _first_length(fs, pieces, column: str) -> int:
    for piece in pieces:
        if piece.rows:
            col = _read_columns(fs, piece, [column]).column(0).combine_chunks()
            return int(np.diff(np.asarray(col.offsets))[0])
    return 0


def parquet_sources(
    url: str,
    *,
    x_column: str | None = "embedding",
    x_columns=None,
    y_column: str = "label",
    id_column: str | None = None,
    split_column: str | None = None,
) -> dict:
    """Dask arrays over a Parquet table, one block per row group, for :func:`rifscale.corpus.ingest.ingest`.

    Returns ``{"train_X", "train_y", "train_ids"?, "split"?, "classes"?}`` (``split``: each
    row's ``split_column`` value, "train" or "test", when a split column is named;
    ``classes``: for a text label column, its distinct values in sorted order, the labels
    being their positions 0..K−1). Only the footers are read here — and, for text labels,
    the label column once, in parallel, for its classes; every other read happens in the
    ingest's tasks.
    """
    fs, path = _filesystem(url)
    files = _files(fs, path, url)
    pieces, schema = [], None
    for file in files:
        pf = _parquet_file(fs, file)
        if schema is None:
            schema = pf.schema_arrow
        elif not pf.schema_arrow.equals(schema):
            raise CorpusError(f"{file!r} has another schema than {files[0]!r}; all files of a table must match "
                              f"({pf.schema_arrow.names[:6]} vs {schema.names[:6]}).")
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            pieces.append(_Piece(file, g, rows, start=pieces[-1].start + pieces[-1].rows if pieces else 0))
    kind, x_names, d, x_dtype = _x_layout(schema, x_column, x_columns, url)
    if d is None:
        d = _first_length(fs, pieces, x_names[0])
    if d < 1:
        raise CorpusError(f"The embedding column {x_names[0]!r} of {url!r} is empty (no rows or zero-length lists).")
    for role, name in (("label", y_column), ("id", id_column), ("split", split_column)):
        if name is not None and name not in schema.names:
            raise CorpusError(f"{url!r} has no {role} column {name!r}; its columns are {schema.names[:12]}.")
    rows = tuple(p.rows for p in pieces)
    if not sum(rows):
        raise CorpusError(f"The Parquet table {url!r} has no rows.")
    # one block per row group, each task given its own piece (not the list of all of them)
    index = np.empty(len(pieces), dtype=object)
    index[:] = pieces
    index = da.from_array(index, chunks=1, name=f"parquet-pieces-{tokenize(url, pieces)}")

    def column(names, kind_, dtype, shape_tail, **kwargs):
        chunks = (rows,) + tuple((s,) for s in shape_tail)
        return da.map_blocks(_read_piece, index, fs=fs, columns=names, kind=kind_, d=d, chunks=chunks,
                             new_axis=list(range(1, len(chunks))) or None, dtype=dtype,
                             meta=np.empty((0,) * len(chunks), dtype=dtype), **kwargs)

    y_type = schema.field(y_column).type
    out = {"train_X": column(x_names, kind, x_dtype, (d,))}
    if _is_text(y_type):  # classes by name: their sorted order gives the labels 0..K−1
        classes = _label_classes(fs, pieces, y_column, url)
        out["train_y"] = column([y_column], "codes", np.dtype(np.int16), (), classes=classes)
        out["classes"] = classes.tolist()
    elif _numeric(y_type):
        out["train_y"] = column([y_column], "one", np.dtype(y_type.to_pandas_dtype()), ())
    else:
        raise CorpusError(f"The label column {y_column!r} of {url!r} has type {y_type}; rifscale reads integer "
                          "labels 0..K-1 (or 0/1, or booleans), or text labels (strings), whose sorted distinct "
                          "values become the classes 0..K-1.")
    if id_column is not None:
        id_type = schema.field(id_column).type
        if _is_text(id_type):  # text ids (document names, hashes, URLs) are kept as they are
            out["train_ids"] = column([id_column], "text", TEXT_IDS, ())
        elif _numeric(id_type) and np.issubdtype(np.dtype(id_type.to_pandas_dtype()), np.integer):
            out["train_ids"] = column([id_column], "one", np.dtype(id_type.to_pandas_dtype()), ())
        else:
            raise CorpusError(f"The id column {id_column!r} of {url!r} has type {id_type}; rifscale ids are "
                              "integers (stored as int64) or text (strings). Convert the column to one of those, "
                              "or leave --id-column out to use row numbers.")
    if split_column is not None:
        out["split"] = column([split_column], "one", object, ())
    return out


def _label_classes(fs, pieces, column: str, url: str) -> np.ndarray:
    """The sorted distinct values of a text label column over every row group (read in
    parallel on local threads), refused beyond what a corpus's int8 labels hold."""
    import dask

    from ...config import MAX_CLASSES

    parts = dask.compute(*[dask.delayed(_piece_classes)(p, fs=fs, column=column) for p in pieces if p.rows],
                         scheduler="threads")
    classes = np.unique(np.concatenate(parts)) if parts else np.array([], dtype=str)
    if classes.size > min(MAX_CLASSES, 128):
        raise CorpusError(f"The label column {column!r} of {url!r} has {classes.size} distinct values (e.g. "
                          f"{classes[:5].tolist()}); a corpus holds at most 128 classes. Is it the label column?")
    return classes


def ingest_parquet(out, url: str, *, x_column: str | None = "embedding", x_columns=None, y_column: str = "label",
                   id_column: str | None = None, split_column: str | None = None, **ingest_kwargs):
    """:func:`rifscale.ingest` from a Parquet table (a file, a directory or a glob, at a
    path or an fsspec URL). Without a split column, ``test_fraction`` draws the test
    split. The table's location and columns are recorded in the corpus attributes
    (``source``).

    Each task reads one row group of the columns it needs, never the whole table: write
    tables with row groups of about 100 MB or less so that the ingest is parallel. This is
    ``rifscale ingest OUT --parquet URL``.

    Parameters
    ----------
    out : str or os.PathLike
        The corpus to create.
    url : str
        A Parquet file, a directory of files or a glob, at a path or an fsspec URL
        (``s3://bucket/embeddings/``).
    x_column : str or None, default "embedding"
        The embedding column: a list of numbers per row (``fixed_size_list<float>`` or
        ``list<float>``).
    x_columns : str or list of str, optional
        One column per dimension instead, by name or by a glob such as ``"f*"`` (in the
        table's column order).
    y_column : str, default "label"
        The label column: integers 0..K−1 (0/1, or booleans, for the binary model), or
        text: its distinct values in sorted order become the classes 0..K−1, recorded in
        the corpus (``Corpus.classes``) and in every run's manifest.
    id_column : str, optional
        An id column, integers or text (default: row numbers).
    split_column : str, optional
        A column of "train"/"test" values naming each row's split.
    **ingest_kwargs
        Passed on to :func:`rifscale.ingest`: ``chunk_rows``, ``dtype``, ``compressor``,
        ``overwrite``, ``test_fraction``, ``seed``, ``provenance``.

    Returns
    -------
    Corpus
        The corpus written, as :func:`rifscale.open_corpus` opens it.

    Raises
    ------
    CorpusError
        A missing column, a null value, files of different schemas, an empty table, or
        anything :func:`rifscale.ingest` refuses.

    Examples
    --------
    >>> import numpy as np
    >>> import pyarrow as pa
    >>> import pyarrow.parquet as pq
    >>> import rifscale
    >>> from rifscale.demo import demo_data_path
    >>> data = np.load(demo_data_path())  # the embedded Fashion-MNIST pair
    >>> X, y = data["train_X"], data["train_y"]
    >>> table = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), X.shape[1]),
    ...                   "label": y, "doc_id": 1000 + np.arange(len(y))})
    >>> pq.write_table(table, "example-table.parquet", row_group_size=250)
    >>> corpus = rifscale.ingest_parquet("example-from-parquet.zarr", "example-table.parquet", id_column="doc_id",
    ...                                  test_fraction=0.2, seed=0, overwrite=True)
    >>> corpus.n + corpus.test.n, corpus.d, int(corpus.train.ids[0].compute()) >= 1000
    (1000, 196, True)
    """
    from ..ingest import ingest

    sources = parquet_sources(url, x_column=x_column, x_columns=x_columns, y_column=y_column,
                              id_column=id_column, split_column=split_column)
    classes = sources.pop("classes", None)
    record = {"format": "parquet", "url": str(url), "x": x_columns if x_columns is not None else x_column,
              "y": y_column, "ids": id_column, "split": split_column}
    provenance = {"source": record, **({"classes": classes} if classes is not None else {}),
                  **(ingest_kwargs.pop("provenance", None) or {})}
    return ingest(out, **sources, inputs=[url], provenance=provenance, **ingest_kwargs)
