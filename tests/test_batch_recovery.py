"""Batch jobs, round 2 (issues 15 and 17): no wrong result written as complete, no job
that can never finish. Real processes: signals and kills at exact points (``_planted``),
a corpus changed under a streaming run, full and read-only disks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest
import zarr

import rifscale
from rifscale.cli import main

from .test_batch_jobs import _arrays, _data, _ingested, _planted, _start, _wait_for_line, small  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """A corpus of 6 row chunks, for runs that read it from the store on every pass."""
    return _ingested(tmp_path_factory.mktemp("streamed") / "c.zarr", 60_000, 16, chunk_rows=10_000)


def _stopped_after(corpus, out, line: str):
    """A ``run --persist never`` stopped (SIGSTOP) just after it logs ``line``."""
    proc = _start(["run", str(corpus), "--out", str(out), "--workers", "1", "--persist", "never"])
    _wait_for_line(proc, line)
    proc.send_signal(signal.SIGSTOP)
    return proc


def _continued(proc) -> str:
    proc.send_signal(signal.SIGCONT)
    return proc.communicate(timeout=120)[1]


# ---------------------------------------------------------------------------- the corpus changes under a run


def test_a_chunk_deleted_while_a_run_streams_the_corpus_is_named_and_nothing_published(streamed, tmp_path):
    corpus = tmp_path / "c.zarr"
    shutil.copytree(streamed, corpus)
    proc = _stopped_after(corpus, tmp_path / "r", "newton iter  1")
    os.remove(corpus / "train" / "X" / "c" / "3" / "0")
    err = _continued(proc)
    assert proc.returncode == 2, err
    assert "train/X row chunk 3 (rows 30000-39999): its chunk file is missing" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()
    # the rerun does not take the damaged corpus for the one it already ran on
    assert main(["run", str(corpus), "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def test_a_corpus_reingested_while_a_run_streams_it_is_detected(streamed, tmp_path):
    corpus = tmp_path / "c.zarr"
    shutil.copytree(streamed, corpus)
    proc = _stopped_after(corpus, tmp_path / "r", "newton iter  1")
    X, y, Xt, yt = _data(60_000, 16, seed=7)  # same shape and chunks, other rows
    rifscale.ingest(corpus, train_X=X, train_y=y, test_X=Xt, test_y=yt, chunk_rows=10_000, overwrite=True)
    err = _continued(proc)
    assert proc.returncode == 2, err
    assert f"The corpus {str(corpus)!r} changed while this run read it" in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- kills at exact points


@pytest.mark.parametrize("again", [[], ["--overwrite"]])
def test_a_kill_between_the_model_stage_and_its_manifest_entry_is_recovered(small, tmp_path, again):
    out = tmp_path / "r"
    args = ["run", str(small), "--out", str(out), "--workers", "1"]
    # the second manifest write records the model stage, after its directory was moved in
    killed = _planted("rifscale.runs.format:write_run_json", "SIGKILL", args, call=2, before=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = tmp_path / ".r.partial"
    assert (partial / "model").is_dir() and json.loads((partial / "manifest.json").read_text())["stages"] == {}
    assert main(args + again) == 0
    assert main(["run", str(small), "--out", str(tmp_path / "ref"), "--workers", "1"]) == 0
    assert _arrays(out) == _arrays(tmp_path / "ref")
    assert not partial.exists()


def test_a_checkpoint_left_by_another_job_is_not_resumed(small, tmp_path, capsys):
    out = tmp_path / "r"
    killed = _planted("rifscale.runs.format:write_scores", "SIGKILL", ["run", str(small), "--out", str(out)],
                      before=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(json.loads((tmp_path / ".r.partial" / "manifest.json").read_text())["stages"]) == ["model"]
    assert main(["run", str(small), "--out", str(out), "--lam", "2"]) == 0  # another job: lam = 2
    assert "resumed" not in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert "resumed" not in manifest and manifest["config"]["lam"] == 2.0
    assert main(["run", str(small), "--out", str(tmp_path / "fresh"), "--lam", "2"]) == 0
    assert _arrays(out) == _arrays(tmp_path / "fresh")


def test_sigterm_just_after_ingest_publishes_tells_the_truth_and_the_rerun_does_nothing(tmp_path, capsys):
    X, y, Xt, yt = _data(600, 5)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "c.zarr"
    args = ["ingest", str(out), "--train-X", str(tmp_path / "X.npy"), "--train-y", str(tmp_path / "y.npy")]
    done = _planted("rifscale.outputs:publish", "SIGTERM", args)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"rifscale ingest: terminated (SIGTERM) after writing {str(out)!r}, which is complete.")
    stamp = (out / "zarr.json").stat().st_mtime_ns
    assert main(args) == 0  # the requeued job
    assert f"corpus {out} is already complete (same sources and options); nothing to do" in capsys.readouterr().out
    assert (out / "zarr.json").stat().st_mtime_ns == stamp
    np.save(tmp_path / "X.npy", X[:, :4])  # another source under the same name: not the same job
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert rifscale.open_corpus(out).d == 5


def test_ctrl_c_during_validate_says_what_is_kept_for_the_rerun(small, tmp_path):
    run = tmp_path / "r"
    assert main(["-q", "run", str(small), "--out", str(run)]) == 0
    args = ["validate", str(run), "--n-sizes", "2", "--batch-sets", "2", "--workers", "1"]
    done = _planted("rifscale.validation.experiments:Checkpoint.save", "SIGINT", args)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"rifscale validate: interrupted. The finished retrain batches are kept in "
        f"{str(run / '.validation.partial')!r}; run the same command again to resume from them.")
    assert (run / ".validation.partial" / "accuracy-00000.npz").is_file()
    assert not (run / "validation").exists() and not (run / "report").exists()


def test_validate_does_not_reuse_batches_saved_with_another_seed(small, tmp_path, capsys):
    run, fresh = tmp_path / "r", tmp_path / "fresh"
    assert main(["-q", "run", str(small), "--out", str(run)]) == 0
    shutil.copytree(run, fresh)
    args = ["--strategies", "random", "--n-sizes", "2", "--batch-sets", "1", "--workers", "1"]
    killed = _planted("rifscale.validation.experiments:Checkpoint.save", "SIGKILL", ["validate", str(run), *args, "--seed", "0"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (run / ".validation.partial" / "accuracy-00000.npz").is_file()  # batch 0: sets random-*, seed 0
    capsys.readouterr()
    assert main(["validate", str(run), *args, "--seed", "1"]) == 0
    assert "reusing finished" not in capsys.readouterr().err
    assert main(["-q", "validate", str(fresh), *args, "--seed", "1"]) == 0

    def arrays(r):
        g = zarr.open_group(str(r / "validation"), mode="r")
        return {k: np.asarray(g[k][...]).tobytes() for k in ("sets/indices", "exact/delta_theta")}

    assert arrays(run) == arrays(fresh)


# ---------------------------------------------------------------------------- disks that refuse writes


@pytest.fixture
def mounted(tmp_path):
    """``mounted(name, options)``: a tmpfs under tmp_path (e.g. "size=16k" for a full disk,
    "ro" for a read-only one), unmounted afterwards; skips where mounting is not allowed."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounts = []

    def mount(name: str, options: str):
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_an_unwritable_output_fails_in_one_line_and_leaves_nothing_half_written(small, tmp_path, mounted, capsys,
                                                                                 disk):
    X, y, _, _ = _data(2000, 8)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    assert main(["-q", "run", str(small), "--out", str(tmp_path / "r0")]) == 0
    where = mounted("disk", "size=16k" if disk == "full" else "ro,size=1m")
    commands = {
        "c.zarr": ["ingest", str(where / "c.zarr"), "--train-X", str(tmp_path / "X.npy"),
                   "--train-y", str(tmp_path / "y.npy")],
        "r": ["run", str(small), "--out", str(where / "r")],
        "s.csv": ["export", str(tmp_path / "r0"), "--out", str(where / "s.csv")],
    }
    why = "No space left on device" if disk == "full" else "Read-only file system"
    for name, args in commands.items():
        assert main(["-q", *args]) == 2, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and why in err and f"{str(where / name)!r}" in err, err
        assert [p.name for p in where.iterdir()] in ([], [".r.partial"])  # at most the run's checkpoint
    if disk == "full":  # space freed: the same commands now finish
        subprocess.run(["mount", "-o", "remount,size=16m", str(where)], check=True)
        for args in commands.values():
            assert main(["-q", *args]) == 0
        assert sorted(p.name for p in where.iterdir() if not p.name.startswith(".")) == ["c.zarr", "r", "s.csv"]


