"""The one owner of outputs: --overwrite replaces only what rifscale made, and a failed
final move leaves the old output in place."""

import os
from pathlib import Path

import numpy as np
import pytest

import rifscale
from rifscale import outputs
from rifscale.errors import OutputExistsError
from rifscale.estimates.groups import write_groups
from rifscale.testing import make_problem


@pytest.fixture
def pr():
    return make_problem(60, 4, n_test=20, seed=1, dtype=np.float32)


def test_overwrite_refuses_a_directory_rifscale_did_not_make(tmp_path, pr):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not made by rifscale.*will not delete it"):
        rifscale.ingest(foreign, train_X=pr.X, train_y=pr.y, overwrite=True)
    (tmp_path / "groups").mkdir()  # a writer called directly checks too, not only the CLI
    with pytest.raises(OutputExistsError, match="not made by rifscale"):
        write_groups(tmp_path, {}, overwrite=True)
    assert (foreign / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["groups", "mine"]  # no temporaries left


def test_overwrite_replaces_rifscale_outputs_old_and_new(tmp_path, pr):
    c = rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y)
    assert (tmp_path / "c.zarr" / outputs.MARKER).is_file() and c.n == 60
    os.remove(tmp_path / "c.zarr" / outputs.MARKER)  # as made before the marker: the format attribute says so
    c = rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X[:30], train_y=pr.y[:30], overwrite=True)
    assert c.n == 30


def test_a_failed_final_move_puts_the_old_output_back(tmp_path, pr, monkeypatch):
    rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y)
    real = os.replace

    def fail_on_new(src, dst):  # only the final move of the new corpus (zarr renames files too)
        if Path(src).name.startswith(".c.zarr.partial-") and Path(dst) == tmp_path / "c.zarr":
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", fail_on_new)
    with pytest.raises(OSError, match="disk full"):
        rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X[:10], train_y=pr.y[:10], overwrite=True)
    monkeypatch.undo()
    assert rifscale.open_corpus(tmp_path / "c.zarr").n == 60  # the old corpus, in place
    assert [p.name for p in tmp_path.iterdir()] == ["c.zarr"]  # no .partial- or .old- left


def test_a_killed_jobs_temporaries_are_removed_by_the_next_job_and_nothing_else(tmp_path, pr):
    stale = tmp_path / ".c.zarr.partial-deadbeef"  # what a SIGKILL during ingest leaves
    stale.mkdir()
    outputs.mark(stale, "corpus/corpus")
    foreign = tmp_path / ".c.zarr.partial-notours"  # the same pattern, but not rifscale's
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep")
    rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y)
    assert not stale.exists()
    assert (foreign / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.zarr.partial-notours", "c.zarr"]  # no lock left


def test_remove_within_deletes_only_inside_rifscale_outputs(tmp_path):
    foreign = tmp_path / "theirs"
    (foreign / "scores").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="not made by rifscale"):
        outputs.remove_within(foreign, "scores")
    assert (foreign / "scores").is_dir()
    ours = tmp_path / "ours"
    (ours / "scores").mkdir(parents=True)
    outputs.mark(ours, "run")
    outputs.remove_within(ours, "scores")
    assert not (ours / "scores").exists() and (ours / outputs.MARKER).is_file()
