"""The SLURM recipes of deploy/slurm/, checked without SLURM (there is none where these
tests run; no job was ever submitted to a real SLURM by them):

* ``launch.py`` (dask-jobqueue's SLURMCluster): its job scripts are rendered by
  dask-jobqueue from the sample configs and read line by line (#SBATCH lines, the worker
  command parsed by ``dask worker``'s own option parser, the prologue); and it runs end to
  end against stand-ins for ``sbatch``/``scancel`` that run each job script as local
  processes in a session of their own (``scancel`` ends that session), so the scheduler,
  the wait for the workers, ``rifscale run`` and the cancelling are real.
* ``rifscale.sbatch``: ``bash -n``, checks that catch the bugs of the old example, and a
  run end to end with a stand-in for ``srun`` that, like SLURM's cgroup tracking, kills
  whatever a step leaves behind when its command exits.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from dask.utils import parse_bytes

import rifscale
from rifscale.testing import make_problem

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "deploy" / "slurm"
BIN = Path(sys.executable).parent


def _launcher():
    spec = importlib.util.spec_from_file_location("rifscale_slurm_launch", SLURM / "launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


launch = _launcher()


def sbatch_lines(script: str) -> list[str]:
    return [ln.removeprefix("#SBATCH ").strip() for ln in script.splitlines() if ln.startswith("#SBATCH ")]


def worker_line(script: str) -> tuple[int, list[str]]:
    """(line number, argv) of the ``python -m distributed.cli.dask_worker`` line."""
    lines = script.splitlines()
    (i,) = [i for i, ln in enumerate(lines) if "-m distributed.cli.dask_worker" in ln]
    return i, shlex.split(lines[i])


def worker_options(argv: list[str]) -> dict:
    """The worker's options as ``dask worker`` itself parses them (an unknown option or a
    missing value is an error here, as it would be in the job)."""
    from distributed.cli.dask_worker import main as dask_worker

    module = argv.index("distributed.cli.dask_worker")
    return dask_worker.make_context("dask worker", argv[module + 1:]).params


def test_cpu_job_script_from_the_sample_config():
    cfg = launch.load_config(SLURM / "cpu.yaml")
    scripts = launch.job_scripts(cfg, "tcp://10.1.2.3:8786")
    assert set(scripts) == {"cpu"}
    script = scripts["cpu"]
    sbatch = sbatch_lines(script)
    for line in ("--cpus-per-task=32", "--mem=120G", "-t 04:00:00", "-p compute", "-A my-account", "--exclusive",
                 "-J rifscale-cpu", "-n 1"):
        assert line in sbatch, (line, sbatch)
    assert not any("gres" in ln for ln in sbatch)
    i, argv = worker_line(script)
    opts = worker_options(argv)
    assert opts["scheduler"] == "tcp://10.1.2.3:8786"
    assert (int(opts["n_workers"]), opts["nthreads"]) == (32, 1)  # one single-threaded worker per core
    # the workers' memory limits add up to the job's --mem, not more
    assert 32 * parse_bytes(opts["memory_limit"]) <= parse_bytes("120GiB")
    assert 32 * parse_bytes(opts["memory_limit"]) >= 0.95 * parse_bytes("120GiB")
    assert opts["resources"] is None
    assert opts["local_directory"] == "$TMPDIR"
    # bound to the node's routed address, HTTP on 127.0.0.1: nothing on every interface
    assert opts["host"] == "$DASK_WORKER_HOST" and opts["interface"] is None
    assert opts["dashboard_address"] == "127.0.0.1:0" and opts["dashboard"] is False
    assert "0.0.0.0" not in script
    # the prologue, in order, before the worker: stop on error, activate, find the address
    lines = script.splitlines()
    body = [ln for ln in lines[:i] if ln and not ln.startswith("#")]
    assert body[0] == "set -e"
    # the workers' stack sampler at 100 ms unless the user's prologue says otherwise (it costs the kernels)
    assert body[1] == "export DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL=${DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL:-100ms}"
    assert body[2:4] == ["module load python/3.12", "source /shared/envs/rifscale/bin/activate"]
    assert body[4].startswith("DASK_WORKER_HOST=$(python -c ")


def test_the_worker_address_line_finds_the_address_that_routes_to_the_scheduler():
    """The prologue line is run by bash as the job would run it (here the scheduler is on
    127.0.0.1, so the routed address is 127.0.0.1)."""
    cfg = launch.load_config(SLURM / "cpu.yaml")
    cfg["python"], cfg["prologue"] = sys.executable, []
    script = launch.job_scripts(cfg, "tcp://127.0.0.1:8786")["cpu"]
    (line,) = [ln for ln in script.splitlines() if ln.startswith("DASK_WORKER_HOST=")]
    done = subprocess.run(["bash", "-c", f'{line}\necho "[$DASK_WORKER_HOST]"'], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[127.0.0.1]"


def test_gpu_jobs_ask_for_a_gpu_and_advertise_the_gpu_resource():
    cfg = launch.load_config(SLURM / "gpu.yaml")
    scripts = launch.job_scripts(cfg, "tcp://10.1.2.3:8786")
    assert set(scripts) == {"cpu", "gpu"}
    gpu = scripts["gpu"]
    sbatch = sbatch_lines(gpu)
    # its own partition and size; walltime, account and log directory from the cpu section
    for line in ("--gres=gpu:1", "-p gpu", "--cpus-per-task=8", "--mem=64G", "-t 04:00:00", "-A my-account",
                 "-J rifscale-gpu", "-o dask-logs/rifscale-gpu-%J.out"):
        assert line in sbatch, (line, sbatch)
    i, argv = worker_line(gpu)
    opts = worker_options(argv)
    assert opts["resources"] == "GPU=1"
    assert opts["n_workers"] is None and opts["nthreads"] == 8  # one worker process per GPU job
    assert parse_bytes(opts["memory_limit"]) == parse_bytes("64GiB")
    body = [ln for ln in gpu.splitlines()[:i] if ln and not ln.startswith("#")]
    assert body.index("source /shared/envs/rifscale/bin/activate") < body.index("module load cuda/12")
    # nothing of the GPU jobs leaks into the CPU jobs
    cpu = scripts["cpu"]
    assert "gres" not in cpu and "GPU=1" not in cpu and "cuda" not in cpu
    assert worker_options(worker_line(cpu)[1])["resources"] is None


def test_an_interface_binds_scheduler_and_workers_to_it():
    cfg = launch.load_config(SLURM / "cpu.yaml")
    cfg["interface"] = "ib0"
    script = launch.job_scripts(cfg, "tcp://10.1.2.3:8786")["cpu"]
    opts = worker_options(worker_line(script)[1])
    assert opts["interface"] == "ib0" and opts["host"] is None
    assert "DASK_WORKER_HOST" not in script


@pytest.mark.parametrize("change, message", [
    (lambda c: c["cpu"].update(core=8), r"unknown key\(s\) \['core'\] in 'cpu'"),
    (lambda c: c.update(wait=5), r"unknown key\(s\) \['wait'\]"),
    (lambda c: c["cpu"].update(cores=30, processes=4), "must be a multiple of"),
    (lambda c: c["cpu"].update(walltime="4h"), "walltime"),
    (lambda c: c["cpu"].update(memory="lots"), "not a size"),
    (lambda c: c["cpu"].pop("memory"), r"'cpu.memory' is required"),
    (lambda c: c["cpu"].update(jobs=-1), "non-negative integer"),
    (lambda c: c["gpu"].update(gpus=2), "one worker process with one GPU"),
    (lambda c: c["gpu"].update(processes=2, cores=8), "one worker process with one GPU"),
    (lambda c: c["cpu"].update(gpus=1), "GPU jobs go in a 'gpu' section"),
    (lambda c: c.update(interface="ib0", scheduler_host="10.0.0.1"), "either interface or scheduler_host"),
    (lambda c: (c["cpu"].update(jobs=0), c["gpu"].update(jobs=0)), "no jobs to submit"),
])
def test_config_mistakes_are_errors_before_anything_is_submitted(change, message):
    import yaml

    raw = yaml.safe_load((SLURM / "gpu.yaml").read_text())
    launch.check_config(raw)  # the sample itself is fine
    change(raw)
    with pytest.raises(launch.LaunchError, match=message):
        launch.check_config(raw)


def test_the_rifscale_command_is_checked_with_rifscale_s_parser():
    assert launch.rifscale_commands("c.zarr", "run", "sets.json", ["--lam", "2"]) == [
        ["run", "c.zarr", "--out", "run", "--lam", "2"], ["groups", "run", "--sets", "sets.json"]]
    with pytest.raises(launch.LaunchError, match="invalid rifscale command"):
        launch.rifscale_commands("c.zarr", "run", None, ["--lamda", "2"])
    with pytest.raises(launch.LaunchError, match="do not pass --scheduler"):
        launch.rifscale_commands("c.zarr", "run", None, ["--scheduler", "tcp://x:1"])


# --- stand-ins for SLURM's commands -------------------------------------------------

FAKE_SBATCH = """
# sbatch: run the job script here, in a session of its own; print the job id
import os, shutil, subprocess, sys
state = os.environ["FAKE_SLURM_DIR"]
job = str(os.getpid())
script = os.path.join(state, f"job-{job}.sh")
shutil.copy(sys.argv[-1], script)  # dask-jobqueue deletes its file after submitting
with open(os.path.join(state, f"job-{job}.log"), "w") as log:
    p = subprocess.Popen(["bash", script], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, env={**os.environ, "SLURM_JOB_ID": job})
