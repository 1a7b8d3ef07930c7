"""The README's and the user guide's examples work when copied: their Python blocks run as
they are, and their command-line blocks run in a folder holding the files they name. Every
such block of README.md and docs/ is run by one of these tests (the last test checks)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from rifscale.testing import make_problem

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide"


def _blocks(lang: str, page: Path = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", page.read_text(), flags=re.S)


def run_block(block: str, cwd: Path, *, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a bash block of the docs as a user pastes it (``set -euo pipefail``), with this
    environment's ``rifscale`` first on PATH; fail with its stderr unless it succeeds."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = _blocks("python")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'rif'" in out and (tmp_path / "my-run" / "manifest.json").exists()


def test_python_guide_example_runs(tmp_path, monkeypatch, capsys):
    first, limited = _blocks("python", GUIDE / "python.md")  # the second goes on from the first
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(first, "docs/guide/python.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "'rif'" in out and (tmp_path / "my-run" / "manifest.json").exists()
    exec(compile(limited, "docs/guide/python.md", "exec"), namespace)
    assert (namespace["rif_values"] == namespace["rif"].compute()).all()


def test_command_line_example_runs(tmp_path):
    cli = [b for b in _blocks("bash") if "rifscale ingest" in b and "--train-X" in b]
    assert len(cli) == 1
    # the user guide shows the same four steps: run once, for both
    assert [b for b in _blocks("bash", GUIDE / "batch-jobs.md") if "--train-X" in b] == cli
    pr = make_problem(300, 12, n_test=80, seed=8, dtype=np.float32)
    for name, arr in {"X": pr.X, "y": pr.y, "Xt": pr.X_test, "yt": pr.y_test}.items():
        np.save(tmp_path / f"{name}.npy", arr)
    done = run_block(cli[0], tmp_path)
    assert (tmp_path / "run" / "groups" / "zarr.json").exists()
    assert "first_ten" in done.stdout


def test_batch_job_example_runs_and_the_rerun_does_nothing(tmp_path):
    import rifscale

    (block,) = [b for b in _blocks("bash", GUIDE / "batch-jobs.md") if "rifscale verify" in b]
    pr = make_problem(300, 6, n_test=40, seed=9, dtype=np.float32)
    rifscale.ingest(tmp_path / "corpus.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test)
    done = run_block(block, tmp_path, timeout=300)
    assert "match the sha256 digests recorded at ingest" in done.stdout
    assert "is already complete (same config and corpus); nothing to do" in done.stdout
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "manifest.json").exists()
    assert f"runs/{run.name}  complete" in done.stdout


def test_parquet_example_runs_and_exports_ids_of_the_table(tmp_path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    (block,) = [b for b in _blocks("bash", GUIDE / "data.md") if "--parquet" in b]
    pr = make_problem(400, 5, n_test=0, seed=10, dtype=np.float32)
    ids = 7000 + 11 * np.arange(400)
    split = np.where(np.arange(400) % 5 == 0, "test", "train")
    (tmp_path / "embeddings").mkdir()
    for k, rows in enumerate((slice(0, 250), slice(250, 400))):
        table = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(pr.X[rows].ravel()), 5),
                          "label": pr.y[rows], "doc_id": ids[rows], "split": split[rows]})
        pq.write_table(table, tmp_path / "embeddings" / f"part-{k}.parquet", row_group_size=100)
    run_block(block, tmp_path, timeout=300)
    top = pd.read_parquet(tmp_path / "top.parquet")
    assert len(top) == 10 and set(top.index) <= set(ids[split == "train"])


def test_the_crontab_line_parses_and_is_quiet(tmp_path, capsys):
    """The guide's crontab line puts -q after the command; it must parse (it did not) and
    silence the log lines."""
    import shlex

    import rifscale
    from rifscale.cli import build_parser, main

    (line,) = [l for l in (GUIDE / "batch-jobs.md").read_text().splitlines() if "* * *" in l and "rifscale run" in l]
    command = line.split("&& ", 1)[1].split("`")[0].replace(r"$(date +\%F)", "2026-11-30")
    argv = shlex.split(command)[1:]
    assert argv[-1] == "-q" and build_parser().parse_args(argv).quiet is True
    pr = make_problem(200, 4, n_test=30, seed=3)
    rifscale.ingest(tmp_path / "corpus.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test)
    assert main([a.replace("corpus.zarr", str(tmp_path / "corpus.zarr")).replace("runs/", f"{tmp_path}/runs/")
                 for a in argv]) == 0
    assert "newton iter" not in capsys.readouterr().err and (tmp_path / "runs" / "2026-11-30").is_dir()
    assert build_parser().parse_args(["run", "c.zarr", "--out", "r"]).quiet is False  # the default stays


def test_session_example_runs_and_matches_fresh_calls(tmp_path, monkeypatch, capsys):
    import rifscale

    (code,) = _blocks("python", GUIDE / "clusters.md")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "docs/guide/clusters.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "'rif'" in out
    fresh = rifscale.attribute(tmp_path / "session-corpus.zarr", lam=10.0)
    theta = namespace["runs"][10.0].theta
    assert np.linalg.norm(theta - fresh.theta) <= 1e-8 * np.linalg.norm(fresh.theta)  # started from lam = 1's
    assert namespace["exact"]["top10"].converged


def test_npy_npz_and_zarr_sources_example_runs(tmp_path):
    import rifscale

    (block,) = [b for b in _blocks("bash", GUIDE / "data.md") if "--npz" in b]
    pr = make_problem(300, 6, n_test=60, seed=11, dtype=np.float32)
    for name, arr in {"X": pr.X, "y": pr.y, "Xt": pr.X_test, "yt": pr.y_test}.items():
        np.save(tmp_path / f"{name}.npy", arr)
    np.savez(tmp_path / "data.npz", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test)
    run_block(block, tmp_path, timeout=300)
    # the three corpora hold the same rows, whichever way they were given
    corpora = [rifscale.open_corpus(tmp_path / name) for name in ("corpus.zarr", "from-npz.zarr", "mixed.zarr")]
    for c in corpora:
        np.testing.assert_array_equal(c.train.X.compute(), pr.X)
        np.testing.assert_array_equal(c.test.y.compute(), pr.y_test)


def test_reading_a_run_with_xarray_and_pandas_example_runs(tmp_path, monkeypatch):
    import rifscale

    (code,) = _blocks("python", GUIDE / "outputs.md")
    pr = make_problem(400, 5, n_test=50, seed=12)
    rifscale.ingest(tmp_path / "corpus.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test,
                    train_ids=12000 + np.arange(400))  # the block looks up id 12345
    rifscale.run_job(tmp_path / "corpus.zarr", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "docs/guide/outputs.md", "exec"), namespace)
    frame = rifscale.open_run("run").to_dataframe()
    one = namespace["scores"].rif_test_loss.sel(sample=12345)
    assert float(one) == frame.loc[12345, "rif_test_loss"]


def test_tune_example_runs_and_the_run_takes_the_tuned_lam(tmp_path):
    import rifscale

    (block,) = [b for b in _blocks("bash", GUIDE / "audits.md") if "rifscale tune" in b]
    pr = make_problem(300, 8, n_test=60, seed=12, dtype=np.float32)
    rifscale.ingest(tmp_path / "corpus.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test)
    run_block(block, tmp_path, timeout=600)
    tuned = rifscale.open_tune(tmp_path / "tune")
    assert rifscale.open_run(tmp_path / "run").manifest["config"]["lam"] == tuned.lam


def test_audit_example_runs_on_a_run(tmp_path):
    import pandas as pd

    import rifscale

    (block,) = [b for b in _blocks("bash", GUIDE / "audits.md") if "rifscale audit" in b]
    pr = make_problem(200, 10, n_test=50, seed=3, dtype=np.float32)
    rifscale.ingest(tmp_path / "corpus.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test)
    rifscale.run_job(tmp_path / "corpus.zarr", tmp_path / "run")
    run_block(block, tmp_path, timeout=600)
    points = pd.read_parquet(tmp_path / "audit" / "points.parquet")
    assert len(points) == 3 and points["found"].all() and points["retrain_certified"].all()


# (page, a string that names the block) of every command or Python block the tests above run
TESTED = {
    ("README.md", "bash", "make demo"),  # the two commands: make test is CI, make demo is test_cli's demo
    ("README.md", "bash", "--train-X X.npy"),
    ("README.md", "python", "demo_data_path"),
    ("docs/guide/batch-jobs.md", "bash", "--train-X X.npy"),
    ("docs/guide/batch-jobs.md", "bash", "rifscale verify"),
    ("docs/guide/data.md", "bash", "--parquet"),
    ("docs/guide/data.md", "bash", "--npz"),
    ("docs/guide/python.md", "python", "demo_data_path"),
    ("docs/guide/python.md", "python", "blas_per_task"),
    ("docs/guide/clusters.md", "python", "rifscale.Session"),
    ("docs/guide/outputs.md", "python", "xr.open_zarr"),
    ("docs/guide/audits.md", "bash", "rifscale tune"),
    ("docs/guide/audits.md", "bash", "rifscale audit"),
}


def test_every_example_block_is_run_by_a_test():
    """A command or Python block added to the README or the guide needs a test here (or
    a code-block language other than bash/python, e.g. text, if it is not meant to run)."""
    untested = []
    for page in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        rel = page.relative_to(ROOT).as_posix()
        for lang in ("bash", "python"):
            for block in _blocks(lang, page):
                if not any(p == rel and lg == lang and mark in block for p, lg, mark in TESTED):
                    untested.append(f"{rel} ({lang}): {block.splitlines()[0]}")
    assert not untested, untested
