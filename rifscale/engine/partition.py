"""Fit the work to the cluster: row blocks per thread, bytes per block, persist or stream,
and the device the chunk kernels run on.

* **Blocks**: every pass should keep all worker threads busy, so a split gets at least
  ``BLOCKS_PER_THREAD`` row blocks per thread; a block holds at most ``MAX_BLOCK_BYTES``
  (and at most 1/16 of the smallest worker's memory) and at least ``MIN_BLOCK_ROWS`` rows
  (smaller blocks cost more in task overhead than they give in balance). Stored chunks
  that are too coarse are split evenly at read time; finer ones are left as stored.
* **Persist**: when the split, as stored (float32 stays float32), takes at most
  ``PERSIST_FRACTION`` of the cluster's memory, it is read once and kept in worker memory
  for the fit and the scores pass; otherwise every pass streams it from the store.
* **Device**: ``"gpu"`` moves each block to CuPy inside the task that uses it; the
  kernels then run on the device and return host arrays at reduction boundaries.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np

from ._blocks import persist_rows
from ..cluster import total_threads, workers_info
from ..errors import ConfigError
from ..corpus.model import Split

log = logging.getLogger(__name__)

BLOCKS_PER_THREAD = 3
MAX_BLOCK_BYTES = 128 * 2**20
MIN_BLOCK_ROWS = 4096
PERSIST_FRACTION = 0.5


def cluster_resources(client=None) -> tuple[int, int, int]:
    """(threads, smallest worker memory, total memory) in bytes, of the client's workers,
    or of this machine for dask's local threaded scheduler."""
    if client is not None:
        workers = workers_info(client).values()
        if workers:
            threads = sum(int(w.get("nthreads", 1)) for w in workers)
            mem = [int(w.get("memory_limit") or 0) for w in workers]
            if all(mem):
                return threads, min(mem), sum(mem)
            return threads, *_machine_memory()
    return total_threads(None), *_machine_memory()


def _machine_memory() -> tuple[int, int]:
    import psutil

    avail = int(psutil.virtual_memory().available)
    return avail, avail


def block_rows(n: int, row_bytes: int, *, threads: int, worker_memory: int) -> int:
    """Rows per block for ``n`` rows of ``row_bytes`` bytes each (see the module doc)."""
    cap = max(1, min(MAX_BLOCK_BYTES, worker_memory // 16) // max(row_bytes, 1))
    want = math.ceil(n / (BLOCKS_PER_THREAD * max(threads, 1)))
    return int(max(1, min(cap, max(want, MIN_BLOCK_ROWS))))


def rechunk_split(split: Split, rows: int) -> Split:
    """The split with stored chunks longer than ``rows`` cut into equal pieces (each
    stored chunk into a whole number of blocks, so no block spans two stored chunks).
    ``method="tasks"`` says how (splitting needs no shuffle) and spares dask the import of
    distributed it makes to choose a method."""
    stored = split.X.chunks[0]
    if max(stored) <= rows * 1.5:
        return split
    pieces = []
    for c in stored:
        k = math.ceil(c / rows)
        base, extra = divmod(c, k)
        pieces += [base + 1] * extra + [base] * (k - extra)
    chunks = (tuple(pieces),)
    return Split(
        X=split.X.rechunk((chunks[0], split.X.shape[1]), method="tasks"),
        y=split.y.rechunk(chunks, method="tasks"),
        ids=split.ids.rechunk(chunks, method="tasks"),
    )


def _to_device(x):
    import cupy

    return cupy.asarray(x)


def check_device(device: str, client=None) -> None:
    """A clear error when ``device="gpu"`` but no process that would run the kernels sees
    a CUDA device through CuPy."""
    if device != "gpu":
        return
    from .factor import gpu_available

    if client is None:
        if not gpu_available():
            raise ConfigError(
                "device='gpu' needs CuPy and a CUDA device in this process, and none was found. "
                "Install the GPU extra (pip install 'rifscale[gpu]') on a machine with an NVIDIA GPU, "
                "connect to a cluster with GPU workers (--scheduler), or use device='cpu'."
            )
        return
    seen = client.run(gpu_available)
    missing = [w for w, ok in seen.items() if not ok]
    if missing:
        raise ConfigError(
            f"device='gpu' needs CuPy and a CUDA device on every worker, but {len(missing)} of "
            f"{len(seen)} workers see none (e.g. {missing[0]}). Start GPU workers only (see "
            "deploy/README.md), or use device='cpu'."
        )


def hold_split(split: Split | None, client=None) -> Split | None:
    """The split's rows, labels and ids held in (worker) memory by
    :func:`~rifscale.engine._blocks.persist_rows`, in the blocks it has; None stays None."""
    if split is None:
        return None
    X, y, ids = persist_rows([split.X, split.y, split.ids], client)
    return replace(split, X=X, y=y, ids=ids)


def prepare_split(split: Split, *, client=None, persist: str = "auto", device: str = "cpu") -> tuple[Split, dict]:
    """Rechunk, persist (or not) and place one split for the passes to come.

    Returns the split and a record of the choices (for the run manifest).
    """
    threads, worker_mem, total_mem = cluster_resources(client)
    n, d = split.X.shape
    row_bytes = d * split.X.dtype.itemsize
    rows = block_rows(n, row_bytes, threads=threads, worker_memory=worker_mem)
    split = rechunk_split(split, rows)
    nbytes = int(split.X.nbytes + split.y.nbytes)
    keep = persist == "always" or (persist == "auto" and nbytes <= PERSIST_FRACTION * total_mem)
    if keep:  # the ids too, beside their rows: the scores pass stores them with the block's scores
        split = hold_split(split, client)
    if device == "gpu":
        split = replace(split, X=split.X.map_blocks(_to_device, dtype=split.X.dtype,
                                                    meta=np.empty((0, 0), dtype=split.X.dtype)))
    record = {
        "threads": threads,
        "blocks": len(split.X.chunks[0]),
        "block_rows": int(max(split.X.chunks[0])),
        "persisted": bool(keep),
        "bytes": nbytes,
        "device": device,
    }
    log.info(
        "train split: %d row blocks of <= %d rows for %d threads; %s (%.1f MiB as stored)",
        record["blocks"], record["block_rows"], threads,
        "persisted in worker memory" if keep else "streamed from the store on every pass", nbytes / 2**20,
    )
    return split, record
