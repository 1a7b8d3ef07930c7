"""The local recipe, deploy/local/cluster.sh: `dask scheduler` and `dask worker` processes
on 127.0.0.1 that the CLI attaches to with --scheduler; the factorisation pinned to the
worker that advertises the GPU resource (on a CPU-only machine: a warning naming it, or
an error with --require-gpu); stop signals only the processes the script started."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import rifscale
from rifscale.cli import main
from rifscale.testing import Reference, make_problem

from .conftest import rel_err

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent
SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "local" / "cluster.sh"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
       "STOP_GRACE": "10"}
LINUX_PROC = Path("/proc/self/stat").exists()


def cluster_sh(*args, env=None, timeout=180, check=False) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", str(SCRIPT), *map(str, args)], env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def host_key() -> str:
    """The name of this host's folder under DIR/hosts, as the script spells it."""
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip() or os.uname().nodename
    return re.sub(r"[^A-Za-z0-9._-]", "_", host), host


def records(cluster_dir: Path) -> dict[str, dict]:
    """This host's process records: {name: {pid, start, boot, host, name, cmd}}."""
    out = {}
    for f in sorted((cluster_dir / "hosts" / host_key()[0]).glob("*.pid")):
        out[f.stem] = dict(line.split("=", 1) for line in f.read_text().splitlines() if "=" in line)
    return out


def proc_start(pid: int) -> str:
    """Field 22 of /proc/PID/stat (start time in clock ticks after boot)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[19]


def processes_of(cluster_dir: Path) -> list[psutil.Process]:
    """The recorded processes of this host whose start time still matches, and their children."""
    procs = []
    for rec in records(cluster_dir).values():
        pid = int(rec["pid"])
        if not psutil.pid_exists(pid) or proc_start(pid) != rec["start"]:
            continue
        p = psutil.Process(pid)
        procs += [p, *p.children(recursive=True)]
    return procs


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory):
    """The cluster of deploy/local/cluster.sh: a scheduler, one CPU and one GPU-resource worker."""
    tmp = tmp_path_factory.mktemp("deploy")
    done = cluster_sh("start", tmp, "--workers", 1, "--gpu-workers", 1, check=True)
    try:
        from distributed import Client

        with Client(scheduler_file=str(tmp / "scheduler.json"), timeout=30) as c:
            info = c.scheduler_info()["workers"]  # start returned only once both workers had joined
            assert sorted(w["name"].split("-")[0] for w in info.values()) == ["cpu", "gpu"], info
            address = c.scheduler.address
            gpu_worker = next(a for a, w in info.items() if w["name"].startswith("gpu-"))
            from rifscale.engine.factor import gpu_available

            gpu_usable = c.run(gpu_available, workers=[gpu_worker])[gpu_worker]
        yield {"address": address, "scheduler_file": tmp / "scheduler.json", "gpu_worker": gpu_worker,
               "dir": tmp, "start_output": done.stdout, "gpu_usable": gpu_usable}
    finally:
        cluster_sh("stop", tmp, timeout=120)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy-corpus")
    pr = make_problem(200, 25, n_test=60, seed=31)
    rifscale.ingest(tmp / "c.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=40)
    return tmp / "c.zarr", Reference(pr.X, pr.y, lam=1.0)


def test_cli_on_dask_scheduler_and_worker_processes(dask_processes, corpus, tmp_path):
    path, ref = corpus
    for target in (dask_processes["address"], str(dask_processes["scheduler_file"])):
        out = tmp_path / f"run-{len(target)}"
        assert main(["-q", "run", str(path), "--out", str(out), "--test-subset", "all", "--scheduler", target]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["factor"]["worker"] == dask_processes["gpu_worker"]
        assert manifest["factor"]["backend"] == ("cupy" if dask_processes["gpu_usable"] else "numpy")
        assert rel_err(rifscale.open_run(out).array("scores/leverage")[:], ref.h) <= 1e-8


def test_the_recipes_scheduler_drops_a_silent_worker_after_60_s(dask_processes):
    """A frozen worker costs at most two worker-ttls (deploy/README.md): 2 minutes here, not
    the 10 of dask's default."""
    from distributed import Client

    with Client(scheduler_file=str(dask_processes["scheduler_file"]), timeout=30) as c:
        # a lambda travels by value: the scheduler cannot import this test module
        assert c.run_on_scheduler(lambda dask_scheduler: dask_scheduler.worker_ttl) == 60


