r"""Family-independent products on one block of rows: the design rows ``z = [x, 1]``,
``z W`` with the squared norms ``‖L⁻¹ z‖²`` (the leverage's quadratic form), Gram sums,
the largest row norm and the keep-masks of removal sets. Any model family's kernels
(:mod:`rifscale.engine.family`) build on them; nothing here knows a link function.
"""

from __future__ import annotations

import numpy as np

from ..._namespace import array_namespace
from ._scratch import rows_as, scratch


def design(x, *, fit_intercept: bool):
    """Float64 design block ``z`` of shape (m, p): ``x`` with a column of ones appended
    when ``fit_intercept``."""
    xp = array_namespace(x)
    z = xp.asarray(x, dtype=xp.float64)
    if fit_intercept:
        z = xp.concatenate([z, xp.ones((z.shape[0], 1), dtype=xp.float64)], axis=1)
    return z


#: Rows per sub-block inside a chunk: keeps the float64 copy of a sub-block in cache and
#: bounds float32 accumulation to this many rows before it is added in float64.
SUB_ROWS = 2048


#: Rows per sub-block of :func:`design_products` (the scores pass, removal-set sums): its
#: float64 copy of 512 × 385 (1.5 MiB) stays in a core's L2 cache while the band products
#: read it again. Measured on 21 740 × 384 float32 blocks, each call on a new block: 101-108
#: ms per block against 124-142 ms at :data:`SUB_ROWS`, and two processes at once 103-110
#: against 151-165 ms (the L3 cache they share no longer carries the copies). The Gram
#: products keep :data:`SUB_ROWS`: their float64 sums are fastest on longer sub-blocks.
PRODUCT_ROWS = 512

#: Column bands of the triangular product ``z L⁻ᵀ`` (cost (bands + 1) / (2 bands) of a GEMM).
TRIANGLE_BANDS = 4


def gram_accumulate(b, out):
    """``out += bᵀ b`` for a (k, p) block ``b``, the product in ``b``'s precision.

    A plain GEMM: OpenBLAS's symmetric rank-k update (``syrk``, half the flops) measured
    no faster than GEMM on these shapes (benchmarks/README.md), so it buys nothing.
    """
    if array_namespace(b) is np:
        g = np.matmul(b.T, b, out=scratch("gram", (b.shape[1], b.shape[1]), b.dtype))
    else:
        g = b.T @ b
    out += g


def design_products(x, linv, W, *, fit_intercept: bool):
    """``z_iᵀ W`` (m, k) and ``q_i = ‖L⁻¹ z_i‖²`` (m,) for every row, ``z_i = [x_i, 1]`` or
    ``x_i``, in float64, the rows cast once per sub-block of :data:`PRODUCT_ROWS`.

    ``L⁻¹`` is lower-triangular, so the columns of ``v = z L⁻ᵀ`` in a band J need only
    the first ``max(J) + 1`` columns of z: with :data:`TRIANGLE_BANDS` bands the products
    cost about 5/8 of a full GEMM. They are NumPy GEMMs, which release the GIL (SciPy's
    ``trmm`` wrapper does not, so threads would not run it in parallel).
    """
    xp = array_namespace(x)
    if xp is np:  # every operand at the same alignment in every run (see rows_as)
        linv, W = rows_as(linv, np.float64, "linv"), rows_as(W, np.float64, "products")
    else:
        linv, W = xp.asarray(linv, dtype=xp.float64), xp.asarray(W, dtype=xp.float64)
    m, d = x.shape
    p = linv.shape[0]
    step = PRODUCT_ROWS if xp is np else max(m, 1)
    bands = TRIANGLE_BANDS if xp is np else 1
    edges = [round(p * (b + 1) / bands) for b in range(bands)]
    q = xp.empty(m, dtype=xp.float64)
    zw = xp.empty((m, W.shape[1]), dtype=xp.float64)
    for s in range(0, m, step):
        on_host = xp is np
        xb = rows_as(x[s : s + step], np.float64, "rows64") if on_host else xp.asarray(x[s : s + step], dtype=xp.float64)
        k = xb.shape[0]
        zw[s : s + k] = xb @ W[:d] + (W[d] if fit_intercept else 0.0)
        acc = xp.zeros(k, dtype=xp.float64)
        start = 0
        for stop in edges:
            cols = min(stop, d)  # columns of x that band [start, stop) of v depends on
            band = linv[start:stop, :cols].T
            v = np.matmul(xb[:, :cols], band, out=scratch("band", (k, stop - start), np.float64)) if on_host \
                else xb[:, :cols] @ band
            if fit_intercept and stop > d:
                v += linv[start:stop, d]
            acc += xp.einsum("ij,ij->i", v, v)
            start = stop
        q[s : s + k] = acc
    return zw, q


def max_row_norm_block(x, *, fit_intercept: bool):
    """(1, 1) float64 array: the largest ``‖z_i‖`` over the block's rows (0 for none).

    It bounds how fast the curvature weights α_i can change along a segment, which the
    error certificates need (:func:`rifscale.engine.newton.certify`)."""
    xp = array_namespace(x)
    if xp is not np:
        z = design(x, fit_intercept=fit_intercept)
        sq = xp.sum(z * z, axis=1)
        return xp.sqrt(xp.max(xp.concatenate([sq, xp.zeros(1, dtype=xp.float64)])))[None, None]
    if x.shape[0] == 0:
        return np.zeros((1, 1))
    largest = 0.0  # float64 row norms a sub-block at a time, in the thread's scratch buffer (no copy of the block)
    for s in range(0, x.shape[0], SUB_ROWS):
        xb = rows_as(x[s : s + SUB_ROWS], np.float64, "rows64")
        largest = max(largest, float(np.einsum("ij,ij->i", xb, xb).max()))
    return np.sqrt(np.array([[largest + float(fit_intercept)]]))


def rows_in_block(s, start: int, stop: int) -> np.ndarray:
    """Positions within the block of rows ``[start, stop)`` of the sorted row numbers ``s``
    that fall inside it."""
    lo, hi = (int(v) for v in np.searchsorted(s, [start, stop]))
    return np.asarray(s[lo:hi]) - start


def keep_mask(rows, sets):
    """(m, K) float64 weights: 0 where row ``rows[i]`` is in ``sets[k]``, 1 elsewhere.

    ``rows`` are the block's consecutive global row numbers; each set is a sorted array of
    row numbers (only its part inside the block is looked at).
    """
    xp = array_namespace(rows)
    m = rows.shape[0]
    mask = xp.ones((m, len(sets)), dtype=xp.float64)
    if m == 0:
        return mask
    start, stop = int(rows[0]), int(rows[-1]) + 1
    for k, s in enumerate(sets):
        local = rows_in_block(s, start, stop)
        if local.size:
            mask[xp.asarray(local), k] = 0.0
    return mask


def square_norm_block(x):
    """(1, 2) float64 array: ``[Σ ‖x_i‖², max ‖x_i‖²]`` over the block's rows (features
    only, no intercept column; 0 for no rows), in float64 a sub-block at a time."""
    xp = array_namespace(x)
    total, top = 0.0, 0.0
    for s in range(0, x.shape[0], SUB_ROWS):
        xb = rows_as(x[s : s + SUB_ROWS], np.float64, "rows64") if xp is np else xp.asarray(x[s : s + SUB_ROWS], dtype=xp.float64)
        sq = xp.einsum("ij,ij->i", xb, xb)
        total, top = total + float(sq.sum()), max(top, float(sq.max()))
    return np.array([[total, top]])
