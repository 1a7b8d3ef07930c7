"""Connect to a Dask scheduler or start a LocalCluster sized to this machine."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
import types
from concurrent.futures import CancelledError

from .errors import ClusterError, ConfigError
from .tls import config_security

log = logging.getLogger(__name__)


def local_cores() -> int:
    """This process's cores (its CPU affinity where the OS has one)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def workers_info(client) -> dict:
    """Every worker's entry of ``client.scheduler_info()`` (address -> info). distributed
    2025.4 to 2026.6 list at most 5 workers unless asked for all (``n_workers=-1``, a
    parameter older versions do not take)."""
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:
        return client.scheduler_info()["workers"]


def total_threads(client=None) -> int:
    """The worker threads of ``client``'s cluster; without a client (dask's threaded
    scheduler) or while the cluster has no worker, dask's ``num_workers`` setting (which
    :func:`connect` sets) or else :func:`local_cores`."""
    if client is not None:
        threads = sum(int(w.get("nthreads", 1)) for w in workers_info(client).values())
        if threads:
            return threads
    import dask

    return int(dask.config.get("num_workers", None) or local_cores())


def local_cluster_size() -> tuple[int, int]:
    """(workers, threads per worker) for this machine: one single-threaded worker per core
    (BLAS inside a task then uses the core)."""
    return local_cores(), 1


#: dask workers sample the stack of every thread every ``distributed.worker.profile.interval``
#: (10 ms by default) on their event loop, holding the GIL: measured, that slows rifscale's
#: kernels by 20-30 % (benchmarks/results/profile-cluster-2026-12-07.md), and every 100 ms
#: costs nothing measurable while the dashboard keeps its profile. rifscale's own clusters
#: use this; for other clusters it is logged (see :func:`check_worker_profiling`).
WORKER_PROFILE_SETTING = "distributed.worker.profile.interval"
WORKER_PROFILE_INTERVAL = "100ms"


def check_worker_profiling(client) -> None:
    """Log a warning naming the setting when the workers sample their stacks more often
    than :data:`WORKER_PROFILE_INTERVAL` (their profiler costs the kernels 20-30 % at the
    default 10 ms)."""
    import dask
    from dask.utils import parse_timedelta

    def interval():
        enabled = dask.config.get("distributed.worker.profile.enabled", True)
        return parse_timedelta(dask.config.get(WORKER_PROFILE_SETTING, "10ms")) if enabled else None

    try:
        seen = client.run(interval)
    except Exception as exc:  # a diagnostic only: never fail the run for it
        log.debug("could not read the workers' profiler settings: %s", exc)
        return
    fast = sorted(w for w, s in seen.items() if s is not None and s < parse_timedelta(WORKER_PROFILE_INTERVAL))
    if fast:
        log.warning(
            "%d of %d workers sample their threads' stacks every %g ms (dask's %s), which slows rifscale's "
            "kernels by 20-30 %%; start workers with DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL=%s "
            "(deploy/README.md)", len(fast), len(seen), 1000 * seen[fast[0]], WORKER_PROFILE_SETTING,
            WORKER_PROFILE_INTERVAL)


#: The modules a worker process imports to run rifscale's tasks (those a worker held after
#: a run, less the ones they import themselves). The worker processes of ``--processes`` are
#: forked from a server that imported them once (:func:`start_worker_server`).
WORKER_MODULES = ("distributed", "dask.array", "zarr", "rifscale.engine.family", "rifscale.engine.factor",
                  "rifscale.corpus.model", "rifscale.runs.format")

