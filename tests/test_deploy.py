"""`dask scheduler` and `dask worker` processes on 127.0.0.1, as a cluster job starts them:
the CLI attaches with --scheduler, and the factorisation is pinned to the worker that
advertises the GPU resource (on this CPU-only machine it factors with SciPy there)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import rifscale
from rifscale.cli import main
from rifscale.testing import Reference, make_problem

from .conftest import rel_err

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def _wait_for(path: Path, seconds=60):
    end = time.time() + seconds
    while time.time() < end:
        if path.exists() and path.stat().st_size > 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{path} did not appear")


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    sched_file = tmp / "scheduler.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    common = dict(cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", sched_file], **common)]
    try:
        _wait_for(sched_file)
        procs.append(subprocess.Popen([BIN / "dask", "worker", "--scheduler-file", sched_file, "--nthreads", "1",
                                       "--name", "cpu-0", "--no-dashboard", "--host", "127.0.0.1"], **common))
        procs.append(subprocess.Popen([BIN / "dask", "worker", "--scheduler-file", sched_file, "--nthreads", "1",
                                       "--name", "gpu-0", "--resources", "GPU=1", "--no-dashboard",
                                       "--host", "127.0.0.1"], **common))
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
            address = c.scheduler.address
            gpu_worker = [a for a, w in c.scheduler_info()["workers"].items() if w["name"] == "gpu-0"][0]
        yield {"address": address, "scheduler_file": sched_file, "gpu_worker": gpu_worker}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_cli_on_dask_scheduler_and_worker_processes(dask_processes, tmp_path):
    pr = make_problem(200, 25, n_test=60, seed=31)
    rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=40)
    for target in (dask_processes["address"], str(dask_processes["scheduler_file"])):
        out = tmp_path / f"run-{len(target)}"
        assert main(["-q", "run", str(tmp_path / "c.zarr"), "--out", str(out), "--test-subset", "all",
                     "--scheduler", target]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["factor"]["worker"] == dask_processes["gpu_worker"]
        assert manifest["factor"]["backend"] == ("cupy" if shutil.which("nvidia-smi") else "numpy")
        ref = Reference(pr.X, pr.y, lam=1.0)
        assert rel_err(rifscale.open_run(out).array("scores/leverage")[:], ref.h) <= 1e-8
