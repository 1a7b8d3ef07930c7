"""The graph shapes every stage uses, and the one order in which row blocks are summed.

* :func:`reduce_blocks` / :func:`block_sum`: a kernel maps each row chunk (X rows plus
  aligned 1-D row arrays) to one packed float64 row, and the rows are summed (the last
  ``maxima`` entries: their largest kept) in a fixed order: the blocks are cut into
  :func:`group_ranges` (contiguous runs, one per worker thread), each run is summed in
  block order, then the runs in run order. The order depends only on the number of
  blocks and of threads, not on where or when a block ran, so threads, worker
  processes and an external cluster give the same bits
  (docs/design.md §8.3). The driver receives one packed row per pass
  (:func:`reduce_blocks`) or per run (on a cluster, where each run is one task).
* :func:`row_map`: a kernel maps each row chunk to a (rows, width) block; the result is a
  lazy (n, width) array aligned to the input's row chunks.
* :func:`persist_rows`: keep aligned row-chunked arrays in worker memory with run g's
  blocks on the worker of thread slot g, so that a pass is one task per thread that reads
  only local blocks.

Keyword arguments go to the kernel unchanged; a future (e.g. a broadcast factor) becomes
one dependency shared by all tasks rather than a copy per task. Every kernel's block
result is returned as a host (NumPy) array, so reductions and stores see host arrays
also when the chunks are CuPy arrays on a GPU.
"""

from __future__ import annotations

import functools
import itertools

import dask
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


def block_sum(kernel, X: da.Array, *rows, width: int, row_start: bool = False, client=None, maxima: int = 0,
              **kwargs) -> da.Array:
    """Lazy (width,) array: the kernel's packed rows summed over all row chunks in the
    order of :func:`group_ranges` (see the module doc); of the last ``maxima`` entries the
    largest is kept instead (a max is exact: any order gives the same bits).
    ``row_start=True`` passes each block's first global row number to the kernel as
    ``row_start``."""
    groups = group_ranges(X.numblocks[0], thread_slots(client))
    parts = [a.to_delayed().ravel() if a is not None else itertools.repeat(None) for a in (X, *rows)]
    starts = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]])
    call = dask.delayed(_block_row, pure=True)
    blocks = [call(kernel, width, *args, **({"row_start": int(r)} if row_start else {}), **kwargs)
              for args, r in zip(zip(*parts), starts)]
    combine = dask.delayed(_combine, pure=True)
    runs = [functools.reduce(lambda acc, b: combine(acc, b, maxima), blocks[a + 1:b], blocks[a]) for a, b in groups]
    total = functools.reduce(lambda acc, b: combine(acc, b, maxima), runs[1:], runs[0])
    return da.from_delayed(total, shape=(width,), dtype=np.float64, meta=np.empty((0,), np.float64))


def reduce_blocks(kernel, X: da.Array, *rows, width: int, row_start: bool = False, client=None, maxima: int = 0,
                  **kwargs) -> np.ndarray:
    """:func:`block_sum`, computed. When every input is held in worker memory by
    :func:`persist_rows` on a distributed client, each run of blocks is one task on the
    worker that holds it (one packed row per thread comes back); otherwise the graph of
    :func:`block_sum` runs on the active scheduler. Both sum in the same order."""
    if client is None:
        from ..cluster import current_client

        client = current_client()
    held = _held_blocks(X, *rows) if client is not None else None
    if held is None:
        return np.asarray(block_sum(kernel, X, *rows, width=width, row_start=row_start, client=client,
                                    maxima=maxima, **kwargs).compute())
    starts = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]]).tolist() if row_start else None
    slots = _PLACED_SLOTS.get(X.name) or thread_slots(client)  # the runs the blocks were placed in
    futures = [client.submit(_run_sum, kernel, width, held[a:b], starts[a:b] if starts else None, kwargs, maxima,
                             pure=False)
               for a, b in group_ranges(X.numblocks[0], slots)]
    return functools.reduce(lambda acc, b: _combine(acc, b, maxima), client.gather(futures))


def _block_row(kernel, width, *args, **kwargs) -> np.ndarray:
    out = to_numpy(kernel(*args, **kwargs)).reshape(-1)
    if out.shape != (width,):
        raise ValueError(f"{getattr(kernel, '__name__', kernel)} returned {out.shape[0]} values; expected {width}")
    return out


def _run_sum(kernel, width, blocks, starts, kwargs, maxima=0) -> np.ndarray:
    """One run of blocks summed in block order (the arithmetic of :func:`block_sum`)."""
    acc = None
    for i, args in enumerate(blocks):
        extra = {"row_start": starts[i]} if starts is not None else {}
        out = _block_row(kernel, width, *args, **extra, **kwargs)
        # in place into the first block's row, which this task owns (no new p² array per block)
        acc = np.array(out, copy=True) if acc is None else _combine(acc, out, maxima, into=acc)
    return acc


def _combine(acc: np.ndarray, out: np.ndarray, maxima: int, into: np.ndarray | None = None) -> np.ndarray:
    """Two packed rows combined: summed, except the last ``maxima`` entries (the larger kept);
    written into ``into`` (which may be ``acc``) if given, else into a new array."""
    if maxima:
        top = np.maximum(acc[-maxima:], out[-maxima:])
    total = np.add(acc, out, out=into)
    if maxima:
        total[-maxima:] = top
    return total