#: distributed's ``distributed.nanny.pre-spawn-environ`` defaults and the hash seed its
#: nanny gives worker processes (distributed/distributed.yaml, ``Nanny.__init__``): read
#: before ``distributed`` is imported, when its defaults are not yet in dask's config.
#: tests/test_distributed.py checks them against the installed distributed.
PRE_SPAWN_DEFAULTS = {"MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                      "OPENBLAS_NUM_THREADS": "1"}
WORKER_HASH_SEED = "6640"

_worker_server_started = False


def worker_environment() -> dict[str, str]:
    """The environment dask's nanny sets before it starts a worker process: its
    ``distributed.nanny.pre-spawn-environ`` (one BLAS thread, malloc trimming), each
    variable overridden by this process's environment as dask does, and a hash seed shared
    by all worker processes."""
    import dask

    # before distributed is imported dask's config holds only the user's part of the setting
    wanted = {**PRE_SPAWN_DEFAULTS, **(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {})}
    env = {k: os.environ.get(k, str(v)) for k, v in wanted.items() if v is not None}  # None unsets, as in dask
    if env.get("PYTHONHASHSEED") in (None, "0"):
        env["PYTHONHASHSEED"] = WORKER_HASH_SEED
    return env


def start_worker_server() -> bool:
    """Start, once per process, the server that forks the worker processes of
    ``connect(processes=True)``: Python's multiprocessing fork server, which imports
    :data:`WORKER_MODULES` once, in :func:`worker_environment`, while this process goes on.

    dask's default starts each worker as a fresh interpreter (``spawn``) that imports
    distributed, then dask.array, zarr and rifscale's kernels at its first task: on a
    2-core machine about 1.5 s of a 2·10⁵ × 384 run (benchmarks/results/). Forked from the
    server, a worker starts with all of that imported; the server is single-threaded when
    it forks (one BLAS thread), so nothing is forked mid-operation. It lives as long as
    this process. Returns False (workers are then spawned as dask does) on platforms
    without a fork server (Windows) or where it cannot start (logged).
    """
    global _worker_server_started
    import multiprocessing
    import multiprocessing.forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    if _worker_server_started:
        return True
    env = worker_environment()
    saved = {k: os.environ.get(k) for k in env}
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(WORKER_MODULES))
    os.environ.update(env)  # the server's environment only: this process's is put back at once
    try:
        multiprocessing.forkserver.ensure_running()
    except OSError as exc:  # e.g. no room for its socket: dask's own way still works
        log.warning("could not start the server that forks worker processes (%s); they start as fresh "
                    "interpreters instead (about a second slower)", exc)
        return False
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _worker_server_started = True
    return True


def _keep_worker_server_preload() -> None:
    """Tell distributed that the fork server's preload list is set (rifscale's, by
    :func:`start_worker_server`).

    Otherwise the first nanny that starts a worker imports, in this process, every package
    distributed would have the server preload (pandas among them), only to hand the list to
    a server that is already running and ignores it: measured, 0.2 s of a 0.4 s LocalCluster
    start on 2 cores, none of it needed (rifscale's run never imports pandas). distributed
    (2026.8) keeps that "already set" flag in ``distributed.utils._forkserver_preload_set``;
    where a version has no such flag nothing is changed and only the time is lost
    (tests/test_distributed.py checks the installed one)."""
    import distributed.utils

    if hasattr(distributed.utils, "_forkserver_preload_set"):
        distributed.utils._forkserver_preload_set = True


#: Seconds to wait for a scheduler, for the first worker, for a scheduler that stopped
#: answering, or for any worker to come back after all of them left, before giving up with
#: a ClusterError; also the ``worker-ttl`` of the LocalCluster of worker processes.
DEFAULT_TIMEOUT = 60.0


