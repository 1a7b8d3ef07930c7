"""No wait without end (issue 17): peers that are not dask schedulers, a scheduler without
workers, a frozen (SIGSTOP) or killed scheduler, a frozen worker, Ctrl-C during the imports.

Every case runs the real command in a subprocess against real processes started here, and
asserts the exit code, a single line on stderr, and that the command ended within a
generous bound of its ``--timeout`` (the property under test is that the wait is bounded)."""

from __future__ import annotations

import contextlib
import http.server
import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import rifscale

from .test_batch_jobs import CLI, _data, _start, _wait_for_line

#: the slack allowed beyond --timeout on a loaded machine
SLACK = 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Passes of some tens of milliseconds, in 10 row chunks: a fit long enough to be
    frozen or killed in, shared by two workers."""
    X, y, Xt, yt = _data(100_000, 16, seed=2)
    path = tmp_path_factory.mktemp("stalls") / "c.zarr"
    rifscale.ingest(path, train_X=X, train_y=y, test_X=Xt, test_y=yt, chunk_rows=10_000)
    return path


def _one_line_error(err: str, code: int, returncode: int, message: str) -> None:
    assert returncode == code, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err, err


def _last_line_only(err: str, message: str) -> None:
    """Besides rifscale's own log lines, stderr holds one line, the error: no traceback, no
    log of dask's."""
    *log, last = err.strip().splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d rifscale\.", line) for line in log), err
    assert message in last, err


def _address(sched_file: Path) -> str:
    return json.loads(sched_file.read_text())["address"]


