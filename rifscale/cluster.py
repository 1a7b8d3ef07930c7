"""Connect to a Dask scheduler or start a LocalCluster sized to this machine."""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger(__name__)


def local_cluster_size() -> tuple[int, int]:
    """(workers, threads per worker) for this machine: one single-threaded worker per core
    (BLAS inside a task then uses the core; numbers of cores come from the CPU affinity)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(cores, 1), 1


@contextlib.contextmanager
def connect(scheduler: str | None = None, *, n_workers: int | None = None):
    """Yield a ``distributed.Client``.

    ``scheduler`` is an address such as ``tcp://10.0.0.5:8786`` (or a scheduler file
    path ending in ``.json``); None starts a LocalCluster of worker processes sized to
    this machine and closes it afterwards.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        if scheduler.endswith(".json"):
            client = Client(scheduler_file=scheduler)
        else:
            client = Client(scheduler)
        log.info("connected to scheduler %s (%d workers)", scheduler, len(client.scheduler_info()["workers"]))
        try:
            yield client
        finally:
            client.close()
        return
    workers, threads = local_cluster_size()
    if n_workers:
        workers = n_workers
    with LocalCluster(
        n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=":0"
    ) as cluster, Client(cluster) as client:
        log.info("started a LocalCluster with %d workers x %d thread(s)", workers, threads)
        yield client


def workers_with_resource(client, resource: str) -> list[str]:
    """Addresses of the workers that advertise ``resource`` (e.g. ``GPU``)."""
    info = client.scheduler_info()["workers"]
    return [addr for addr, w in info.items() if w.get("resources", {}).get(resource, 0) > 0]
