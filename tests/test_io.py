"""Corpus layout, validation errors, and streaming ingest."""

import json

import numpy as np
import pytest
import zarr

import rifscale
import rifscale.corpus.verify
from rifscale.errors import CorpusError, OutputExistsError
from rifscale.testing import make_problem


@pytest.fixture
def pr():
    return make_problem(103, 7, n_test=41, seed=2, dtype=np.float32)


def _check_roundtrip(corpus, pr, chunk_rows, ids=None):
    assert corpus.train.X.chunks[0][0] == chunk_rows
    np.testing.assert_array_equal(corpus.train.X.compute(), pr.X)
    np.testing.assert_array_equal(corpus.train.y.compute(), pr.y)
    np.testing.assert_array_equal(corpus.test.X.compute(), pr.X_test)
    expect_ids = np.arange(pr.X.shape[0]) if ids is None else ids
    np.testing.assert_array_equal(corpus.train.ids.compute(), expect_ids)
    assert corpus.train.y.dtype == np.int8 and corpus.train.ids.dtype == np.int64


def test_ingest_from_npy_files(tmp_path, pr):
    for k, v in {"X": pr.X, "y": pr.y, "Xt": pr.X_test, "yt": pr.y_test}.items():
        np.save(tmp_path / f"{k}.npy", v)
    c = rifscale.ingest(
        tmp_path / "c.zarr", train_X=tmp_path / "X.npy", train_y=tmp_path / "y.npy",
        test_X=tmp_path / "Xt.npy", test_y=tmp_path / "yt.npy", chunk_rows=10,
    )
    _check_roundtrip(c, pr, 10)
    assert c.train.X.numblocks[0] == 11  # 103 rows: ten full chunks and one of 3


@pytest.mark.parametrize("compressed", [True, False])
def test_ingest_streams_npz_members(tmp_path, pr, compressed):
    ids = np.arange(103) * 7 + 1000
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "d.npz", train_X=pr.X, train_y=pr.y, train_ids=ids, test_X=pr.X_test, test_y=pr.y_test)
    f = tmp_path / "d.npz"
    c = rifscale.ingest(
        tmp_path / "c.zarr", train_X=f"{f}:train_X", train_y=f"{f}:train_y", train_ids=f"{f}:train_ids",
        test_X=f"{f}:test_X", test_y=f"{f}:test_y", chunk_rows=16,
    )
    _check_roundtrip(c, pr, 16, ids=ids)


def test_ingest_from_zarr_arrays_rechunks_rows(tmp_path, pr):
    src = zarr.open_group(str(tmp_path / "src.zarr"), mode="w")
    src.create_array("X", data=pr.X, chunks=(50, 3))  # column-chunked source is fine for ingest
    src.create_array("y", data=pr.y.astype(np.int64), chunks=(13,))
    src.create_array("Xt", data=pr.X_test)
    src.create_array("yt", data=pr.y_test)
    s = tmp_path / "src.zarr"
    c = rifscale.ingest(tmp_path / "c.zarr", train_X=f"{s}:X", train_y=f"{s}/y", test_X=f"{s}:Xt", test_y=f"{s}:yt", chunk_rows=20)
    _check_roundtrip(c, pr, 20)
    assert c.attrs["rifscale_format"] == 1 and len(c.attrs["content_sha256"]) == 64


def test_ingest_refuses_nan_and_leaves_nothing_behind(tmp_path, pr):
    X = pr.X.copy()
    X[57, 2] = np.nan
    with pytest.raises(CorpusError, match=r"train/X holds NaN or Inf at row 57 \(row chunk 5\)"):
        rifscale.ingest(tmp_path / "c.zarr", train_X=X, train_y=pr.y, chunk_rows=10)
    assert list(tmp_path.iterdir()) == []  # no partial corpus, no temporary directory


def test_ingest_refuses_bad_labels_and_existing_output(tmp_path, pr):
    y = pr.y.astype(np.int64)
    y[12] = 200  # classes are 0..127 (0/1 for the binary model)
    with pytest.raises(CorpusError, match=r"label outside 0\.\.127 at row 12 \(value 200\)"):
        rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=y)
    rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y)
    with pytest.raises(OutputExistsError, match="already exists.*--overwrite"):
        rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X[:50], train_y=pr.y[:50])
    assert rifscale.open_corpus(tmp_path / "c.zarr").n == 103  # untouched
    c = rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X[:50], train_y=pr.y[:50], overwrite=True)
    assert c.n == 50


