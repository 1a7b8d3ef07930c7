"""Connect to a Dask scheduler or start a LocalCluster sized to this machine."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

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
def connect(scheduler: str | None = None, *, n_workers: int | None = None, processes: bool = False,
            dashboard: bool = False):
    """Yield a ``distributed.Client``, or None for dask's local threaded scheduler.

    ``scheduler`` is an address such as ``tcp://10.0.0.5:8786`` (or a scheduler file
    path ending in ``.json``). Without one, work runs on this machine:

    * by default on dask's threaded scheduler with a thread per core (``n_workers``
      threads if given) and no cluster at all: nothing to start, a few milliseconds of
      overhead per pass; the chunk kernels spend their time in NumPy/BLAS, which release
      the GIL, and BLAS is limited to one thread per task (threadpoolctl) so that the
      threads do not oversubscribe the cores;
    * ``dashboard=True``: the same threads as an in-process LocalCluster, for its
      dashboard (printed in the log);
    * ``processes=True``: a LocalCluster of ``n_workers`` single-threaded worker
      processes on 127.0.0.1 (slower to start; isolates the workers).
    """
    from threadpoolctl import threadpool_limits

    if scheduler:
        from distributed import Client

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
    cores, _ = local_cluster_size()
    threads = n_workers or cores
    if not (processes or dashboard):
        import dask

        import dask.threaded

        # the scheduler as a function, not the name "threads": dask then does not import
        # distributed (0.5 s) to look for a client
        with threadpool_limits(limits=1, user_api="blas"), \
                dask.config.set(scheduler=dask.threaded.get, num_workers=threads):
            log.info("running on dask's threaded scheduler with %d thread(s)", threads)
            yield None
        return
    from distributed import Client, LocalCluster

    if processes:
        kwargs = dict(n_workers=threads, threads_per_worker=1, processes=True, host="127.0.0.1")
        blas = contextlib.nullcontext()
    else:  # in-process workers talk over inproc:// (no port at all)
        kwargs = dict(n_workers=1, threads_per_worker=threads, processes=False)
        blas = threadpool_limits(limits=1, user_api="blas")
    with blas, LocalCluster(dashboard_address="127.0.0.1:0", **kwargs) as cluster, Client(cluster) as client:
        log.info(
            "started a LocalCluster: %d %s x %d thread(s); dashboard %s",
            kwargs["n_workers"], "worker process(es)" if processes else "in-process worker",
            kwargs["threads_per_worker"], client.dashboard_link,
        )
        yield client


def current_client():
    """The active distributed client, or None (dask's local scheduler is then used).

    Never imports distributed (0.5 s) when nothing has: no client can exist then."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def workers_with_resource(client, resource: str) -> list[str]:
    """Addresses of the workers that advertise ``resource`` (e.g. ``GPU``)."""
    info = client.scheduler_info()["workers"]
    return [addr for addr, w in info.items() if w.get("resources", {}).get(resource, 0) > 0]