@contextlib.contextmanager
def connect(scheduler: str | None = None, *, n_workers: int | None = None, processes: bool = False,
            dashboard: bool = False, timeout: float = DEFAULT_TIMEOUT, security=None):
    """Yield a ``distributed.Client``, or None for dask's local threaded scheduler.

    ``scheduler`` is an address such as ``tcp://10.0.0.5:8786`` (or a scheduler file
    path ending in ``.json``); without one, dask's ``scheduler-address`` setting
    (``DASK_SCHEDULER_ADDRESS``) is used if set. ``security`` (a
    ``distributed.security.Security``, e.g. from :func:`tls_security`) is how the client
    connects to it; without it dask's TLS settings (``distributed.comm.tls.*``) apply.
    Otherwise work runs on this machine:

    * by default on dask's threaded scheduler with a thread per core (``n_workers``
      threads if given) and no cluster at all: nothing to start, a few milliseconds of
      overhead per pass; the chunk kernels spend their time in NumPy/BLAS, which release
      the GIL, and BLAS is limited to one thread per task (threadpoolctl) so that the
      threads do not oversubscribe the cores;
    * ``dashboard=True``: the same threads as an in-process LocalCluster, for its
      dashboard (printed in the log); with ``processes=True`` the worker processes' one;
    * ``processes=True``: a LocalCluster of ``n_workers`` single-threaded worker
      processes on 127.0.0.1 (slower to start; isolates the workers), forked from a
      server that has imported rifscale's worker modules (:func:`start_worker_server`;
      the CLI starts it before its own imports). That server imports the main module of
      the process, as every multiprocessing start method but fork does: a script that
      calls this does so under ``if __name__ == "__main__":``.

    Nothing waits forever: a scheduler that does not answer dask's handshake within
    ``timeout`` seconds, no worker within ``timeout`` seconds, a scheduler that stops
    answering or a connection to it that is lost during the work, or no worker left for
    ``timeout`` seconds, raise :class:`~rifscale.errors.ClusterError`. A worker that stops
    answering (frozen, or its machine gone) is the scheduler's to drop: after its
    ``distributed.scheduler.worker-ttl`` without a heartbeat (``timeout`` for the worker
    processes started here), and its tasks then run on the other workers.
    """
    if n_workers is not None and (isinstance(n_workers, bool) or int(n_workers) != n_workers or n_workers < 1):
        raise ConfigError(f"--workers must be a positive integer; got {n_workers!r}.")
    if not (timeout > 0):
        raise ConfigError(f"--timeout must be a positive number of seconds; got {timeout!r}.")
    if not scheduler:
        import dask

        # dask's own setting (DASK_SCHEDULER_ADDRESS, or scheduler-address in its config),
        # as on a cluster's Jupyter server
        scheduler = dask.config.get("scheduler-address", None)
        if scheduler:
            log.info("using the scheduler from dask's config (DASK_SCHEDULER_ADDRESS): %s", scheduler)
    if scheduler:
        from distributed.security import Security
        from distributed.utils import silence_logging_cmgr

        address = _scheduler_address(scheduler, security)
        connection_args = (security or Security()).get_connection_args("client")
        # dask's info lines are not shown (as LocalCluster does by default): a lost connection
        # would print its traceback at that level
        with silence_logging_cmgr(logging.WARNING), \
                _watch(address, timeout, connection_args, f"the dask scheduler at {address!r}") as probe:
            if not probe.answered.wait(timeout):
                raise _unreachable(address, timeout, probe.error)
            with _remote_client(address, timeout, security) as client, blas_per_task():
                probe.client = client  # whose lost connection is watched too
                check_worker_profiling(client)
                try:
                    yield client
                finally:  # the work is over: whatever happened, it is this thread's to report
                    probe.client = None
        return
    if security is not None:
        raise ConfigError(
            "The TLS options (--tls-ca-file, --tls-cert, --tls-key) are for connecting to a running scheduler; "
            "give its address with --scheduler (or DASK_SCHEDULER_ADDRESS)."
        )
    cores, _ = local_cluster_size()
    threads = n_workers or cores
    if not (processes or dashboard):
        import dask

        import dask.threaded

        # the scheduler as a function, not the name "threads": dask then does not import
        # distributed (0.5 s) to look for a client
        with blas_per_task(), dask.config.set(scheduler=dask.threaded.get, num_workers=threads):
            log.info("running on dask's threaded scheduler with %d thread(s)", threads)
            yield None
        return
    import dask
    from distributed import Client, LocalCluster

    settings = {WORKER_PROFILE_SETTING: WORKER_PROFILE_INTERVAL}
    if processes:
        # a worker silent for `timeout` seconds is restarted and its tasks run elsewhere
        # (dask's default worker-ttl, 5 minutes, can leave a frozen worker's tasks waiting 10)
        # the dashboard (bokeh, in this process) only when asked: it costs the start ~0.35 s;
        # the scheduler's HTTP server (/health, /metrics) stays, on 127.0.0.1
        kwargs = dict(n_workers=threads, threads_per_worker=1, processes=True, host="127.0.0.1",
                      scheduler_kwargs={"worker_ttl": timeout, "dashboard": dashboard})
        if start_worker_server():  # workers forked with rifscale's modules imported
            settings["distributed.worker.multiprocessing-method"] = "forkserver"
            _keep_worker_server_preload()
    else:  # in-process workers talk over inproc:// (no port at all)
        kwargs = dict(n_workers=1, threads_per_worker=threads, processes=False)
    # the driver's BLAS on one thread also beside worker processes: its idle threads would
    # spin on the cores the workers need (blas_per_task)
    with blas_per_task(), dask.config.set(settings), \
            LocalCluster(dashboard_address="127.0.0.1:0", **kwargs) as cluster, Client(cluster) as client:
        log.info(
            "started a LocalCluster: %d %s x %d thread(s)%s",
            kwargs["n_workers"], "worker process(es)" if processes else "in-process worker",
            kwargs["threads_per_worker"], f"; dashboard {local_dashboard_link(client)}" if dashboard else
            " (--dashboard serves dask's dashboard)",
        )
        with _watch(cluster.scheduler_address, timeout, client.connection_args, "the LocalCluster"):
            yield client


