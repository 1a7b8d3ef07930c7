"""The two graph shapes every stage uses, built with ``dask.array.blockwise``.

* :func:`block_sum`: a kernel maps each row chunk (X rows plus aligned 1-D row arrays) to
  one packed float64 row; the rows are tree-summed (``sum(axis=0)`` with dask's
  ``split_every``), so the driver only ever receives the final packed vector.
* :func:`row_map`: a kernel maps each row chunk to a (rows, width) block; the result is a
  lazy (n, width) array aligned to the input's row chunks.

Keyword arguments go to the kernel unchanged; a ``dask.delayed`` value (e.g. a broadcast
factor) becomes one dependency shared by all tasks rather than a copy per task. Every
kernel's block result is returned as a host (NumPy) array, so reductions and stores see
host arrays also when the chunks are CuPy arrays on a GPU.
"""

from __future__ import annotations

import functools

import dask.array as da
import numpy as np

from .kernels import to_numpy

_META = np.empty((0, 0), dtype=np.float64)


def _on_host(kernel):
    @functools.wraps(kernel)
    def run(*args, **kwargs):
        return to_numpy(kernel(*args, **kwargs))

    return run


def _args(X: da.Array, rows) -> list:
    args = [X, "ik"]
    for a in rows:
        if a is not None:
            args += [a, "i"]
    return args


def per_block(kernel, X: da.Array, *rows, width: int, **kwargs) -> da.Array:
    """(number of row chunks, width) array: one packed row per chunk."""
    return da.blockwise(
        _on_host(kernel),
        "ij",
        *_args(X, rows),
        new_axes={"j": width},
        adjust_chunks={"i": 1},
        concatenate=True,
        dtype=np.float64,
        meta=_META,
        **kwargs,
    )


def block_sum(kernel, X: da.Array, *rows, width: int, split_every: int | None = None, **kwargs) -> da.Array:
    """(width,) array: the kernel's packed rows summed over all row chunks, as a tree."""
    return per_block(kernel, X, *rows, width=width, **kwargs).sum(axis=0, split_every=split_every)


def row_map(kernel, X: da.Array, *rows, width: int, **kwargs) -> da.Array:
    """(n, width) array aligned to X's row chunks."""
    return da.blockwise(
        _on_host(kernel),
        "ij",
        *_args(X, rows),
        new_axes={"j": width},
        concatenate=True,
        dtype=np.float64,
        meta=_META,
        **kwargs,
    )


def row_mask(n: int, chunks, indices: np.ndarray) -> da.Array:
    """Lazy 0/1 float64 weights, 1 on the rows in ``indices``, aligned to ``chunks``."""
    rows = da.arange(n, chunks=chunks, dtype=np.int64)
    return da.isin(rows, np.asarray(indices, dtype=np.int64)).astype(np.float64)