def test_ingest_mismatched_n(tmp_path, pr):
    with pytest.raises(CorpusError, match=r"train/y has shape \(102,\); expected \(103,\)"):
        rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y[:-1])


def _hand_made(tmp_path, *, x_chunks=(20, 7), y_chunks=(20,), version=1, y=None, n_y=None, pr=None):
    g = zarr.open_group(str(tmp_path / "h.zarr"), mode="w")
    g.attrs["rifscale_format"] = version
    g.create_array("train/X", data=pr.X, chunks=x_chunks)
    yy = pr.y if y is None else y
    if n_y is not None:
        yy = yy[:n_y]
    g.create_array("train/y", data=yy, chunks=y_chunks)
    return tmp_path / "h.zarr"


def test_open_corpus_errors_name_problem_and_fix(tmp_path, pr):
    with pytest.raises(CorpusError, match="No corpus at .*rifscale ingest"):
        rifscale.open_corpus(tmp_path / "missing.zarr")
    p = _hand_made(tmp_path, pr=pr)
    assert rifscale.open_corpus(p).n == 103
    with pytest.raises(CorpusError, match=r"rifscale_format = 2; this rifscale reads layout version 1"):
        rifscale.open_corpus(_hand_made(tmp_path, pr=pr, version=2))
    with pytest.raises(CorpusError, match=r"chunked along columns.*--chunk-rows"):
        rifscale.open_corpus(_hand_made(tmp_path, pr=pr, x_chunks=(20, 3)))
    with pytest.raises(CorpusError, match=r"train/y is chunked \(13, 13, 13\)\.\.\. but train/X rows are chunked \(20, 20, 20\)"):
        rifscale.open_corpus(_hand_made(tmp_path, pr=pr, y_chunks=(13,)))
    with pytest.raises(CorpusError, match=r"train/y has shape \(100,\); expected \(103,\)"):
        rifscale.open_corpus(_hand_made(tmp_path, pr=pr, n_y=100))
    bad = pr.y.astype(np.int16)
    bad[77] = -1
    with pytest.raises(CorpusError, match=r"labels outside 0\.\.999 \(min -1, max 1; first bad row 77\)"):
        rifscale.open_corpus(_hand_made(tmp_path, pr=pr, y=bad))


def test_nan_in_corpus_is_named_by_the_fit(tmp_path, pr, synchronous):
    X = pr.X.copy()
    X[64, 0] = np.inf
    c = rifscale.Corpus.from_arrays(X, pr.y, pr.X_test, pr.y_test, chunk_rows=30)
    with pytest.raises(CorpusError, match=r"train/X holds NaN or Inf: first in row chunk 2, row 64"):
        rifscale.attribute(c)


def test_test_split_must_match_features(tmp_path, pr):
    with pytest.raises(CorpusError, match="test/X has d = 6 features but train/X has d = 7"):
        rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test[:, :6], pr.y_test)


def test_fingerprint_tracks_content(tmp_path, pr):
    a = rifscale.ingest(tmp_path / "a.zarr", train_X=pr.X, train_y=pr.y)
    X = pr.X.copy()
    X[0, 0] += 1
    b = rifscale.ingest(tmp_path / "b.zarr", train_X=X, train_y=pr.y)
    assert a.fingerprint != b.fingerprint
    assert rifscale.open_corpus(tmp_path / "a.zarr").fingerprint == a.fingerprint
    json.dumps(a.attrs)  # provenance attrs stay JSON


def test_nan_in_test_split_is_named(pr, synchronous):
    Xt = pr.X_test.copy()
    Xt[33, 1] = np.nan
    c = rifscale.Corpus.from_arrays(pr.X, pr.y, Xt, pr.y_test, chunk_rows=10)
    with pytest.raises(CorpusError, match=r"test/X holds NaN or Inf: first in row chunk 3, row 33"):
        rifscale.attribute(c, test_subset="all")


