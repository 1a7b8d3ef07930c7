"""`dask scheduler` and `dask worker` processes on 127.0.0.1, started by deploy/cluster.sh:
the CLI attaches with --scheduler, and the factorisation is pinned to the worker that
advertises the GPU resource (on this CPU-only machine it factors with SciPy there)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rifscale
from rifscale.cli import main
from rifscale.testing import Reference, make_problem

from .conftest import rel_err

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory):
    """The cluster of deploy/cluster.sh: a scheduler, one CPU and one GPU-resource worker."""
    tmp = tmp_path_factory.mktemp("deploy")
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", DEPLOY / "cluster.sh", "start", tmp, "--workers", "1", "--gpu-workers", "1"],
                   check=True, env=env, timeout=120)
    try:
        from distributed import Client

        with Client(scheduler_file=str(tmp / "scheduler.json"), timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
            address = c.scheduler.address
            gpu_worker = [a for a, w in c.scheduler_info()["workers"].items() if w["name"].startswith("gpu-")][0]
        yield {"address": address, "scheduler_file": tmp / "scheduler.json", "gpu_worker": gpu_worker}
    finally:
        subprocess.run(["bash", DEPLOY / "cluster.sh", "stop", tmp], env=env, timeout=60)


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
