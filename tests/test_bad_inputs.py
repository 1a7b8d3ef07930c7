"""Hostile inputs (issue 17): each is exit 2 with one line naming the problem and the fix,
in the command line's own words; nothing partial published, nothing replaced unasked."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import numpy as np
import pytest

import rifscale
from rifscale.cli import main

from .test_batch_jobs import _data, small  # noqa: F401 (fixture)


@pytest.fixture
def run(small, tmp_path):
    out = tmp_path / "r"
    assert main(["-q", "run", str(small), "--out", str(out)]) == 0
    return out


def _error(capsys) -> str:
    """The one line a failed command wrote on stderr besides its log lines ("HH:MM:SS name: ...")."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not re.match(r"\d\d:\d\d:\d\d rifscale", line)]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------- outputs


def test_export_overwrite_replaces_only_files_rifscale_wrote(run, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    np.save(tmp_path / "X.npy", np.ones((3, 2)))
    source = (tmp_path / "X.npy").read_bytes()
    for target in (notes, tmp_path / "X.npy"):
        assert main(["export", str(run), "--out", str(target), "--format", "csv", "--overwrite"]) == 2
        assert f"{str(target)!r} exists and was not made by rifscale" in _error(capsys)
    assert notes.read_text() == "my notes\n" and (tmp_path / "X.npy").read_bytes() == source
    for name in ("s.csv", "s.parquet"):  # its own exports it replaces when asked
        assert main(["-q", "export", str(run), "--out", str(tmp_path / name)]) == 0
        assert main(["-q", "export", str(run), "--out", str(tmp_path / name), "--top", "5", "--by", "leverage",
                     "--overwrite"]) == 0
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "s.csv")) == 5 and len(pd.read_parquet(tmp_path / "s.parquet")) == 5
    (tmp_path / "s.csv").write_text("edited by hand\n")  # no longer the file rifscale wrote
    assert main(["export", str(run), "--out", str(tmp_path / "s.csv"), "--overwrite"]) == 2
    assert (tmp_path / "s.csv").read_text() == "edited by hand\n"


def test_export_takes_the_corpus_when_it_moved(run, small, tmp_path, capsys):
    moved = tmp_path / "moved.zarr"
    os.rename(small, moved)
    assert main(["export", str(run), "--out", str(tmp_path / "s.csv")]) == 2
    assert "pass --corpus with its new path" in _error(capsys)
    assert main(["-q", "export", str(run), "--out", str(tmp_path / "s.csv"), "--corpus", str(moved)]) == 0


def test_a_missing_parent_is_created_below_a_writable_directory_but_not_at_the_root(small, tmp_path, capsys):
    assert main(["-q", "run", str(small), "--out", str(tmp_path / "runs" / "2026" / "r")]) == 0
    top = Path("/") / f"rifscale-test-{uuid.uuid4().hex}"
    try:
        assert main(["run", str(small), "--out", str(top / "r")]) == 2
        assert f"The directory {str(top)!r} does not exist" in _error(capsys)
        assert not top.exists()
    finally:
        if top.exists():
            for p in sorted(top.rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
            top.rmdir()


def test_a_manifest_that_is_not_an_object_is_named_and_listed_as_damaged(run, small, tmp_path, capsys):
    (run / "manifest.json").write_text("[1, 2, 3]")
    assert main(["export", str(run), "--out", str(tmp_path / "s.csv")]) == 2
    assert f"{str(run / 'manifest.json')!r} is not a JSON object" in _error(capsys)
    assert main(["runs", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"path": str(run), "status": "damaged manifest (not a JSON object)"}]
    assert main(["run", str(small), "--out", str(run)]) == 2
    assert "already exists" in _error(capsys)


def test_a_run_refused_before_any_stage_leaves_nothing(tmp_path, capsys):
    X, y, Xt, yt = _data(300, 3)
    rifscale.ingest(tmp_path / "one.zarr", train_X=X, train_y=np.ones(300, np.int8), test_X=Xt, test_y=yt)
    assert main(["run", str(tmp_path / "one.zarr"), "--out", str(tmp_path / "r")]) == 2
    assert "Every training label is 1" in _error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.zarr"]


# ---------------------------------------------------------------------------- sources and corpora


def test_complex_and_empty_npy_sources_are_refused(tmp_path, capsys):
    X, y, _, _ = _data(100, 3)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "Xc.npy", X + 1j)
    (tmp_path / "empty.npy").write_bytes(b"")
    cases = {"Xc.npy": "train/X is complex (complex64)", "empty.npy": "is empty"}
    for name, message in cases.items():
        assert main(["ingest", str(tmp_path / "c.zarr"), "--train-X", str(tmp_path / name),
                     "--train-y", str(tmp_path / "y.npy")]) == 2
        assert message in _error(capsys)
    assert not (tmp_path / "c.zarr").exists()


def test_a_float64_value_that_overflows_float32_is_named_as_such(tmp_path, capsys):
    X, y, _, _ = _data(100, 3)
    X = X.astype(np.float64)
    X[42, 1] = 1e300
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    assert main(["ingest", str(tmp_path / "c.zarr"), "--train-X", str(tmp_path / "X.npy"),
                 "--train-y", str(tmp_path / "y.npy"), "--dtype", "float32"]) == 2
    err = _error(capsys)
    assert "train/X row 42 holds 1e+300, which float32 cannot hold" in err and "--dtype float64" in err
    assert "NaN" not in err