def test_ingest_rejects_empty_float_ids_and_orphan_test_ids(tmp_path, pr):
    with pytest.raises(CorpusError, match=r"train/X must be a non-empty 2-D array"):
        rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X[:0], train_y=pr.y[:0])
    with pytest.raises(CorpusError, match=r"train/ids has dtype float64; ids are integers \(stored as int64\) or text"):
        rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y, train_ids=np.arange(103) + 0.5)
    with pytest.raises(CorpusError, match=r"test_ids was given without test_X"):
        rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y, test_ids=np.arange(3))
    big_endian = pr.X.astype(">f8")
    c = rifscale.ingest(tmp_path / "c.zarr", train_X=big_endian, train_y=pr.y)
    assert c.train.X.dtype == np.float64


def test_open_run_of_in_memory_corpus(tmp_path, pr, synchronous):
    c = rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test, pr.y_test, chunk_rows=20)
    rifscale.attribute(c).to_zarr(tmp_path / "run")
    with pytest.raises(rifscale.ConfigError, match=r"made from in-memory arrays.*corpus=Corpus.from_arrays"):
        rifscale.open_run(tmp_path / "run")
    run = rifscale.open_run(tmp_path / "run", corpus=c)
    assert run.model.p == 8


def test_test_fraction_makes_a_seeded_split_that_keeps_the_ids(tmp_path, capsys):
    from rifscale.cli import main

    pr = make_problem(500, 4, n_test=10, seed=2, dtype=np.float32)
    np.save(tmp_path / "X.npy", pr.X)
    np.save(tmp_path / "y.npy", pr.y)
    args = ["ingest", "--train-X", str(tmp_path / "X.npy"), "--train-y", str(tmp_path / "y.npy"),
            "--test-fraction", "0.2", "--seed", "7", "--chunk-rows", "64"]
    assert main([args[0], str(tmp_path / "a.zarr"), *args[1:]]) == 0
    assert main([args[0], str(tmp_path / "b.zarr"), *args[1:]]) == 0
    a, b = rifscale.open_corpus(tmp_path / "a.zarr"), rifscale.open_corpus(tmp_path / "b.zarr")
    assert (a.n, a.test.n) == (400, 100) and a.fingerprint == b.fingerprint  # reproducible
    test_ids = a.test.ids.compute()
    want = np.sort(np.random.default_rng(7).choice(500, 100, replace=False))
    assert np.array_equal(test_ids, want)
    assert np.array_equal(a.test.X.compute(), pr.X[want])  # rows keep their identity
    assert np.array_equal(a.train.ids.compute(), np.setdiff1d(np.arange(500), want))
    assert a.attrs["test_split"]["seed"] == 7 and a.attrs["test_split"]["n_test"] == 100
    assert main([args[0], str(tmp_path / "c.zarr"), *args[1:5], "--test-fraction", "1.5"]) == 2
    assert "test_fraction must be in (0, 1); got 1.5" in capsys.readouterr().err


def _foreign(path, pr, *, ids=None, y=None):
    """A Zarr group with the layout's arrays, written by someone else's tool: no rifscale
    attributes, X chunked along columns too, y and ids in chunks of their own, int32 ids."""
    g = zarr.open_group(str(path), mode="w")
    g.attrs["made_by"] = "another pipeline"
    g.create_array("train/X", data=pr.X, chunks=(25, 3))
    g.create_array("train/y", data=pr.y.astype(np.int32) if y is None else y, chunks=(40,))
    g.create_array("train/ids", data=(np.arange(103, dtype=np.int32) * 7)[::-1] if ids is None else ids, chunks=(60,))
    g.create_array("test/X", data=pr.X_test, chunks=(41, 7))
    g.create_array("test/y", data=pr.y_test, chunks=(41,))
    return path


