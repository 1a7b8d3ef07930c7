"""The command line: ingest, run, errors and exit codes, and the demo on the embedded data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import rifscale
from rifscale.cli import main
from rifscale.testing import Reference, make_problem

from .conftest import rel_err

BIN = Path(sys.executable).parent


@pytest.fixture
def npz(tmp_path):
    pr = make_problem(70, 9, n_test=30, seed=4, dtype=np.float32)
    f = tmp_path / "data.npz"
    np.savez_compressed(f, train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test)
    return f, pr


def test_ingest_cli_from_npz_and_npy(tmp_path, npz, capsys):
    f, pr = npz
    assert main(["ingest", str(tmp_path / "a.zarr"), "--npz", str(f), "--chunk-rows", "16"]) == 0
    assert "train 70 x 9, test 30 x 9, 5 row chunk(s)" in capsys.readouterr().out
    np.save(tmp_path / "X.npy", pr.X)
    np.save(tmp_path / "y.npy", pr.y)
    assert main(["ingest", str(tmp_path / "b.zarr"), "--train-X", str(tmp_path / "X.npy"),
                 "--train-y", str(tmp_path / "y.npy"), "--dtype", "float64"]) == 0
    b = rifscale.open_corpus(tmp_path / "b.zarr")
    assert b.train.X.dtype == np.float64 and b.test is None
    # existing output: refused with exit code 2 and a message naming the fix
    assert main(["ingest", str(tmp_path / "b.zarr"), "--npz", str(f)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_run_cli_errors_exit_2_without_output(tmp_path, npz, capsys):
    f, _ = npz
    main(["ingest", str(tmp_path / "c.zarr"), "--npz", str(f)])
    capsys.readouterr()
    assert main(["run", str(tmp_path / "c.zarr"), "--out", str(tmp_path / "r"), "--lam", "-1"]) == 2
    assert "'lam' parameter must be a finite float >= 0. Got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    (tmp_path / "r").mkdir()
    assert main(["run", str(tmp_path / "c.zarr"), "--out", str(tmp_path / "r")]) == 2
    assert "already exists; choose another --out, or pass --overwrite" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "r2")]) == 2
    assert "No corpus at" in capsys.readouterr().err


def test_console_script_run_end_to_end(tmp_path, npz):
    """`rifscale ingest` + `rifscale run` as a user types them (own LocalCluster)."""
    f, pr = npz
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run([BIN / "rifscale", "-q", "ingest", tmp_path / "c.zarr", "--npz", f, "--chunk-rows", "25"], check=True, env=env)
    done = subprocess.run(
        [BIN / "rifscale", "-q", "run", tmp_path / "c.zarr", "--out", tmp_path / "run", "--lam", "0.7",
         "--no-intercept", "--test-subset", "all", "--workers", "2"],
        capture_output=True, text=True, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "fit converged" in done.stdout
    ref = Reference(pr.X, pr.y, lam=0.7, fit_intercept=False)
    run = rifscale.open_run(tmp_path / "run")
    assert rel_err(run.model.theta, ref.theta) <= 1e-8
    s_if, s_rif = ref.scores("test_prediction", pr.X_test, pr.y_test)
    assert rel_err(run.array("scores/rif_test_prediction")[:], s_rif) <= 1e-8
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["fit_intercept"] is False and manifest["p"] == 9


def test_demo_on_embedded_data(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "the 10 training samples whose removal changes the test loss most" in text
    assert "exact retrains" in text and "top10_rif_test_loss" in text
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert manifest["n"] == 1000 and manifest["d"] == 196 and manifest["fit"]["converged"]
    lev = zarr.open_array(str(out / "run" / "scores" / "leverage"))[:]
    assert lev.shape == (1000,) and 0 < lev.max() < 1
    g = zarr.open_group(str(out / "run" / "groups"), mode="r")
    assert g["delta_theta/rif"].shape == (3, 197)
    assert main(["-q", "demo", "--out", str(out)]) == 2  # never overwritten unasked


def test_groups_cli_bad_sets_file(tmp_path, npz, capsys, synchronous):
    f, pr = npz
    c = rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test)
    rifscale.attribute(c).to_zarr(tmp_path / "run")
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["groups", str(tmp_path / "run"), "--sets", str(tmp_path / "bad.json")]) == 2
    assert "Cannot read removal sets from" in capsys.readouterr().err
    assert main(["groups", str(tmp_path / "run"), "--sets", str(tmp_path / "missing.json")]) == 2
    assert "Cannot read removal sets from" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "x.zarr"), "--npz", str(tmp_path / "missing.npz")]) == 2
    assert "Cannot read --npz" in capsys.readouterr().err