def group_ranges(nblocks: int, groups: int) -> list[tuple[int, int]]:
    """``groups`` contiguous runs ``[a, b)`` covering ``range(nblocks)`` (at most one per
    block), their lengths differing by at most one."""
    k = max(1, min(int(groups), nblocks))
    base, extra = divmod(nblocks, k)
    edges = [0]
    for g in range(k):
        edges.append(edges[-1] + base + (1 if g < extra else 0))
    return list(zip(edges[:-1], edges[1:]))


def thread_slots(client=None) -> int:
    """The number of runs a pass is cut into: the worker threads of ``client`` (default:
    the active client), or this process's cores for dask's threaded scheduler."""
    from ..cluster import current_client, total_threads

    return total_threads(client if client is not None else current_client())


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


def block_holders(X: da.Array, *rows) -> list[list[str]] | None:
    """Per row block of X, the addresses of the workers that hold it, when X and the row
    arrays are held in worker memory (:func:`persist_rows`) on the active distributed
    client (one round trip to the scheduler); None otherwise. A task that reads one block
    and also takes a value broadcast to every worker (the factor) should be given its
    block's holders as ``workers`` (with ``allow_other_workers``): every worker is a
    candidate for it otherwise, and dask's scheduler, not yet knowing how long the task
    takes, sends some blocks to a worker that does not hold them."""
    from ..cluster import current_client

    client = current_client()
    held = _held_blocks(X, *rows) if client is not None else None
    if held is None:
        return None
    who_has = client.who_has([h[0] for h in held])
    holders = [sorted(who_has.get(h[0].key, ())) for h in held]
    return holders if all(holders) else None


#: The thread slots each array held by :func:`persist_rows` was placed for, by array name:
#: a pass over it (:func:`reduce_blocks`) cuts the same runs without asking the scheduler
#: for its worker table again (one round trip per pass, whose answer grows with the
#: workers; on 2 workers no measurable cost: 2e5 x 384 attribute 3.25 vs 3.26 s), and its
#: sums keep the order of the placement if workers come or go during the run.
_PLACED_SLOTS: dict[str, int] = {}


def persist_rows(arrays, client=None) -> list:
    """Keep aligned row-chunked arrays (same row chunks, one column chunk) in memory for
    repeated passes. On a distributed client, run g of :func:`group_ranges` goes to the
    worker of thread slot g (each worker's threads are consecutive slots), so that the
    blocks are spread evenly and :func:`reduce_blocks` finds every run on one worker; the
    placement is a preference (``allow_other_workers``), so blocks lost with a worker are
    recomputed elsewhere. The arrays keep their names and keys, as ``Client.persist``
    leaves them. Without a client, ``dask.persist``."""
    arrays = list(arrays)
    if client is None:
        return list(dask.persist(*arrays))
    slots = _slot_workers(client)
    columns = [arr.to_delayed().ravel() for arr in arrays]  # delayed blocks, keyed as the array's blocks
    held = [{} for _ in arrays]
    for (a, b), worker in zip(group_ranges(arrays[0].numblocks[0], len(slots)), slots):
        run = [(k, d) for k, column in enumerate(columns) for d in column[a:b]]
        futures = client.compute([d for _, d in run], workers=[worker], allow_other_workers=True)
        for (k, d), future in zip(run, futures):
            held[k][d.key] = future
    _PLACED_SLOTS.update((arr.name, len(slots)) for arr in arrays)
    return [_from_futures(arr, futures) for arr, futures in zip(arrays, held)]


def _slot_workers(client) -> list[str]:
    """One worker address per thread, sorted by address, a worker's threads consecutive."""
    from ..cluster import workers_info

    info = workers_info(client)
    return [addr for addr in sorted(info) for _ in range(max(int(info[addr].get("nthreads", 1)), 1))]


def _block_keys(arr: da.Array) -> list:
    return list(dask.core.flatten(arr.__dask_keys__()))


def _from_futures(template: da.Array, futures: dict) -> da.Array:
    """``template`` with each block replaced by the future of the same key (what
    ``Client.persist`` returns)."""
    from dask.highlevelgraph import HighLevelGraph

    layer = {key: futures[key] for key in _block_keys(template)}
    graph = HighLevelGraph.from_collections(template.name, layer, dependencies=())
    return da.Array(graph, template.name, chunks=template.chunks, dtype=template.dtype, meta=template._meta)


def _held_blocks(X: da.Array, *rows) -> list[tuple] | None:
    """Per block, the futures of X's block and of each row array's (None stays None), when
    every input block is a future in worker memory; None otherwise."""
    from distributed import Future

    if X.ndim != 2 or X.numblocks[1] != 1:
        return None
    columns = []
    for arr in (X, *rows):
        if arr is None:
            columns.append([None] * X.numblocks[0])
            continue
        if arr.chunks[0] != X.chunks[0]:
            return None
        graph = arr.__dask_graph__()
        futures = [graph.get(key) for key in _block_keys(arr)]
        if not all(isinstance(f, Future) for f in futures):
            return None
        columns.append(futures)
    return list(zip(*columns))


def row_mask(n: int, chunks, indices: np.ndarray) -> da.Array:
    """Lazy 0/1 float64 weights, 1 on the rows in ``indices``, aligned to ``chunks``."""
    rows = da.arange(n, chunks=chunks, dtype=np.int64)
    return da.isin(rows, np.asarray(indices, dtype=np.int64)).astype(np.float64)