@pytest.mark.parametrize("url, package", [("s3://bucket/c.zarr", "s3fs"), ("gs://bucket/c.zarr", "gcsfs")])
def test_a_url_without_its_fsspec_package_names_the_package(tmp_path, capsys, url, package):
    pytest.importorskip("fsspec")
    try:
        __import__(package)
        pytest.skip(f"{package} is installed")
    except ImportError:
        pass
    np.save(tmp_path / "y.npy", np.arange(10) % 2)
    ingest = ["ingest", str(tmp_path / "c.zarr"), "--train-X", url + "/X.npy", "--train-y", str(tmp_path / "y.npy")]
    for args in (["run", url, "--out", str(tmp_path / "r")], ingest, ["export", url, "--out", str(tmp_path / "s.csv")]):
        assert main(args) == 2
        assert f"pip install {package}" in _error(capsys)


@pytest.mark.parametrize("array", ["X", "chunk_sha256"])
def test_truncated_array_metadata_is_named(small, tmp_path, capsys, array):
    meta = small / "train" / array / "zarr.json"
    meta.write_text(meta.read_text()[:50])
    for args in (["verify", str(small)], ["run", str(small), "--out", str(tmp_path / "r"), "--verify"]):
        assert main(args) == 2
        assert f"cannot read the metadata of train/{array} ({str(meta)!r}" in _error(capsys)
    assert not (tmp_path / "r").exists()


def test_the_test_split_given_two_ways_is_named_in_option_words(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, y, _, _ = _data(40, 3)
    pq.write_table(pa.table({"embedding": list(X), "label": y, "split": ["train", "test"] * 20}),
                   tmp_path / "t.parquet")
    assert main(["ingest", str(tmp_path / "c.zarr"), "--parquet", str(tmp_path / "t.parquet"),
                 "--split-column", "split", "--test-fraction", "0.1"]) == 2
    err = _error(capsys)
    assert "--split-column" in err and "--test-fraction" in err and "test_X" not in err


# ---------------------------------------------------------------------------- run options


def test_test_subset_files_with_unknown_ids_or_nothing_in_them(small, tmp_path, capsys):
    (tmp_path / "ids.json").write_text(json.dumps({"ids": [1, 99999]}))
    (tmp_path / "empty.txt").write_text("")
    cases = {"ids.json": f"The --test-subset file {str(tmp_path / 'ids.json')!r} names 1 id(s) that the corpus "
                         "does not have (e.g. [99999])",
             "empty.txt": f"The --test-subset file {str(tmp_path / 'empty.txt')!r} is empty"}
    for name, message in cases.items():
        assert main(["run", str(small), "--out", str(tmp_path / "r"), "--test-subset", str(tmp_path / name)]) == 2
        err = _error(capsys)
        assert message in err and "Cannot read" not in err and ".npy" not in err, err
    assert not (tmp_path / "r").exists()


def test_a_warm_start_far_from_the_optimum_names_the_option(tmp_path):
    from rifscale.errors import NotPositiveDefiniteError
    from rifscale.engine.fit import fit

    X, y, _, _ = _data(200, 3)
    c = rifscale.Corpus.from_arrays(X, y, chunk_rows=50)
    with pytest.raises(NotPositiveDefiniteError) as info:
        fit(c.train.X, c.train.y, lam=1.0, theta0=np.array([1e6, 1e6, 1e6, 0.0]))  # every alpha_i underflows
    assert "without --warm-start" in str(info.value) and "theta0" not in str(info.value)


# ---------------------------------------------------------------------------- groups


def test_a_set_removing_every_row_gives_nan_ns_with_the_reason(run, tmp_path, capsys):
    (tmp_path / "sets.json").write_text(json.dumps({"all": list(range(600)), "some": [1, 2, 3]}))
    assert main(["groups", str(run), "--sets", str(tmp_path / "sets.json")]) == 0
    err = capsys.readouterr().err
    assert "NS is NaN for removal set(s) ['all']: without their rows the Hessian is singular" in err
    estimates = {e["set"]: e for e in rifscale.open_run(run).groups_dataframe().to_dict("records")
                 if e["method"] == "ns" and e["metric"] == "test_loss" and e["form"] == "plugin"}
    assert np.isnan(estimates["all"]["value"]) and np.isfinite(estimates["some"]["value"])
    stored = {e["name"]: e for e in json.loads((run / "groups" / "zarr.json").read_text())["attributes"]["estimates"]}
    assert stored["all"]["ns_singular"] is True and stored["some"]["ns_singular"] is False


def test_a_small_set_alone_in_a_direction_gives_nan_ns_by_the_same_rule(synchronous):
    """Rows 7 and 8 alone span feature 0: without them only lam (tiny) pins it. The set is
    small (Woodbury); its 1 - group leverage is ~ lam / 0.5, below the threshold."""
    X, y, Xt, yt = _data(200, 3)
    X = np.hstack([np.zeros((200, 1), np.float32), X])
    X[7, 0] = X[8, 0] = 1.0
    y[7], y[8] = 0, 1
    c = rifscale.Corpus.from_arrays(X, y, np.hstack([np.zeros((300, 1), np.float32), Xt]), yt, chunk_rows=50)
    res = rifscale.attribute(c, lam=1e-8, test_subset="all")
    est = rifscale.group_effects(res, {"pair": [7, 8], "other": [1, 2]})
    assert est["pair"].ns_method == "woodbury" and est["pair"].ns_singular
    assert np.isnan(est["pair"].delta["ns"]).all() and np.isfinite(est["pair"].delta["rif"]).all()
    assert not est["other"].ns_singular and np.isfinite(est["other"].delta["ns"]).all()