def _exit_of(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``rifscale ARGS`` (quiet) to its end; its result and how long it took."""
    t0 = time.monotonic()
    done = subprocess.run(CLI + ["-q", *args], capture_output=True, text=True, timeout=timeout + 2 * SLACK)
    return done, time.monotonic() - t0


@contextlib.contextmanager
def _running(args: list[str], **kw):
    """``rifscale ARGS`` started in the background; killed and reaped on the way out."""
    proc = _start(args, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _signal_mid_fit(args: list[str], target: subprocess.Popen, signum: int, timeout: float):
    """Run ``rifscale ARGS``, send ``signum`` to ``target`` once the fit has begun, and wait
    for the command's end: its exit code, stdout, stderr and the seconds since the signal."""
    with _running(args) as proc:
        _wait_for_line(proc, "newton iter  0", timeout=120)
        target.send_signal(signum)
        t_signal = time.monotonic()
        out, err = proc.communicate(timeout=timeout + 2 * SLACK)
        return proc.returncode, out, err, time.monotonic() - t_signal


# ---------------------------------------------------------------------------- peers that are not schedulers


@contextlib.contextmanager
def _peer(kind: str):
    """A listener on 127.0.0.1 that is no dask scheduler; yields its tcp:// address."""
    if kind == "http":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"tcp://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
        return
    sock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    accepted = []

    def garbage():  # answers every connection with the same arbitrary bytes
        sock.settimeout(0.1)
        noise = random.Random(0).randbytes(1 << 12)  # read by dask as the length of a 6 EiB message
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = sock.accept()
                accepted.append(conn)
                with contextlib.suppress(OSError):
                    conn.sendall(noise)

    thread = threading.Thread(target=garbage, daemon=True)
    if kind == "garbage":  # "silent": the kernel completes the handshakes, nobody ever reads or writes
        thread.start()
    try:
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        for conn in accepted:
            conn.close()
        sock.close()


@pytest.mark.parametrize("kind", ["http", "silent", "garbage"])
def test_a_peer_that_is_not_a_scheduler_is_an_error_within_the_timeout(kind, corpus, tmp_path):
    with _peer(kind) as address:
        done, took = _exit_of(["run", str(corpus), "--out", str(tmp_path / "r"), "--scheduler", address,
                               "--timeout", "3"], timeout=3)
    _one_line_error(done.stderr, 2, done.returncode, f"Cannot reach the dask scheduler at '{address}' within 3 s")
    assert took < 3 + SLACK
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- the scheduler


@pytest.mark.cluster
def test_a_scheduler_without_workers_is_an_error_within_the_timeout(corpus, tmp_path, dask_procs):
    _, sched_file = dask_procs.scheduler()
    done, took = _exit_of(["run", str(corpus), "--out", str(tmp_path / "r"), "--scheduler", str(sched_file),
                           "--timeout", "3"], timeout=3)
    _one_line_error(done.stderr, 2, done.returncode, "has no workers, and none joined within 3 s")
    assert took < 3 + SLACK


@pytest.mark.cluster
def test_a_frozen_scheduler_is_an_error_within_the_timeout(corpus, tmp_path, dask_procs):
    scheduler, sched_file = dask_procs.scheduler()
    dask_procs.worker(sched_file)
    code, _, err, took = _signal_mid_fit(["run", str(corpus), "--out", str(tmp_path / "r"), "--scheduler",
                                          str(sched_file), "--timeout", "5"], scheduler, signal.SIGSTOP, timeout=5)
    assert code == 2, err
    _last_line_only(err, f"No answer from the dask scheduler at '{_address(sched_file)}' for 5 s")
    assert took < 5 + SLACK
    assert not (tmp_path / "r").exists()


@pytest.mark.cluster
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_scheduler_is_one_line_and_the_rerun_on_a_new_one_finishes(how, corpus, tmp_path, dask_procs):
    scheduler, sched_file = dask_procs.scheduler()
    address = _address(sched_file)  # a scheduler stopped by SIGTERM removes its file
    dask_procs.worker(sched_file)
    args = ["run", str(corpus), "--out", str(tmp_path / "r"), "--timeout", "5"]
    code, _, err, took = _signal_mid_fit([*args, "--scheduler", str(sched_file)], scheduler, how, timeout=5)
    assert code == 2, err
    _last_line_only(err, f"Lost the connection to the dask scheduler at '{address}'")
    assert "run the same command again" in err
    assert took < 5 + SLACK
    _, new_file = dask_procs.scheduler()
    dask_procs.worker(new_file)
    done, _ = _exit_of([*args, "--scheduler", str(new_file)], timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote run" in done.stdout


# ---------------------------------------------------------------------------- a worker


@pytest.mark.cluster
def test_a_frozen_worker_is_replaced_within_the_schedulers_worker_ttl(corpus, tmp_path, dask_procs):
    """dask's ``distributed.scheduler.worker-ttl`` (a setting of the scheduler) bounds the
    stall: the scheduler drops a worker that has not sent a heartbeat for that long (at
    least 5 s; it looks every worker-ttl) and runs its tasks on the others."""
    _, sched_file = dask_procs.scheduler(DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL="3s")
    frozen = dask_procs.worker(sched_file)
    dask_procs.worker(sched_file)
    code, out, err, took = _signal_mid_fit(["run", str(corpus), "--out", str(tmp_path / "r"), "--scheduler",
                                            str(sched_file), "--timeout", "5"], frozen, signal.SIGSTOP, timeout=2 * 5)
    assert code == 0, err
    assert "wrote run" in out
    assert took < 2 * 5 + SLACK
    assert "Worker failed to heartbeat" in (tmp_path / "scheduler-0.log").read_text()  # the stall was real


@pytest.mark.cluster
def test_the_local_cluster_drops_a_silent_worker_after_the_timeout():
    from rifscale.cluster import connect

    with connect(processes=True, n_workers=1, timeout=7) as client:
        assert client.run_on_scheduler(_worker_ttl) == 7


def _worker_ttl(dask_scheduler):
    return dask_scheduler.worker_ttl


# ---------------------------------------------------------------------------- Ctrl-C


def _mapped(pid: int, library: str) -> bool:
    return library in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
@pytest.mark.parametrize("command", [["run", "c.zarr", "--out", "r"], ["runs", "."]])
def test_ctrl_c_during_the_imports_is_one_line_and_exit_130(command, tmp_path):
    """Ctrl-C while the command still imports NumPy, dask and zarr (about a second)."""
    with _running(command, cwd=tmp_path) as proc:
        t0 = time.monotonic()
        while "_multiarray_umath" not in Path(f"/proc/{proc.pid}/maps").read_text():  # importing NumPy
            assert proc.poll() is None and time.monotonic() - t0 < 60
            time.sleep(0.001)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    _one_line_error(err, 130, proc.returncode, "interrupted")