def test_a_softmax_hessian_goes_to_the_gpu_worker_like_the_binary_one(dask_processes, corpus, tmp_path):
    """Where H is factored is not the model family's business: the softmax model's
    P x P Hessian (here K = 2 forced by --model multinomial, P = 51) is factored on the
    worker that advertises GPU, with CuPy where it works; --device gpu (the row kernels on
    the GPU, NumPy-only for softmax) exits 2 before anything is written."""
    path, _ = corpus
    out = tmp_path / "softmax"
    args = ["-q", "run", str(path), "--test-subset", "all", "--scheduler", dask_processes["address"],
            "--model", "multinomial"]
    assert main([*args, "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["p"] == 2 * 26 - 1 and manifest["factor"]["worker"] == dask_processes["gpu_worker"]
    assert manifest["factor"]["backend"] == ("cupy" if dask_processes["gpu_usable"] else "numpy")
    assert main([*args, "--out", str(tmp_path / "gpu"), "--device", "gpu"]) == 2
    assert not (tmp_path / "gpu").exists()


def test_gpu_worker_without_a_device_warns_or_fails_with_require_gpu(dask_processes, corpus, tmp_path, caplog, capsys):
    """A worker that advertises GPU=1 but has no CUDA device/CuPy (this machine): a warning
    naming it, and with --require-gpu exit 2 before anything is written."""
    path, ref = corpus
    worker = dask_processes["gpu_worker"]
    args = ["-q", "run", str(path), "--test-subset", "all", "--scheduler", dask_processes["address"]]
    with caplog.at_level(logging.WARNING, logger="rifscale"):
        assert main([*args, "--out", str(tmp_path / "warned")]) == 0
    warned = [r.getMessage() for r in caplog.records if "advertises GPU" in r.getMessage()]
    capsys.readouterr()
    strict = tmp_path / "strict"
    code = main([*args, "--out", str(strict), "--require-gpu"])
    err = capsys.readouterr().err
    if dask_processes["gpu_usable"]:  # a machine with a GPU: no warning, and --require-gpu is satisfied
        assert not warned and code == 0
        assert json.loads((strict / "manifest.json").read_text())["factor"]["backend"] == "cupy"
        return
    assert len(warned) == 1 and worker in warned[0] and "gpu-" in warned[0], caplog.text
    assert "advertises GPU but has no usable CUDA device/CuPy; factoring with SciPy" in warned[0]
    assert rel_err(rifscale.open_run(tmp_path / "warned").array("scores/leverage")[:], ref.h) <= 1e-8
    assert code == 2, err
    assert "--require-gpu" in err and worker in err and "no usable CUDA device/CuPy" in err
    assert not strict.exists() and not list(tmp_path.glob(".strict*"))


def test_local_recipe_listens_on_loopback_only(dask_processes):
    """Every listening socket of the recipe's processes (scheduler, its HTTP server, the
    workers, their nannies and HTTP servers) is bound to 127.0.0.1."""
    procs = processes_of(dask_processes["dir"])
    pids = {p.pid for p in procs}
    assert len(records(dask_processes["dir"])) == 3 and len(pids) >= 5  # + the workers' child processes
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    hosts = {c.laddr.ip for c in listening}
    ports = {c.laddr.port for c in listening}
    assert hosts == {"127.0.0.1"}, listening
    # scheduler comm + HTTP, and for each of 2 workers: nanny, worker and the worker's HTTP server
    assert len(listening) >= 2 + 2 * 3, listening
    scheduler = json.loads(dask_processes["scheduler_file"].read_text())
    assert int(scheduler["address"].rsplit(":", 1)[1]) in ports
    assert scheduler["services"]["dashboard"] in ports  # the HTTP server, not on 0.0.0.0:8787
    assert f"http://127.0.0.1:{scheduler['services']['dashboard']}/status" in dask_processes["start_output"]


@pytest.mark.skipif(not LINUX_PROC, reason="builds records from /proc (Linux)")
def test_stop_signals_only_processes_whose_record_still_matches(tmp_path):
    """Records whose pid now belongs to another process (start time or command line
    differ), records of another host and records from before a reboot are never
    signalled; a record that matches is (SIGTERM)."""
    key, host = host_key()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(5)]
    try:
        def write(folder: str, name: str, proc, *, start=None, cmd="sleep 600", rec_host=host, rec_boot=boot):
            d = tmp_path / "hosts" / folder
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{name}.pid").write_text(
                f"pid={proc.pid}\nstart={start or proc_start(proc.pid)}\nboot={rec_boot}\nhost={rec_host}\n"
                f"name={name}\ncmd={cmd}\n")

        recycled_start, recycled_cmd, other_host, rebooted, ours = sleepers
        write(key, "worker-cpu-1", recycled_start, start=str(int(proc_start(recycled_start.pid)) + 1))
        write(key, "worker-cpu-2", recycled_cmd, cmd="/usr/bin/python /usr/bin/dask worker --name cpu-1")
        write("another-host", "worker-cpu-1", other_host, rec_host="another-host")
        write(key, "worker-cpu-3", rebooted, rec_boot="00000000-0000-0000-0000-000000000000")
        write(key, "worker-cpu-4", ours)
        done = cluster_sh("stop", tmp_path, check=True)
        assert ours.wait(timeout=30) == -signal.SIGTERM  # the positive control: a matching record is stopped
        time.sleep(0.5)
        for p in (recycled_start, recycled_cmd, other_host, rebooted):
            assert p.poll() is None, done.stdout
        assert done.stdout.count("now belongs to another process") == 2, done.stdout
        assert "recorded before this host restarted" in done.stdout
        assert "another-host" in done.stdout  # told, not touched
        assert not list((tmp_path / "hosts" / key).glob("*.pid"))  # this host's records are done with
        assert (tmp_path / "hosts" / "another-host" / "worker-cpu-1.pid").exists()
    finally:
        for p in sleepers:
            if p.poll() is None:
                p.kill()
            p.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stale_scheduler_file_is_replaced_and_a_foreign_one_refused(tmp_path):
    """After a crash (scheduler SIGKILLed) start does not report the dead scheduler as
    running: it replaces the file it wrote and starts a scheduler that answers. A
    scheduler file it did not write is left alone, and start fails."""
    from distributed import Client

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    text = json.dumps({"type": "Scheduler", "id": "Scheduler-someone-else", "address": f"tcp://127.0.0.1:{_free_port()}"})
    (foreign / "scheduler.json").write_text(text)
    done = cluster_sh("start", foreign, "--workers", 0, "--timeout", 5)
    assert done.returncode == 1 and "this script did not write it" in done.stderr, done.stderr
    assert (foreign / "scheduler.json").read_text() == text

    d = tmp_path / "own"
    try:
        cluster_sh("start", d, "--workers", 0, check=True)
        first = json.loads((d / "scheduler.json").read_text())
        rec = records(d)["scheduler"]
        assert proc_start(int(rec["pid"])) == rec["start"]  # the process the script started
        os.kill(int(rec["pid"]), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while psutil.pid_exists(int(rec["pid"])) and psutil.Process(int(rec["pid"])).status() != "zombie":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert (d / "scheduler.json").exists()  # stale: nothing removed it
        done = cluster_sh("start", d, "--workers", 1, check=True)
        assert "removing the stale" in done.stdout
        second = json.loads((d / "scheduler.json").read_text())
        assert second["id"] != first["id"]
        with Client(scheduler_file=str(d / "scheduler.json"), timeout=20) as c:  # it answers, with the worker
            assert len(c.scheduler_info()["workers"]) == 1
    finally:
        cluster_sh("stop", d, timeout=120)
    assert not (d / "scheduler.json").exists() and not processes_of(d)


def test_start_fails_when_workers_do_not_join_and_stops_what_it_started(tmp_path):
    """A worker that cannot join within --timeout (here: held up by a preload that
    sleeps): start exits 1 naming it, and stops the scheduler and worker it started."""
    slow = tmp_path / "slow_preload.py"
    slow.write_text("import time\ntime.sleep(300)\n")
    env = {**ENV, "DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([str(slow)]), "STOP_GRACE": "5"}
    d = tmp_path / "c"
    done = cluster_sh("start", d, "--workers", 1, "--timeout", 3, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"worker\(s\) cpu-\S+-1 did not join the scheduler at tcp://127\.0\.0\.1:\d+ within 3 s",
                     done.stderr), done.stderr
    assert not (d / "scheduler.json").exists() and not records(d)
    left = [p for p in psutil.process_iter(["cmdline"]) if str(d) in " ".join(p.info["cmdline"] or [])]
    assert not left, left


def test_bad_arguments_exit_2(tmp_path):
    assert cluster_sh("start", tmp_path, "--workers", "two").returncode == 2
    assert cluster_sh("start", tmp_path, "--tls-dir", tmp_path / "none").returncode == 2
    assert cluster_sh("launch", tmp_path).returncode == 2