with open(os.path.join(state, f"job-{job}.pgid"), "w") as fh:
    fh.write(str(p.pid))
print(f"Submitted batch job {job}")
"""

FAKE_SCANCEL = """
# scancel: end the session of each job that the stand-in sbatch started
import os, signal, sys, time
state = os.environ["FAKE_SLURM_DIR"]
for job in sys.argv[1:]:
    path = os.path.join(state, f"job-{job}.pgid")
    if not os.path.exists(path):
        continue
    pgid = int(open(path).read())
    open(os.path.join(state, f"job-{job}.cancelled"), "w").close()
    try:
        os.killpg(pgid, signal.SIGTERM)
        for _ in range(300):
            time.sleep(0.1)
            os.killpg(pgid, 0)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""

FAKE_SRUN = """
# srun: run the command once, here, in a session of its own; pass SIGTERM/SIGINT on to it;
# when it exits, kill whatever it left behind (as SLURM's cgroup tracking ends a step)
import os, signal, subprocess, sys
args = sys.argv[1:]
while args and args[0].startswith("-"):
    assert "=" in args[0], f"this stand-in takes --option=value only: {args[0]}"
    args.pop(0)
p = subprocess.Popen(args, start_new_session=True)
with open(os.path.join(os.environ["FAKE_SLURM_DIR"], f"step-{p.pid}.pgid"), "w") as fh:
    fh.write(str(p.pid))
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda s, f: p.send_signal(s))
code = p.wait()
try:
    os.killpg(p.pid, signal.SIGKILL)
except ProcessLookupError:
    pass
sys.exit(code)
"""