def _scheduler_address(scheduler: str, security=None) -> str:
    """The address of ``--scheduler`` (read from it when it is a scheduler file), its TLS
    settings checked."""
    if scheduler.endswith(".json"):
        if not os.path.isfile(scheduler):
            raise ClusterError(
                f"The scheduler file {scheduler!r} does not exist. Start the scheduler with "
                f"`dask scheduler --scheduler-file {scheduler}` (or check the path), then rerun."
            )
        try:
            with open(scheduler) as fh:
                address = str(json.load(fh)["address"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ClusterError(f"The scheduler file {scheduler!r} is not a dask scheduler file ({exc}).") from None
    else:
        address = scheduler
    if security is None:
        config_security(address)
    elif not address.startswith("tls://"):
        raise ConfigError(
            f"TLS options were given, but the scheduler address {address!r} is not a tls:// address; a scheduler "
            "started with TLS has one (see its scheduler file or log)."
        )
    return address


def _unreachable(address: str, timeout: float, exc: BaseException | None) -> ClusterError:
    """The error of a scheduler that did not answer within ``timeout`` (``exc``: the last
    failure, if any)."""
    if exc is None or isinstance(exc, TimeoutError):
        why = ("nothing answered dask's handshake: a scheduler that is down or frozen, a firewall, or another "
               "service on that port")
    elif isinstance(exc, OSError):
        why = f"{type(exc).__name__}: {exc}"
    else:  # e.g. the "length" of a message that is not dask's: a MemoryError of exbibytes
        why = f"the answer is not dask's protocol: {type(exc).__name__}: {exc}"
    tls = ""
    if address.startswith("tls://"):
        tls = (" A TLS scheduler refuses clients whose certificate is not signed by its CA (and this client "
               "refuses a scheduler whose certificate is not signed by --tls-ca-file): check the TLS files.")
    return ClusterError(
        f"Cannot reach the dask scheduler at {address!r} within {timeout:g} s ({why}).{tls} Check that it is "
        "running and that this machine can reach it (address, port, TLS), or run without --scheduler to use "
        "this machine's cores."
    )


@contextlib.contextmanager
def _remote_client(address: str, timeout: float, security=None):
    """A Client of the scheduler at ``address`` (which has just answered), once it has a worker."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, security=security)
    except (OSError, TimeoutError, ValueError, RuntimeError) as exc:
        raise _unreachable(address, timeout, exc) from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (TimeoutError, OSError):
            raise ClusterError(
                f"The scheduler at {address!r} has no workers, and none joined within {timeout:g} s. Start "
                f"workers with `dask worker {address}` (or raise --timeout)."
            ) from None
        log.info("connected to scheduler %s (%d workers)", address, len(workers_info(client)))
        yield client
    except (CancelledError, OSError):  # dask cancels the work of a client that lost its scheduler
        if client.status == "running":
            raise
        raise _gave_up("lost", f"the dask scheduler at {address!r}", timeout) from None
    finally:
        _close(client)


def _close(client) -> None:
    """Close ``client``; when its scheduler is gone, without dask's log of the reconnection
    it then gives up (an error with the traceback of the cancelled attempt)."""
    from distributed.utils import silence_logging_cmgr

    with contextlib.nullcontext() if client.status == "running" else silence_logging_cmgr(logging.CRITICAL):
        client.close()


def _identity(address: str, timeout: float, connection_args: dict) -> dict:
    """The scheduler's answer to dask's ``identity`` call, on a connection of its own, all
    within ``timeout`` seconds: the connection, dask's handshake and the answer (dask bounds
    the first only, so a peer that accepts connections and never answers, such as a frozen
    scheduler, would be waited for without end). Without arguments, as every distributed
    version takes it (``n_workers=`` is newer than distributed 2024.8), so it lists every worker.
    Runs an event loop of its own: call it from a thread that has none."""
    import asyncio

    from distributed.comm import connect as open_comm
    from distributed.core import send_recv

    async def ask():
        comm = await open_comm(address, timeout=timeout, **connection_args)
        try:
            return await send_recv(comm, op="identity")
        finally:
            comm.abort()

    return asyncio.run(asyncio.wait_for(ask(), timeout))


class _Stalled(BaseException):
    """Raised in the main thread by the cluster watcher (a BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way swallows it)."""


def _gave_up(what: str, where: str, timeout: float, seconds: float = 0.0) -> ClusterError:
    """The error of a cluster that cannot go on: the connection to its scheduler ``"lost"``,
    the scheduler ``"silent"`` for ``timeout`` seconds, or its ``"workers"`` gone for
    ``seconds``."""
    if what == "lost":
        cause, fix = (f"Lost the connection to {where} (it stopped or was killed, or its machine became "
                      "unreachable)", "start a scheduler and workers")
    elif what == "silent":
        cause, fix = (f"No answer from {where} for {timeout:g} s (frozen, overloaded, or its machine unreachable)",
                      "check the scheduler (its log; `kill -CONT PID` if it was stopped) or start another with workers")
    else:
        cause, fix = (f"Every worker of {where} has been gone for {seconds:.0f} s (killed, or lost their "
                      "connection)", "restart the workers")
    return ClusterError(f"{cause}, so the work cannot go on. Nothing was written as complete; {fix}, and run the "
                        "same command again (a run resumes from its last finished stage).")


@contextlib.contextmanager
def _watch(address: str, timeout: float, connection_args: dict, where: str):
    """Watch the scheduler at ``address`` from a thread that asks it for its ``identity``
    every second, on connections of its own (:func:`_identity`). Yields the probe's state:
    ``answered`` (a ``threading.Event`` set at the first answer), ``error`` (the last
    failure to answer) and ``client`` (None; the caller may set its client there).

    After that first answer, a scheduler that stops answering, or that has had no worker,
    for ``timeout`` seconds, or a client that lost its connection to it (dask cancelled its
    work, and may leave new work waiting until it gives up reconnecting), becomes a
    ClusterError instead of a wait without end: the thread signals the main thread
    (SIGUSR1, whose handler raises there, interrupting whatever dask call waits), which then
    raises the ClusterError. Outside the main thread the probe's state is all there is."""
    probe = types.SimpleNamespace(answered=threading.Event(), error=None, client=None)
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    fired = []  # (what, seconds) once the watcher gave up

    def watch():
        last_answer = last_worker = None
        while True:
            # before asking: a scheduler that died refuses connections, which dask retries
            # for `timeout` seconds, as long as the client's own attempts to reconnect
            if probe.client is not None and probe.client.status == "connecting":
                fired.append(("lost", 0.0))
            else:
                try:
                    n_workers = len(_identity(address, timeout, connection_args)["workers"])
                except Exception as exc:  # refused, no answer in time, or not dask's protocol
                    probe.error = exc
                else:
                    last_answer = time.monotonic()
                    last_worker = last_answer if n_workers else last_worker
                    probe.answered.set()
                now = time.monotonic()
                if last_answer is not None and now - last_answer >= timeout:
                    fired.append(("silent", now - last_answer))
                elif last_worker is not None and now - last_worker >= timeout:
                    fired.append(("workers", now - last_worker))
            if fired and main and not stop.is_set():
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                return
            if stop.wait(1.0):
                return

    def stalled(signum, frame):  # runs in the main thread, wherever it waits
        if fired and not stop.is_set():
            raise _Stalled()

    # a signal of its own (not SIGINT, which a background job may inherit as ignored)
    previous = signal.signal(signal.SIGUSR1, stalled) if main else None
    threading.Thread(target=watch, name="rifscale-cluster-watch", daemon=True).start()
    try:
        yield probe
    except _Stalled:
        what, seconds = fired[0]
        raise _gave_up(what, where, timeout, seconds) from None
    finally:
        stop.set()
        if main:
            signal.signal(signal.SIGUSR1, previous)


def local_dashboard_link(client) -> str:
    """The dashboard of a LocalCluster started here, which listens on 127.0.0.1 only
    (``client.dashboard_link`` names the machine's address, where nothing answers)."""
    port = client.scheduler_info().get("services", {}).get("dashboard")
    return f"http://127.0.0.1:{port}/status" if port else client.dashboard_link


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


@contextlib.contextmanager
def blas_per_task():
    """Hold this process's BLAS to one thread while rifscale computes.

    Every chunk kernel is a BLAS product, and dask runs one task per core: left alone,
    each task's BLAS would start a thread per core too, and the cores are oversubscribed
    (a ``rifscale.tune`` at 1e5 x 256 on 2 cores took 22 s from Python, 8.8 s with the
    limit). The driver's own small algebra between passes runs on one thread as well: an
    OpenBLAS call on several threads leaves its idle threads spinning for about 0.1 s,
    on cores that the next pass's tasks — or worker processes on this machine — need
    (measured: 0.9 s of a 3.8 s run's CPU on a 2-worker cluster, 2·10⁵ × 384). Only the
    driver's algebra on matrices at least ``rifscale.cluster.WIDE_BLAS_P`` (1024) wide (a
    softmax model's P × P Hessian: its Cholesky factor and eigenvalues) gets the threads
    back. rifscale's entry points that compute hold it themselves, as the
    command line does for its whole run; use it around a lazy result you compute
    yourself. Worker processes are untouched (dask's workers set their own limit); on dask's
    synchronous scheduler, or one thread, without a client, it changes nothing (one task
    at a time may use every core).

    Returns
    -------
    contextlib.AbstractContextManager
        The limit holds inside the ``with`` block; BLAS's threads are restored after it.

    Examples
    --------
    >>> import rifscale
    >>> from rifscale.demo import demo_corpus
    >>> result = rifscale.attribute(demo_corpus(), lam=1.0)
    >>> with rifscale.blas_per_task():
    ...     rif = result.rif_scores["test_loss"].compute()
    >>> rif.shape
    (1000,)
    """
    global _driver
    if _driver is not None or _one_task_at_a_time():  # nested (tune -> attribute): the outer one holds it
        yield
        return
    from threadpoolctl import threadpool_limits

    threads = max(_blas_thread_counts(), default=1)
    with threadpool_limits(limits=1, user_api="blas"):
        _driver = (threading.get_ident(), threads)
        try:
            yield
        finally:
            _driver = None


def _one_task_at_a_time() -> bool:
    """Whether dask computes here one task at a time (its synchronous scheduler, or one
    thread) with no client: each task's BLAS may then use every core, and nothing else
    competes with the driver's."""
    import dask

    if current_client() is not None:
        return False
    scheduler = dask.config.get("scheduler", None)
    if scheduler in ("sync", "synchronous", "single-threaded") or scheduler is dask.get:
        return True
    return dask.config.get("num_workers", None) == 1


#: The driver's algebra on matrices at least this wide runs on every BLAS thread inside
#: :func:`blas_per_task` (a Cholesky factor at P = 2000 takes ~0.2 s on one core, half that
#: on two); below, one thread costs less than the other threads' spinning after each call.
WIDE_BLAS_P = 1024

#: While a :func:`blas_per_task` block is open: (the thread that opened it, the BLAS threads
#: it found). One block at a time (nested ones change nothing).
_driver: tuple[int, int] | None = None


def _blas_thread_counts() -> list[int]:
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@contextlib.contextmanager
def wide_blas(p: int):
    """Inside :func:`blas_per_task`, give the driver's algebra on a ``p`` × ``p`` matrix
    (``p`` ≥ :data:`WIDE_BLAS_P`) the BLAS threads the block found; elsewhere — smaller
    matrices, a dask task's thread, no block open — nothing changes."""
    driver = _driver
    if driver is None or p < WIDE_BLAS_P or driver[1] <= 1 or threading.get_ident() != driver[0]:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=driver[1], user_api="blas"):
        yield