def _listing(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_a_foreign_zarr_group_is_validated_and_used_in_place(tmp_path, pr):
    from rifscale.cli import main
    from rifscale.testing import Reference

    from .conftest import rel_err

    src = _foreign(tmp_path / "theirs.zarr", pr)
    before = _listing(src)
    c = rifscale.open_corpus(src)
    assert c.train.X.chunks[1] == (7,) and c.train.y.chunks == c.train.X.chunks[:1] == c.train.ids.chunks
    assert c.train.ids.dtype == np.int64 and c.train.ids[0].compute() == 102 * 7
    assert main(["run", str(src), "--out", str(tmp_path / "run"), "--lam", "0.5", "--test-subset", "all"]) == 0
    run = rifscale.open_run(tmp_path / "run")
    assert rel_err(run.array("scores/leverage")[...], Reference(pr.X, pr.y, lam=0.5).h) <= 1e-8
    assert list(run.ids[:2]) == [102 * 7, 101 * 7]
    assert _listing(src) == before  # read in place: nothing written into it
    with pytest.raises(CorpusError, match="records no content_sha256"):
        rifscale.corpus.verify.verify_corpus(c)


def test_a_foreign_group_whose_data_change_is_another_corpus(tmp_path, pr):
    src = _foreign(tmp_path / "theirs.zarr", pr)
    first = rifscale.open_corpus(src).fingerprint
    assert rifscale.open_corpus(src).fingerprint == first  # stable while nothing changes
    rifscale.run_job(src, tmp_path / "run", rifscale.RunConfig(lam=0.5))
    X = zarr.open_array(str(src / "train" / "X"), mode="r+")
    X[5, 1] = X[5, 1] + 1.0  # same shape, same sizes: only the bytes (and the file's mtime) change
    assert rifscale.open_corpus(src).fingerprint != first
    with pytest.raises(CorpusError, match="is not the one this run was made from"):
        rifscale.open_run(tmp_path / "run")


def test_a_foreign_group_gets_the_same_refusals(tmp_path, pr):
    dup = np.arange(103, dtype=np.int64)
    dup[50] = 3
    with pytest.raises(CorpusError, match=r"train/ids holds 1 duplicated value\(s\) \(e.g. 3 at rows 3 and 50\)"):
        rifscale.open_corpus(_foreign(tmp_path / "a.zarr", pr, ids=dup))
    with pytest.raises(CorpusError, match=r"train/y has dtype float64; expected integer labels"):
        rifscale.open_corpus(_foreign(tmp_path / "b.zarr", pr, y=pr.y.astype(np.float64)))
    src = _foreign(tmp_path / "c.zarr", pr)
    (src / "train" / "X" / "c" / "2" / "1").unlink()
    with pytest.raises(CorpusError, match=r"train/X is missing 1 of its 15 chunk file\(s\) \(first: row chunk 2, rows 50-74.*as zeros"):
        rifscale.open_corpus(src)


def test_chunks_another_tool_skipped_are_refused_with_the_cause_and_the_way_out(tmp_path, pr):
    """zarr does not write chunks that hold only the fill value (write_empty_chunks=False):
    a label-sorted y written by another tool lacks its all-zero chunks. rifscale cannot tell
    that from lost files: it refuses, names the cause, and a Dask array is the opt-in."""
    order = np.argsort(pr.y, kind="stable")
    X, y = pr.X[order], pr.y[order].astype(np.int8)
    g = zarr.open_group(str(tmp_path / "theirs.zarr"), mode="w")
    g.create_array("train/X", data=X, chunks=(20, 7))
    g.create_array("train/y", data=y, chunks=(20,))  # the first chunks are all 0: not written
    g.create_array("test/X", data=pr.X_test, chunks=(41, 7))
    g.create_array("test/y", data=pr.y_test, chunks=(41,))
    with pytest.raises(CorpusError, match=r"train/y is missing .*nothing but the fill value \(0\).*write_empty_chunks"):
        rifscale.open_corpus(tmp_path / "theirs.zarr")
    with pytest.raises(CorpusError, match=r"train/y is missing .*dask.array.from_zarr"):
        rifscale.ingest(tmp_path / "c.zarr", train_X=str(tmp_path / "theirs.zarr" / "train" / "X"),
                        train_y=str(tmp_path / "theirs.zarr" / "train" / "y"))
    import dask.array as da

    c = rifscale.ingest(tmp_path / "c.zarr", train_X=g["train/X"], train_y=da.from_zarr(g["train/y"]))
    np.testing.assert_array_equal(c.train.y.compute(), y)  # the opt-in: missing chunks read as the fill value
