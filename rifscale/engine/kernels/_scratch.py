"""Per-thread scratch buffers for the row-block kernels.

A kernel that casts or scales a sub-block of rows needs a few large temporaries (a
2048 × d float64 copy of the rows, the scaled rows, a d × d Gram product) for every
sub-block. Allocated afresh each time, each is an ``mmap``/``munmap`` pair whose pages
fault in again on first touch whenever glibc does not keep freed memory — and dask's
worker processes run with ``MALLOC_TRIM_THRESHOLD_`` set (distributed's
``nanny.pre-spawn-environ``), which does exactly that: measured on a 20 000 × 384 float32
block, the float32 Newton pass took 1.5× and the gradient-only pass 2.4× as long in a
dask worker as in a plain process (benchmarks/results/profile-cluster-2026-12-07.md).
Reusing one buffer per thread and purpose makes the kernels' cost independent of the
allocator's settings.

The buffers live as long as the thread (dask's worker threads are long-lived): a few
sub-blocks' worth, ``O(SUB_ROWS · d + d²)`` bytes per thread and purpose.
"""

from __future__ import annotations

import threading

import numpy as np

_LOCAL = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A C-contiguous NumPy array of ``shape`` and ``dtype`` owned by this thread and
    reused by the next call with the same ``name`` and dtype; its contents are undefined.

    Two arrays obtained under the same name in one thread share memory: a kernel uses one
    name per temporary that must stay alive at the same time.
    """
    dtype = np.dtype(dtype)
    size = 1
    for n in shape:
        size *= int(n)
    buffers = getattr(_LOCAL, "buffers", None)
    if buffers is None:
        buffers = _LOCAL.buffers = {}
    key = (name, dtype.str)
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = _page_aligned(max(size, 1), dtype)
    return buf[:size].reshape(shape)


PAGE = 4096


def _page_aligned(size: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialised 1-D array of ``size`` items whose first byte is on a page boundary."""
    raw = np.empty(size * dtype.itemsize + PAGE, dtype=np.uint8)
    start = -raw.ctypes.data % PAGE
    return raw[start : start + size * dtype.itemsize].view(dtype)


def rows_as(x, dtype, name: str):
    """``x`` (a NumPy array) copied, cast to ``dtype``, into the thread's scratch buffer
    ``name``.

    The copy is made also when ``x`` already has that dtype: the scratch buffers start on
    a page boundary, and BLAS and NumPy's reductions may split a sum differently for
    operands at other alignments, so copying makes a row's result independent of where
    its block happens to sit in memory (a resumed run, another worker, another thread).
    It costs one memory pass over data that the products then read many times.
    """
    dtype = np.dtype(dtype)
    out = scratch(name, x.shape, dtype)
    np.copyto(out, x, casting="same_kind" if dtype.kind == x.dtype.kind else "unsafe")
    return out