def entry_point(func):
    """Run a public entry point that computes under :func:`blas_per_task`, with its
    ``client=`` argument as the current client (:func:`using_client`)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with blas_per_task(), using_client(kwargs.get("client")):
            return func(*args, **kwargs)

    return wrapper


def using_client(client):
    """``client`` as the current client for the block (nothing for None): every compute
    inside, also those that look for dask's default client, runs on it. With a client that
    is not the default (``Client(..., set_as_default=False)``) they would otherwise run on
    local threads over its futures and fail."""
    return client.as_current() if client is not None else contextlib.nullcontext()


def small_compute(*collections):
    """``dask.compute`` for the small driver-side reads (labels, digests): on the configured
    scheduler or the active client if there is one, else on local threads, without
    dask importing distributed just to look for a client (0.3-0.5 s)."""
    import dask
    import dask.threaded

    if dask.config.get("scheduler", None) is not None or current_client() is not None:
        return dask.compute(*collections)
    return dask.compute(*collections, scheduler=dask.threaded.get)


def workers_with_resource(client, resource: str) -> list[str]:
    """Addresses of the workers that advertise ``resource`` (e.g. ``GPU``)."""
    info = workers_info(client)
    return [addr for addr, w in info.items() if w.get("resources", {}).get(resource, 0) > 0]