@pytest.fixture
def fake_slurm(tmp_path):
    """A bin directory with sbatch, scancel and srun stand-ins, and their state directory."""
    fake_bin, state = tmp_path / "fake-bin", tmp_path / "fake-slurm"
    fake_bin.mkdir()
    state.mkdir()
    for name, source in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL), ("srun", FAKE_SRUN)):
        path = fake_bin / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(source))
        path.chmod(0o755)
    env = {**os.environ, "FAKE_SLURM_DIR": str(state), "PYTHONWARNINGS": "ignore",
           "PATH": os.pathsep.join([str(fake_bin), str(BIN), os.environ["PATH"]])}
    yield env, state
    for pgid_file in state.glob("*.pgid"):  # a failing test must not leave processes running
        try:
            os.killpg(int(pgid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pgid: int, grace: float = 10.0) -> list[int]:
    """Processes of the group ``pgid`` still running after up to ``grace`` seconds (killed
    processes can linger a moment as zombies until they are reaped; those do not count)."""
    deadline = time.monotonic() + grace
    while True:
        running = []
        for p in psutil.process_iter(["status"]):
            try:
                if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    running.append(p.pid)
            except (ProcessLookupError, psutil.Error):
                pass
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.2)


def _corpus(tmp_path):
    pr = make_problem(200, 12, n_test=60, seed=41)
    corpus = tmp_path / "c.zarr"
    rifscale.ingest(corpus, train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=50)
    return corpus