# ---------------------------------------------------------------------------- outputs


def test_groups_never_replaces_its_output_unasked(small, tmp_path, capsys):
    """The default-suite twin of the cluster test's second `groups`."""
    run = tmp_path / "r"
    assert main(["-q", "run", str(small), "--out", str(run)]) == 0
    (tmp_path / "a.json").write_text(json.dumps({"a": [1, 2, 3]}))
    (tmp_path / "b.json").write_text(json.dumps({"b": [4, 5]}))
    assert main(["-q", "groups", str(run), "--sets", str(tmp_path / "a.json")]) == 0
    capsys.readouterr()
    assert main(["-q", "groups", str(run), "--sets", str(tmp_path / "b.json")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"rifscale groups: error: {str(run / 'groups')!r} already exists; pass --overwrite to replace it.")
    assert rifscale.open_run(run).groups_dataframe()["set"].unique().tolist() == ["a"]
    assert main(["-q", "groups", str(run), "--sets", str(tmp_path / "b.json"), "--overwrite"]) == 0
    assert rifscale.open_run(run).groups_dataframe()["set"].unique().tolist() == ["b"]


def test_score_arrays_are_chunked_to_the_data(small, tmp_path):
    run = tmp_path / "r"
    assert main(["-q", "run", str(small), "--out", str(run)]) == 0
    # chunked like the row blocks the scores were computed in (each block's task writes its own chunk)
    layout = json.loads((run / "manifest.json").read_text())["layout"]
    assert zarr.open_array(str(run / "scores" / "leverage"), mode="r").chunks == (layout["block_rows"],)
    assert layout["block_rows"] <= 600
    stored = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
    assert stored < 200_000  # 11 columns x 600 rows x 8 bytes, plus metadata
