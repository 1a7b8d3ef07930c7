"""Shared fixtures: seeded problems, their dense references, one real LocalCluster, and
`dask scheduler` / `dask worker` processes that a test may freeze or kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest

import rifscale
from rifscale.testing import Reference, make_problem


@pytest.fixture
def synchronous():
    """Run dask graphs in this thread (fast, deterministic) for tests that need no cluster."""
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture(scope="session")
def cluster():
    """A real multi-process LocalCluster on 127.0.0.1, shared by the cluster tests."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


@pytest.fixture
def client(cluster):
    from distributed import Client

    with Client(cluster) as c:
        yield c


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: a relative error that ignores the size of single entries."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="session")
def small_problem():
    pr = make_problem(120, 30, seed=3)
    return pr, Reference(pr.X, pr.y, lam=0.5)


def corpus_of(pr, chunk_rows):
    return rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test, pr.y_test, chunk_rows=chunk_rows)


class DaskProcesses:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, started by one test,
    which may freeze (SIGSTOP) or kill them; the fixture continues and kills every one."""

    def __init__(self, root: Path):
        self.root = root
        self.started: list[subprocess.Popen] = []

    def _start(self, args: list[str], name: str, env: dict[str, str]) -> subprocess.Popen:
        env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False", **env)
        with open(self.root / f"{name}.log", "w") as log:
            proc = subprocess.Popen([str(Path(sys.executable).parent / "dask"), *args], env=env,
                                    stdout=subprocess.DEVNULL, stderr=log)
        self.started.append(proc)
        return proc

    def scheduler(self, **env: str) -> tuple[subprocess.Popen, Path]:
        """A scheduler (``env``: dask settings of its own, e.g.
        ``DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL="3s"``) and its scheduler file, once written;
        its log is ``scheduler-N.log`` beside the file."""
        name = f"scheduler-{len(self.started)}"
        file = self.root / f"{name}.json"
        proc = self._start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--scheduler-file", str(file)], name, env)
        t0 = time.monotonic()
        while not file.exists():
            assert proc.poll() is None and time.monotonic() - t0 < 60, f"{name} did not start"
            time.sleep(0.05)
        return proc, file

    def worker(self, scheduler_file: Path) -> subprocess.Popen:
        """A single-threaded worker without a nanny (what is frozen or killed is the worker)."""
        return self._start(["worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1", "--no-nanny",
                            "--nthreads", "1", "--no-dashboard"], f"worker-{len(self.started)}", {})

    def stop(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped process is killed too, but never left stopped
                proc.kill()
            proc.wait(timeout=60)


@pytest.fixture
def dask_procs(tmp_path):
    procs = DaskProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()
