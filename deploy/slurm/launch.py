#!/usr/bin/env python
"""Run rifscale on a Dask cluster of SLURM jobs (dask-jobqueue's ``SLURMCluster``).

    python deploy/slurm/launch.py CONFIG.yaml --print-job-script
    python deploy/slurm/launch.py CONFIG.yaml CORPUS --out RUN [--sets SETS] [-- MORE `rifscale run` OPTIONS]

Run it where ``sbatch`` works (a login node, or inside an allocation) with the Python
environment that has rifscale and ``dask-jobqueue`` installed. It

1. reads CONFIG (YAML: see ``deploy/slurm/cpu.yaml`` and ``gpu.yaml``) and checks it, and
   checks the ``rifscale run`` command line, before anything is submitted;
2. starts a Dask scheduler here, bound to one address (the configured ``interface``'s, or
   ``scheduler_host``, or the address this host routes with), with its dashboard on
   127.0.0.1 unless the config says otherwise;
3. submits the CPU worker jobs and, with a ``gpu`` section, the GPU worker jobs
   (``--gres=gpu:1``, each one worker process advertising the Dask resource ``GPU=1``,
   which rifscale pins the factorisation of H to);
4. waits until every worker has joined (``wait.timeout`` seconds, then exits 2 naming the
   jobs to look at);
5. runs ``rifscale run CORPUS --out RUN ... --scheduler ADDRESS`` (and ``rifscale groups
   RUN --sets SETS`` when asked) and exits with its exit code;
6. closes the cluster (``scancel`` of every job) whatever happened, also on Ctrl-C and
   SIGTERM.

``--print-job-script`` prints the job script(s) that would be submitted, without
submitting anything or starting a scheduler (the scheduler address in it is then a
placeholder).

Workers never listen on every interface: without an ``interface`` each job finds the
address of its node that routes to the scheduler (``DASK_WORKER_HOST``, set in the job
script before the worker starts) and binds to it; worker HTTP servers (metrics, worker
dashboards) listen on 127.0.0.1 only.

This file is not part of the rifscale package; ``tests/test_deploy_slurm.py`` renders its
job scripts and runs it end to end against stand-ins for ``sbatch``/``scancel`` that run
the jobs as local processes (no SLURM installation was available where it was written).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

#: The keys of a job section (``cpu`` or ``gpu``) and what each becomes.
JOB_KEYS = {
    "jobs": "number of SLURM jobs of this kind",
    "cores": "CPU cores per job (#SBATCH --cpus-per-task)",
    "processes": "Dask worker processes per job (threads per worker = cores / processes)",
    "memory": "memory per job, e.g. 64GiB (#SBATCH --mem; split evenly over the worker processes)",
    "walltime": "HH:MM:SS or D-HH:MM:SS (#SBATCH -t)",
    "queue": "partition (#SBATCH -p)",
    "account": "account (#SBATCH -A)",
    "gpus": "GPUs per job (#SBATCH --gres=gpu:N); gpu section only, and 1",
    "job_name": "job name (#SBATCH -J)",
    "local_directory": "worker spill directory on node-local disk, e.g. $TMPDIR",
    "log_directory": "directory for the jobs' stdout/stderr files",
    "job_extra_directives": "more #SBATCH lines, e.g. ['--constraint=skylake', '--qos=normal']",
    "prologue": "shell lines run in the job before the worker starts (added after the top-level prologue)",
    "death_timeout": "seconds a worker waits for an unreachable scheduler before it exits",
}
#: Top-level keys of the config.
TOP_KEYS = {
    "python": "python on the compute nodes (default: the python running this launcher)",
    "prologue": "shell lines run in every job before its worker starts (activate the environment here)",
    "interface": "network interface for the scheduler and the workers, e.g. ib0 (default: by route)",
    "scheduler_host": "address to bind the scheduler to (default: the interface's, or this host's routed address)",
    "dashboard_address": "scheduler dashboard, host:port (default 127.0.0.1:8787)",
    "wait_timeout": "seconds to wait for all workers to join (default 1800)",
    "tls_dir": "directory with ca.pem, cert.pem, key.pem (as deploy/local/cluster.sh --tls-dir): the scheduler, "
               "the workers and rifscale then speak TLS and require certificates signed by that CA",
    "cpu": "CPU worker jobs",
    "gpu": "GPU worker jobs (optional)",
}
#: What a gpu section takes from the cpu section when it does not say.
INHERITED = ("walltime", "queue", "account", "local_directory", "log_directory", "job_extra_directives",
             "death_timeout")
#: Files of a tls_dir, as deploy/local/cluster.sh --tls-dir reads them.
TLS_FILES = ("ca.pem", "cert.pem", "key.pem")
WALLTIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}(:\d{2})?$|^\d+$")
PLACEHOLDER_SCHEDULER = "tcp://SCHEDULER-ADDRESS:8786"


class LaunchError(Exception):
    """A problem with the config, the command or the cluster; the message says what to do."""


def load_config(path) -> dict:
    import yaml

    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh)
    except OSError as exc:
        raise LaunchError(f"cannot read the config {str(path)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        raise LaunchError(f"the config {str(path)!r} is not valid YAML: {exc}") from None
    return check_config(raw, where=str(path))


def check_config(raw, where: str = "config") -> dict:
    """The config with defaults filled in; unknown keys and impossible values are errors
    (a typo in a key would otherwise silently submit jobs with the default)."""
    from dask.utils import parse_bytes

    if not isinstance(raw, dict):
        raise LaunchError(f"{where}: expected a mapping of settings, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise LaunchError(f"{where}: unknown key(s) {unknown}; known: {sorted(TOP_KEYS)}")
    if "cpu" not in raw:
        raise LaunchError(f"{where}: a 'cpu' section is required (the CPU worker jobs)")
    cfg = {
        "python": raw.get("python") or sys.executable,
        "prologue": _lines(raw.get("prologue"), f"{where}: prologue"),
        "interface": raw.get("interface"),
        "scheduler_host": raw.get("scheduler_host"),
        "dashboard_address": raw.get("dashboard_address", "127.0.0.1:8787"),
        "wait_timeout": raw.get("wait_timeout", 1800),
        "tls_dir": raw.get("tls_dir"),
    }
    if cfg["tls_dir"] is not None:
        tls = Path(os.path.expandvars(str(cfg["tls_dir"])))
        missing = [name for name in TLS_FILES if not (tls / name).is_file()]
        if missing:
            raise LaunchError(f"{where}: tls_dir {str(tls)!r} lacks {missing}; it needs {list(TLS_FILES)} (the CA, "
                              "and a certificate and key signed by it; see deploy/README.md, Security)")
        cfg["tls_dir"] = tls
    if cfg["interface"] and cfg["scheduler_host"]:
        raise LaunchError(f"{where}: give either interface or scheduler_host, not both")
    if isinstance(cfg["wait_timeout"], bool) or not isinstance(cfg["wait_timeout"], (int, float)) \
            or not cfg["wait_timeout"] > 0:
        raise LaunchError(f"{where}: wait_timeout must be a positive number of seconds")
    for kind in ("cpu", "gpu"):
        section = raw.get(kind)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise LaunchError(f"{where}: '{kind}' must be a mapping")
        unknown = sorted(set(section) - set(JOB_KEYS))
        if unknown:
            raise LaunchError(f"{where}: unknown key(s) {unknown} in '{kind}'; known: {sorted(JOB_KEYS)}")
        job = dict(section)
        if kind == "gpu":
            for key in INHERITED:
                if key not in job and key in raw["cpu"]:
                    job[key] = raw["cpu"][key]
        for key in ("jobs", "cores", "memory", "walltime"):
            if key not in job:
                raise LaunchError(f"{where}: '{kind}.{key}' is required ({JOB_KEYS[key]})")
        for key in ("jobs", "cores", "processes", "gpus"):
            value = job.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "jobs" else 1):
                sign = "non-negative" if key == "jobs" else "positive"
                raise LaunchError(f"{where}: '{kind}.{key}' must be a {sign} integer; got {value!r}")
        job.setdefault("processes", 1)
        if job["cores"] % job["processes"]:
            raise LaunchError(f"{where}: '{kind}.cores' ({job['cores']}) must be a multiple of "
                              f"'{kind}.processes' ({job['processes']}): each worker gets cores / processes threads")
        try:
            job["memory_bytes"] = parse_bytes(str(job["memory"]))
        except ValueError:
            raise LaunchError(f"{where}: '{kind}.memory' {job['memory']!r} is not a size such as 64GiB") from None
        if not WALLTIME.match(str(job["walltime"])):
            raise LaunchError(f"{where}: '{kind}.walltime' {job['walltime']!r} is not HH:MM:SS or D-HH:MM:SS")
        if kind == "cpu" and "gpus" in job:
            raise LaunchError(f"{where}: 'cpu.gpus' is not a setting; GPU jobs go in a 'gpu' section")
        if kind == "gpu":
            job.setdefault("gpus", 1)
            if job["gpus"] != 1 or job["processes"] != 1:
                raise LaunchError(
                    f"{where}: a GPU job is one worker process with one GPU (gpus: 1, processes: 1): every "
                    "process of a job sees all of the job's GPUs, so several would all use the first one. "
                    "Ask for more GPU jobs instead (or use dask-cuda's `dask cuda worker` for several GPUs per job)."
                )
        job["job_extra_directives"] = _lines(job.get("job_extra_directives"), f"{where}: {kind}.job_extra_directives")
        job["prologue"] = _lines(job.get("prologue"), f"{where}: {kind}.prologue")
        cfg[kind] = job
    if cfg["cpu"]["jobs"] + cfg.get("gpu", {}).get("jobs", 0) < 1:
        raise LaunchError(f"{where}: no jobs to submit (cpu.jobs and gpu.jobs are 0)")
    return cfg


def _lines(value, what) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LaunchError(f"{what} must be a string or a list of strings")
    return list(value)


def scheduler_host(cfg) -> str:
    """The address the scheduler binds to (never 0.0.0.0)."""
    from distributed.utils import get_ip, get_ip_interface

    if cfg["scheduler_host"]:
        return cfg["scheduler_host"]
    if cfg["interface"]:
        try:
            return get_ip_interface(cfg["interface"])
        except ValueError as exc:
            raise LaunchError(f"interface {cfg['interface']!r}: {exc}") from None
    host = get_ip()
    if host.startswith("127."):  # get_ip's answer when this host has no route out
        raise LaunchError("cannot tell which address of this host the compute nodes reach: set "
                          "'interface' (e.g. ib0) or 'scheduler_host' in the config")
    return host


def security(cfg):
    """The ``distributed.security.Security`` of a config with ``tls_dir`` (one certificate
    for the scheduler, the workers and the launcher's client; encryption required), or None."""
    if cfg.get("tls_dir") is None:
        return None
    from distributed.security import Security

    ca, cert, key = (str(cfg["tls_dir"] / name) for name in TLS_FILES)
    return Security(tls_ca_file=ca, tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert,
                    tls_worker_key=key, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


def tls_flags(cfg) -> list[str]:
    """rifscale's options for the same certificate (none without ``tls_dir``)."""
    if cfg.get("tls_dir") is None:
        return []
    ca, cert, key = (str(cfg["tls_dir"] / name) for name in TLS_FILES)
    return ["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]


def job_kwargs(cfg, kind: str, sched_host: str) -> dict:
    """Keyword arguments of ``dask_jobqueue.slurm.SLURMJob`` for one kind of job.

    The scheduler-facing address of each worker: with an ``interface`` dask-jobqueue
    passes ``--interface`` to the worker; without one the job script finds the address
    of its node that routes to the scheduler (``distributed.utils.get_ip``) before the
    worker starts, and the worker binds to it with ``--host``."""
    job = cfg[kind]
    python = cfg["python"]
    # dask's default stack sampling every 10 ms costs the kernels 20-30 % (deploy/README.md)
    prologue = ["set -e", "export DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL=${DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL:-100ms}",
                *cfg["prologue"], *job["prologue"]]
    extra = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    if not cfg["interface"]:
        probe = "import sys; from distributed.utils import get_ip; print(get_ip(sys.argv[1]))"
        prologue.append(f"DASK_WORKER_HOST=$({shlex.quote(python)} -c {shlex.quote(probe)} {shlex.quote(sched_host)})")
        extra += ["--host", '"$DASK_WORKER_HOST"']
    directives = list(job["job_extra_directives"])
    if kind == "gpu":
        directives.append(f"--gres=gpu:{job['gpus']}")
        extra += ["--resources", "GPU=1"]
    kwargs = dict(
        cores=job["cores"],
        processes=job["processes"],
        memory=str(job["memory"]),
        walltime=str(job["walltime"]),
        queue=job.get("queue"),
        account=job.get("account"),
        job_name=job.get("job_name", f"rifscale-{kind}"),
        interface=cfg["interface"],
        local_directory=job.get("local_directory"),
        log_directory=job.get("log_directory"),
        death_timeout=job.get("death_timeout", 120),
        python=python,
        job_script_prologue=prologue,
        job_extra_directives=directives,
        worker_extra_args=extra,
        security=security(cfg),  # dask-jobqueue adds the worker's --tls-* options
    )
    return kwargs


def job_scripts(cfg, scheduler: str = PLACEHOLDER_SCHEDULER) -> dict[str, str]:
    """The job script of each kind of job (``cpu``, and ``gpu`` when configured), as
    they would be submitted to a scheduler at ``scheduler``. Nothing is started."""
    from dask_jobqueue.slurm import SLURMJob

    host = re.sub(r"^\w+://", "", scheduler).rsplit(":", 1)[0]
    scripts = {}
    for kind in ("cpu", "gpu"):
        if kind in cfg and cfg[kind]["jobs"] > 0:
            kwargs = job_kwargs(cfg, kind, host)
            if kwargs["security"] is not None:
                scheduler = "tls://" + re.sub(r"^\w+://", "", scheduler)
            # SLURMJob creates log_directory; only rendering, leave nothing behind
            logs = kwargs["log_directory"] and Path(os.path.expandvars(kwargs["log_directory"]))
            missing = [p for p in ([logs, *logs.parents] if logs else []) if not p.exists()]
            try:
                scripts[kind] = SLURMJob(scheduler, name=f"{kind}-NAME", **kwargs).job_script()
            finally:
                for p in missing:
                    with contextlib.suppress(OSError):
                        p.rmdir()
    return scripts


def expected_workers(cfg) -> int:
    return sum(cfg[k]["jobs"] * cfg[k]["processes"] for k in ("cpu", "gpu") if k in cfg)


def rifscale_commands(corpus, out, sets, extra) -> list[list[str]]:
    """The rifscale command lines (without ``--scheduler``), checked with rifscale's own
    parser so that a typo fails here, before any job is submitted."""
    from rifscale.cli import build_parser

    commands = [["run", corpus, "--out", out, *extra]]
    if sets:
        commands.append(["groups", out, "--sets", sets])
    parser = build_parser()
    for argv in commands:
        if "--scheduler" in argv:
            raise LaunchError("do not pass --scheduler: the launcher points rifscale at the cluster it starts")
        try:
            parser.parse_args([*argv, "--scheduler", PLACEHOLDER_SCHEDULER])
        except SystemExit:
            raise LaunchError(f"invalid rifscale command: rifscale {shlex.join(argv)}") from None
    return commands


def rifscale_executable() -> list[str]:
    here = Path(sys.executable).parent / "rifscale"
    if here.exists():
        return [str(here)]
    found = shutil.which("rifscale")
    if found:
        return [found]
    return [sys.executable, "-c", "from rifscale.cli import console_main; console_main()"]


class _Terminated(KeyboardInterrupt):
    pass


def _on_sigterm(signum, frame):
    raise _Terminated()


def log(msg: str) -> None:
    print(f"launch: {msg}", file=sys.stderr, flush=True)


def launch(cfg, commands) -> int:
    """Start the cluster, wait for its workers, run the commands, close the cluster."""
    try:
        from dask_jobqueue import SLURMCluster
        from dask_jobqueue.slurm import SLURMJob
    except ImportError:
        raise LaunchError("dask-jobqueue is not installed in this environment: pip install dask-jobqueue") from None
    from distributed import Client

    host = scheduler_host(cfg)
    # the scheduler (here) drops a worker without heartbeats for this long (a frozen one) and
    # reruns its tasks; dask's default, 5 minutes, can stall a run for 10 (deploy/README.md)
    scheduler_options = {"dashboard_address": cfg["dashboard_address"],
                         "worker_ttl": os.environ.get("DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL", "60s")}
    if cfg["interface"]:
        scheduler_options["interface"] = cfg["interface"]
    else:
        scheduler_options["host"] = host
    n_expected = expected_workers(cfg)
    cpu = job_kwargs(cfg, "cpu", host)
    interface = cpu.pop("interface")
    cluster = SLURMCluster(scheduler_options=scheduler_options, interface=interface, **cpu)  # tls:// with security
    proc = None
    try:
        address = cluster.scheduler_address
        log(f"scheduler {address} (dashboard {cluster.dashboard_link})")
        cluster.scale(jobs=cfg["cpu"]["jobs"])
        gpu_jobs = cfg.get("gpu", {}).get("jobs", 0)
        if gpu_jobs:
            # a second kind of job on the same scheduler: SpecCluster starts and closes
            # every entry of worker_spec, whatever its class and options
            gpu = job_kwargs(cfg, "gpu", host)
            for i in range(gpu_jobs):
                cluster.worker_spec[f"{cluster.name}-gpu-{i}"] = {"cls": SLURMJob, "options": gpu}
            cluster.scale(jobs=len(cluster.worker_spec))
        log(f"submitted {cfg['cpu']['jobs']} CPU and {gpu_jobs} GPU job(s); waiting up to "
            f"{cfg['wait_timeout']:g} s for {n_expected} worker(s)")
        with Client(cluster) as client:
            started = time.monotonic()
            try:
                client.wait_for_workers(n_expected, timeout=cfg["wait_timeout"])
            except TimeoutError:
                joined = len(client.scheduler_info()["workers"])
                ids = sorted(str(j.job_id) for j in cluster.workers.values() if getattr(j, "job_id", None))
                raise LaunchError(
                    f"only {joined} of {n_expected} worker(s) joined within {cfg['wait_timeout']:g} s. Look at the "
                    f"jobs ({', '.join(ids) or 'none submitted'}): `squeue -j {','.join(ids)}` (still pending? raise "
                    "wait_timeout) and their logs in log_directory (a worker that cannot start: python, prologue, "
                    "network). The jobs are being cancelled."
                ) from None
            log(f"{n_expected} worker(s) up after {time.monotonic() - started:.0f} s")
        code = 0
        for argv in commands:
            full = [*rifscale_executable(), *argv, "--scheduler", address, *tls_flags(cfg)]
            log("running " + shlex.join(["rifscale", *argv, "--scheduler", address]))
            proc = subprocess.Popen(full)
            code = proc.wait()
            proc = None
            if code != 0:
                log(f"rifscale {argv[0]} exited with {code}")
                break
        return code
    except KeyboardInterrupt as exc:
        if proc is not None:
            try:  # Ctrl-C in a terminal reached rifscale too: let it stop by itself first
                proc.wait(timeout=0 if isinstance(exc, _Terminated) else 5)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
        log("interrupted; cancelling the jobs")
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        cluster.close()
        log("cluster closed (jobs cancelled)")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(
        prog="launch.py", description="Run rifscale on a Dask cluster of SLURM jobs (dask-jobqueue).",
        epilog="Options after -- are passed to `rifscale run`, e.g. -- --lam 2 --test-subset all.")
    ap.add_argument("config", help="YAML config (see deploy/slurm/cpu.yaml)")
    ap.add_argument("corpus", nargs="?", help="Zarr corpus, on storage every node sees")
    ap.add_argument("--out", help="run directory to create, on storage every node sees")
    ap.add_argument("--sets", help="also run `rifscale groups OUT --sets SETS` on the same cluster")
    ap.add_argument("--print-job-script", action="store_true",
                    help="print the job script(s) that would be submitted, and exit without submitting")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.print_job_script:
            for kind, script in job_scripts(cfg).items():
                print(f"# ---- {kind} job ({cfg[kind]['jobs']} of them) ----")
                print(script)
            return 0
        if not args.corpus or not args.out:
            ap.error("CORPUS and --out are required (or --print-job-script)")
        commands = rifscale_commands(args.corpus, args.out, args.sets, extra)
        if threading_main():
            signal.signal(signal.SIGTERM, _on_sigterm)
        return launch(cfg, commands)
    except LaunchError as exc:
        print(f"launch: error: {exc}", file=sys.stderr)
        return 2


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