def _worker_addresses(log: str) -> list[str]:
    return re.findall(r"Start worker at:\s+(\S+)", log)


def _test_config(tmp_path, cpu_prologue=None, wait_timeout=120, gpu_jobs=1):
    cfg = {
        "python": sys.executable,
        "interface": "lo",
        "dashboard_address": "127.0.0.1:0",
        "wait_timeout": wait_timeout,
        "cpu": {"jobs": 1, "cores": 1, "processes": 1, "memory": "1GiB", "walltime": "00:10:00", "queue": "debug",
                "local_directory": str(tmp_path / "spill"), "log_directory": str(tmp_path / "logs"),
                "prologue": cpu_prologue or []},
    }
    if gpu_jobs:
        cfg["gpu"] = {"jobs": gpu_jobs, "cores": 1, "memory": "1GiB", "queue": "gpu-debug"}
    path = tmp_path / "slurm.json"  # JSON is YAML
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.cluster
def test_launcher_runs_rifscale_on_jobs_and_cancels_them(tmp_path, fake_slurm):
    env, state = fake_slurm
    corpus, out = _corpus(tmp_path), tmp_path / "run"
    done = subprocess.run(
        [sys.executable, SLURM / "launch.py", _test_config(tmp_path), corpus, "--out", out, "--",
         "--test-subset", "all"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "2 worker(s) up" in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    jobs = sorted(p.stem for p in state.glob("job-*.pgid"))
    assert len(jobs) == 2  # one CPU job, one GPU job
    scripts = {j: (state / f"{j}.sh").read_text() for j in jobs}
    (gpu_job,) = [j for j in jobs if "--gres=gpu:1" in scripts[j]]
    assert "--resources GPU=1" in scripts[gpu_job]
    # the factorisation ran on the GPU job's worker (by its resource), bound to lo's address
    (gpu_worker,) = _worker_addresses((state / f"{gpu_job}.log").read_text())
    assert manifest["factor"]["worker"] == gpu_worker and gpu_worker.startswith("tcp://127.0.0.1:")
    # every job was cancelled, and nothing of them is left running
    for j in jobs:
        assert (state / f"{j}.cancelled").exists()
        assert not _alive(int((state / f"{j}.pgid").read_text()))


@pytest.mark.cluster
def test_launcher_gives_up_when_workers_do_not_join(tmp_path, fake_slurm):
    env, state = fake_slurm
    corpus, out = _corpus(tmp_path), tmp_path / "run"
    config = _test_config(tmp_path, cpu_prologue=["echo 'no python here' >&2; exit 3"], wait_timeout=4, gpu_jobs=0)
    done = subprocess.run([sys.executable, SLURM / "launch.py", config, corpus, "--out", out], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-4000:]
    assert "only 0 of 1 worker(s) joined within 4 s" in done.stderr
    (job,) = [p.stem for p in state.glob("job-*.pgid")]
    assert job.removeprefix("job-") in done.stderr  # names the job to look at
    assert "no python here" in (state / f"{job}.log").read_text()
    assert (state / f"{job}.cancelled").exists()
    assert not out.exists()


def test_print_job_script_submits_nothing_and_leaves_nothing(tmp_path, fake_slurm):
    env, state = fake_slurm
    done = subprocess.run([sys.executable, SLURM / "launch.py", SLURM / "gpu.yaml", "--print-job-script"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("#!/usr/bin/env bash") == 2 and "--gres=gpu:1" in done.stdout
    assert not list(state.iterdir())  # sbatch was not called
    assert not (tmp_path / "dask-logs").exists()  # the log directory is made by the jobs' launch only


# --- the batch script ---------------------------------------------------------------

SBATCH = SLURM / "rifscale.sbatch"


def test_batch_script_parses_and_has_none_of_the_old_bugs():
    subprocess.run(["bash", "-n", SBATCH], check=True, timeout=30)
    text = SBATCH.read_text()
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert "0.0.0.0" not in text
    # each background process of the batch script is remembered and stopped on exit
    background = re.findall(r"&\n(\w+)=\$!", code)
    assert sorted(background) == ["scheduler_pid", "workers_pid"]
    assert code.count("&\n") == len(background) + code.count("&\n  pids+=($!)")
    stop = code[code.index("stop_cluster() {"):]
    stop = stop[:stop.index("\n}")]
    assert 'stop "$workers_pid"' in stop and 'stop "$scheduler_pid"' in stop
    assert re.search(r"^trap stop_cluster EXIT$", code, flags=re.M)
    # one worker step across the nodes, whose task waits for its workers
    assert len(re.findall(r"^srun ", code, flags=re.M)) == 1
    assert "until wait; do :; done" in code
    # the wait for every worker comes before the work
    assert code.index("wait_for_workers(expected") < code.index("rifscale run")
    assert re.search(r"EXPECTED=\$\(\(NODES \* \(WORKERS_PER_NODE \+ GPU_WORKERS_PER_NODE\)\)\)", code)
    # the scheduler is bound to an address; the workers to theirs
    assert re.search(r'dask scheduler --host "\$SCHEDULER_HOST"', code)
    assert 'bind=(--host "$host")' in code and 'bind=(--interface "$DASK_INTERFACE")' in code
    # the old script located helpers by $0, which SLURM copies to a spool directory
    assert "$0" not in code and "cluster.sh" not in code


def _batch_env(env, tmp_path, corpus, out, **more):
    return {**env, "SLURM_JOB_ID": "4242", "SLURM_NNODES": "1", "SLURM_CPUS_PER_TASK": "1",
            "SLURM_SUBMIT_DIR": str(tmp_path), "CORPUS": str(corpus), "RUN": str(out), "DASK_INTERFACE": "lo",
            "DASHBOARD_PORT": "0", "WORKERS_PER_NODE": "1", "GPU_WORKERS_PER_NODE": "1", "TMPDIR": str(tmp_path),
            "RIFSCALE_ARGS": "--test-subset all", "WAIT_TIMEOUT": "60", **more}


def _leftovers(path: Path, grace: float = 10.0) -> list[str]:
    """Command lines of running processes that name ``path`` (after up to ``grace`` s)."""
    deadline = time.monotonic() + grace
    while True:
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if str(path) in cmd and p.pid != os.getpid() and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(cmd)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.cluster
def test_batch_script_runs_rifscale_on_its_cluster_and_stops_it(tmp_path, fake_slurm):
    env, state = fake_slurm
    corpus, out = _corpus(tmp_path), tmp_path / "run"
    (tmp_path / "sets.json").write_text(json.dumps({"first": [0, 1, 2], "second": [5, 8]}))
    batch_env = _batch_env(env, tmp_path, corpus, out, SETS=str(tmp_path / "sets.json"))
    done = subprocess.run(["bash", SBATCH], env=batch_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "2 worker(s) joined" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert (out / "groups" / "zarr.json").exists()
    dask_dir = tmp_path / "dask-4242"
    assert re.search(r"Scheduler at:\s+tcp://127\.0\.0\.1:", (dask_dir / "scheduler.log").read_text())
    (gpu_worker,) = _worker_addresses((dask_dir / "worker-gpu-{}-0.log".format(_short_hostname())).read_text())
    assert manifest["factor"]["worker"] == gpu_worker
    # the worker step lived through the work (it is torn down only by the script) and
    # nothing is left: no scheduler, no worker, no scheduler file
    (step,) = state.glob("step-*.pgid")
    assert not _alive(int(step.read_text()))
    assert not _leftovers(dask_dir)
    assert not (dask_dir / "scheduler.json").exists()


@pytest.mark.cluster
def test_batch_script_stops_when_not_every_worker_joins(tmp_path, fake_slurm):
    """Two nodes' workers expected, one (stand-in) task started: the script must not start
    rifscale on half a cluster; it fails after WAIT_TIMEOUT and stops what it started."""
    env, state = fake_slurm
    corpus, out = _corpus(tmp_path), tmp_path / "run"
    done = subprocess.run(["bash", SBATCH], env=_batch_env(env, tmp_path, corpus, out, SLURM_NNODES="2",
                                                            GPU_WORKERS_PER_NODE="0", WAIT_TIMEOUT="3"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    assert "only 1 of 2 worker(s) joined within 3 s" in done.stderr
    assert not out.exists()
    assert not _leftovers(tmp_path / "dask-4242")


def _short_hostname() -> str:
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory):
    """ca.pem, cert.pem, key.pem: one certificate (client and server use) signed by a CA
    made here, as deploy/local/cluster.sh --tls-dir and the launcher's tls_dir read them."""
    pytest.importorskip("cryptography", reason="the dev extra installs cryptography to make test certificates")
    from .test_tls import make_ca, make_cert, write_pems

    ca = make_ca("rifscale test CA")
    return write_pems(tmp_path_factory.mktemp("slurm-tls") / "tls", ca[1], make_cert(ca, "dask cluster", server=True))


def test_tls_dir_puts_the_workers_on_tls_with_the_certificates(tmp_path, tls_dir):
    raw = {**__import__("yaml").safe_load((SLURM / "gpu.yaml").read_text()), "tls_dir": str(tls_dir)}
    cfg = launch.check_config(raw)
    for kind, script in launch.job_scripts(cfg, "tcp://10.1.2.3:8786").items():
        _, argv = worker_line(script)
        opts = worker_options(argv)
        assert argv[argv.index("distributed.cli.dask_worker") + 1] == "tls://10.1.2.3:8786", kind
        assert (opts["tls_ca_file"], opts["tls_cert"], opts["tls_key"]) == tuple(
            str(tls_dir / f) for f in ("ca.pem", "cert.pem", "key.pem")), kind
    assert launch.tls_flags(cfg)[::2] == ["--tls-ca-file", "--tls-cert", "--tls-key"]
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "ca.pem").write_text("x")
    with pytest.raises(launch.LaunchError, match=r"lacks \['cert.pem', 'key.pem'\]"):
        launch.check_config({**raw, "tls_dir": str(tmp_path / "partial")})


@pytest.mark.cluster
def test_launcher_runs_rifscale_over_tls(tmp_path, fake_slurm, tls_dir):
    env, state = fake_slurm
    corpus, out = _corpus(tmp_path), tmp_path / "run"
    config = _test_config(tmp_path, gpu_jobs=0)
    config.write_text(json.dumps({**json.loads(config.read_text()), "tls_dir": str(tls_dir)}))
    done = subprocess.run([sys.executable, SLURM / "launch.py", config, corpus, "--out", out], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert re.search(r"scheduler tls://127\.0\.0\.1:\d+", done.stderr)
    assert re.search(r"running rifscale run .* --scheduler tls://", done.stderr)
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    (job,) = [p.stem for p in state.glob("job-*.pgid")]
    assert (state / f"{job}.cancelled").exists()
