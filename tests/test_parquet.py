"""Data in from where it lives: Parquet tables read row group by row group, fsspec URLs
for sources, corpora and runs (fsspec's in-process memory:// file system stands in for
an object store; file:// for the CLI, which runs in a child process)."""

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr

import rifscale
from rifscale.cli import main
from rifscale.errors import ConfigError, CorpusError
from rifscale.corpus.sources.parquet import ingest_parquet, parquet_sources
from rifscale.corpus.verify import verify_corpus
from rifscale.testing import Reference, make_problem

from .conftest import rel_err

MEM = fsspec.filesystem("memory")


@pytest.fixture
def memory_root(request):
    """A fresh directory of the memory:// file system, removed afterwards."""
    root = f"/{request.node.name}"
    yield root
    for key in [k for k in MEM.store if k.startswith(root + "/")]:
        del MEM.store[key]
    MEM.pseudo_dirs[:] = [d for d in MEM.pseudo_dirs if not (d == root or d.startswith(root + "/"))]


def write_table(fs, directory, columns: dict, *, files=3, row_group_size=70):
    """``columns`` split over ``files`` Parquet files of several row groups each."""
    n = len(next(iter(columns.values())))
    bounds = np.linspace(0, n, files + 1).astype(int)
    fs.makedirs(directory, exist_ok=True)
    for k in range(files):
        part = {name: col[bounds[k]:bounds[k + 1]] for name, col in columns.items()}
        with fs.open(f"{directory}/part-{k:03d}.parquet", "wb") as fh:
            pq.write_table(pa.table(part), fh, row_group_size=row_group_size)


def embedding_column(X, fixed=True):
    values = pa.array(np.ascontiguousarray(X).ravel())
    if fixed:
        return pa.FixedSizeListArray.from_arrays(values, X.shape[1])
    return pa.ListArray.from_arrays(pa.array(np.arange(0, X.size + 1, X.shape[1], dtype=np.int32)), values)


def test_parquet_directory_at_a_url_to_xarray_scores_joined_back_by_id(memory_root, tmp_path):
    """The issue's acceptance: Parquet directory via a URL -> ingest -> run -> scores opened
    with xarray -> top-10 by |RIF| joined back to the Parquet rows by id."""
    pr = make_problem(500, 7, n_test=0, seed=21, dtype=np.float32)
    n = 500
    rng = np.random.default_rng(5)
    ids = rng.permutation(10**6)[:n].astype(np.int64)  # arbitrary, unsorted ids
    split = np.where(rng.random(n) < 0.25, "test", "train")
    write_table(MEM, f"{memory_root}/emb", {"embedding": embedding_column(pr.X), "label": pr.y, "doc_id": ids,
                                             "split": split, "text": [f"document {i}" for i in ids]})
    url = f"memory://{memory_root}/emb"
    corpus = ingest_parquet(tmp_path / "c.zarr", url, id_column="doc_id", split_column="split", chunk_rows=64)
    tr = split == "train"
    assert (corpus.n, corpus.test.n, corpus.d) == (tr.sum(), (~tr).sum(), 7)
    assert corpus.attrs["source"]["url"] == url and corpus.attrs["test_split"]["n_test"] == (~tr).sum()

    assert main(["run", str(tmp_path / "c.zarr"), "--out", str(tmp_path / "run"), "--lam", "0.5",
                 "--test-subset", "all"]) == 0
    ds = xr.open_zarr(tmp_path / "run" / "scores", consolidated=False)
    top = ds.rif_test_loss.to_series().abs().nlargest(10)
    table = pd.read_parquet(url).set_index("doc_id")
    joined = table.loc[top.index]
    # the joined rows are the documents whose embeddings were scored ...
    X_by_id = dict(zip(ids, pr.X))
    assert all(np.array_equal(np.asarray(e, dtype=np.float32), X_by_id[i]) for i, e in joined["embedding"].items())
    assert list(joined["text"]) == [f"document {i}" for i in top.index]
    # ... and their scores are the dense reference's RIF for those rows
    ref = Reference(pr.X[tr], pr.y[tr], lam=0.5)
    _, rif = ref.scores("test_loss", pr.X[~tr], pr.y[~tr])
    rows = {i: k for k, i in enumerate(ids[tr])}
    want = rif[[rows[i] for i in top.index]]
    assert rel_err(ds.rif_test_loss.sel(sample=list(top.index)).values, want) <= 1e-8
    assert np.array_equal(np.argsort(-np.abs(want), kind="stable"), np.arange(10))


def test_one_column_per_dimension_variable_lists_and_row_numbers(memory_root, tmp_path):
    pr = make_problem(300, 4, n_test=0, seed=2)
    cols = {f"f{j}": pr.X[:, j] for j in range(4)}
    write_table(MEM, f"{memory_root}/wide", {"label": pr.y.astype(bool), "other": np.zeros(300), **cols})
    c = ingest_parquet(tmp_path / "wide.zarr", f"memory://{memory_root}/wide", x_columns="f*",
                       test_fraction=0.2, seed=1)
    test = np.sort(np.random.default_rng(1).choice(300, 60, replace=False))
    assert np.array_equal(c.test.ids.compute(), test)  # row numbers of the table, drawn as ingest documents
    assert np.array_equal(c.test.X.compute(), pr.X[test].astype(np.float64))
    write_table(MEM, f"{memory_root}/lists", {"embedding": embedding_column(pr.X, fixed=False), "label": pr.y})
    v = ingest_parquet(tmp_path / "lists.zarr", f"memory://{memory_root}/lists", test_fraction=0.2, seed=1)
    assert np.array_equal(v.train.X.compute(), c.train.X.compute()) and v.d == 4


def test_each_task_reads_one_row_group_of_the_columns_it_needs(memory_root):
    pr = make_problem(200, 3, n_test=0, seed=0)
    write_table(MEM, f"{memory_root}/t", {"embedding": embedding_column(pr.X), "label": pr.y, "id": np.arange(200)},
                files=2, row_group_size=40)
    src = parquet_sources(f"memory://{memory_root}/t", id_column="id")
    assert src["train_X"].chunks == ((40, 40, 20, 40, 40, 20), (3,))  # one block per row group, in file order
    assert np.array_equal(src["train_X"].compute(), pr.X) and np.array_equal(src["train_y"].compute(), pr.y)


@pytest.mark.parametrize("change, message", [
    (lambda t: {k: v for k, v in t.items() if k != "label"}, "has no label column 'label'"),
    (lambda t: {**t, "label": pa.array([[0]] * 100)}, "rifscale reads integer labels 0..K-1"),
    (lambda t: {**t, "label": pa.array(["cat"] * 60 + [None] + ["dog"] * 39)}, "is null at row 60"),
    (lambda t: {**t, "embedding": pa.array([[1.0, 2.0]] * 99 + [[1.0]])}, "holds 1 values at row 99"),
    (lambda t: {**t, "embedding": pa.array([[1.0, 2.0]] * 99 + [None])}, "is null at row 99"),
    (lambda t: {**t, "id": np.arange(100) + 0.5}, "rifscale ids are integers (stored as int64) or text"),
    (lambda t: {**t, "id": pa.array([f"doc-{i}" for i in range(99)] + [None])}, "'id' is null at row 99"),
    (lambda t: {**t, "split": np.array(["train", "validation"] * 50)}, "holds ['validation']"),
    (lambda t: {**t, "label": np.full(100, -1)}, "label outside 0..127 at row 0 (value -1)"),
])
def test_bad_tables_are_refused_naming_the_column_and_row(memory_root, tmp_path, change, message):
    table = {"embedding": pa.array([[1.0, 2.0]] * 100), "label": np.arange(100) % 2, "id": np.arange(100),
             "split": np.array(["train", "test"] * 50)}
    write_table(MEM, f"{memory_root}/bad", change(table), files=1, row_group_size=50)
    with pytest.raises(CorpusError) as err:
        ingest_parquet(tmp_path / "c.zarr", f"memory://{memory_root}/bad", id_column="id", split_column="split")
    assert message in str(err.value)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []  # nothing half-written


def test_missing_sources_and_output_urls_are_clear_errors(memory_root, tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        ingest_parquet(tmp_path / "c.zarr", f"memory://{memory_root}/nothing")
    MEM.makedirs(f"{memory_root}/empty", exist_ok=True)
    MEM.pipe(f"{memory_root}/empty/readme.txt", b"no tables here")
    with pytest.raises(CorpusError, match=r"No Parquet files \(\*.parquet"):
        ingest_parquet(tmp_path / "c.zarr", f"memory://{memory_root}/empty")
    pr = make_problem(50, 2, n_test=10, seed=0)
    with pytest.raises(ConfigError, match="locks and atomic renames"):
        rifscale.ingest(f"memory://{memory_root}/c.zarr", train_X=pr.X, train_y=pr.y)
    assert not MEM.exists(f"{memory_root}/c.zarr")


def test_cli_ingests_a_file_url_and_refuses_mixed_sources(tmp_path, capsys):
    pr = make_problem(120, 3, n_test=0, seed=4)
    write_table(fsspec.filesystem("file"), str(tmp_path / "emb"), {"vec": embedding_column(pr.X), "y": pr.y})
    url = (tmp_path / "emb").as_uri()
    assert main(["ingest", str(tmp_path / "c.zarr"), "--parquet", url, "--x-column", "vec", "--y-column", "y",
                 "--test-fraction", "0.25"]) == 0
    assert "train 90 x 3, test 30 x 3" in capsys.readouterr().out
    assert main(["ingest", str(tmp_path / "d.zarr"), "--parquet", url, "--train-X", "x.npy"]) == 2
    assert "drop --train-X" in capsys.readouterr().err
    # the output may not lie inside the table it reads
    assert main(["ingest", str(tmp_path / "emb" / "c.zarr"), "--parquet", url, "--x-column", "vec",
                 "--y-column", "y", "--test-fraction", "0.25"]) == 2
    assert "lies inside the input" in capsys.readouterr().err


def test_npy_and_npz_sources_at_urls_read_by_row_ranges(memory_root, tmp_path):
    pr = make_problem(90, 5, n_test=20, seed=8)
    for name, a in (("X.npy", pr.X), ("y.npy", pr.y)):
        with MEM.open(f"{memory_root}/{name}", "wb") as fh:
            np.save(fh, a)
    with MEM.open(f"{memory_root}/test.npz", "wb") as fh:
        np.savez(fh, X=pr.X_test, y=pr.y_test)
    base = f"memory://{memory_root}"
    c = rifscale.ingest(tmp_path / "c.zarr", train_X=f"{base}/X.npy", train_y=f"{base}/y.npy",
                        test_X=f"{base}/test.npz:X", test_y=f"{base}/test.npz:y", chunk_rows=16)
    assert np.array_equal(c.train.X.compute(), pr.X) and np.array_equal(c.test.y.compute(), pr.y_test)
    assert c.train.X.numblocks[0] == 6


def test_corpora_and_runs_are_read_from_urls(memory_root, tmp_path):
    pr = make_problem(200, 4, n_test=40, seed=9)
    rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test,
                    chunk_rows=50)
    MEM.put(str(tmp_path / "c.zarr"), f"{memory_root}/c.zarr", recursive=True)
    url = f"memory://{memory_root}/c.zarr"
    remote, local = rifscale.open_corpus(url), rifscale.open_corpus(tmp_path / "c.zarr")
    assert remote.fingerprint == local.fingerprint and remote.path == url
    cfg = rifscale.RunConfig(lam=0.5, test_subset="all")
    rifscale.run_job(url, tmp_path / "run", cfg)
    ref = Reference(pr.X, pr.y, lam=0.5)
    run = rifscale.open_run((tmp_path / "run").as_uri())
    assert run.manifest["corpus"]["path"] == url
    assert rel_err(run.array("scores/leverage")[...], ref.h) <= 1e-8
    MEM.put(str(tmp_path / "run"), f"{memory_root}/run", recursive=True)
    far = rifscale.open_run(f"memory://{memory_root}/run")
    assert np.array_equal(far.to_dataframe()["rif_test_loss"], run.to_dataframe()["rif_test_loss"])
    assert [r["status"] for r in rifscale.list_runs(f"memory://{memory_root}")] == ["complete"]


def test_with_a_cluster_the_workers_read_the_row_groups(tmp_path, client):
    """Parquet sources are Dask arrays: with a client active the row groups are read by the
    cluster's worker processes (file system and pieces travel with the tasks)."""
    from distributed import get_task_stream

    pr = make_problem(300, 4, n_test=0, seed=6, dtype=np.float32)
    write_table(fsspec.filesystem("file"), str(tmp_path / "emb"), {"embedding": embedding_column(pr.X),
                                                                    "label": pr.y})
    with get_task_stream(client) as stream:
        c = ingest_parquet(tmp_path / "c.zarr", (tmp_path / "emb").as_uri(), test_fraction=0.2, seed=3)
    reads = [t for t in stream.data if str(t["key"]).startswith("('_read_piece")]
    assert len({t["key"] for t in reads}) == 2 * 6  # X and y of the 6 row groups, each read on a worker
    test = np.sort(np.random.default_rng(3).choice(300, 60, replace=False))
    assert np.array_equal(c.test.X.compute(), pr.X[test]) and c.n == 240


def test_every_output_resolves_urls_before_anything_else(memory_root, tmp_path, capsys):
    """``pathlib.Path("s3://b/run")`` is ``s3:/b/run``: an output URL must be refused (or a
    file:// URL resolved) before any Path is made of it, by every command."""
    pr = make_problem(120, 3, n_test=30, seed=5)
    rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test)
    c = str(tmp_path / "c.zarr")
    for argv in (["run", c, "--out", "memory://bucket/run"], ["run", c, "--out", "s3://bucket/run"]):
        assert main(argv) == 2
        assert "locks and atomic renames" in capsys.readouterr().err
    where = tmp_path / "a b" / "run"  # a space: percent-encoded in the URL
    where.parent.mkdir()
    assert main(["run", c, "--out", where.as_uri(), "--lam", "0.5"]) == 0
    assert (where / "manifest.json").is_file()
    result = rifscale.attribute(c, lam=0.5)
    with pytest.raises(ConfigError, match="locks and atomic renames"):
        result.to_zarr("memory://bucket/run2")
    assert main(["export", str(where), "--out", f"memory://{memory_root}/x.parquet"]) == 2
    assert "Cannot write the export" in capsys.readouterr().err
    MEM.put(str(where), f"{memory_root}/run", recursive=True)
    (tmp_path / "sets.json").write_text('{"a": [1, 2]}')
    assert main(["groups", f"memory://{memory_root}/run", "--sets", str(tmp_path / "sets.json")]) == 2
    assert "Cannot write the groups" in capsys.readouterr().err
    assert main(["validate", f"memory://{memory_root}/run", "--n-sizes", "1"]) == 2
    assert "Cannot write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a b", "c.zarr", "sets.json"]  # no s3:/, memory:/


def test_text_labels_become_sorted_classes_whatever_each_row_group_holds(memory_root, tmp_path, capsys):
    """Labels given as names: the sorted distinct values over the whole table are the
    classes 0..K−1, recorded in the corpus and the run. Bugs: classes taken per row group (a
    group without "cat" would number "dog" 0), in first-seen order rather than sorted, or
    the mapping lost on the way to the run. Row groups here hold one or two classes each."""
    names = np.array(["dog"] * 70 + ["emu"] * 70 + ["cat", "emu"] * 35 + ["dog", "cat"] * 35)
    rng = np.random.default_rng(4)
    centres = {"cat": [2.0, 0.0, 0.0], "dog": [0.0, 2.0, 0.0], "emu": [0.0, 0.0, 2.0]}
    X = np.array([centres[v] for v in names]) + rng.normal(size=(len(names), 3))
    write_table(MEM, f"{memory_root}/t", {"embedding": embedding_column(X), "label": names}, files=2,
                row_group_size=35)
    corpus = ingest_parquet(tmp_path / "c.zarr", f"memory://{memory_root}/t", test_fraction=0.25, seed=1)
    assert corpus.classes == ["cat", "dog", "emu"]
    assert rifscale.open_corpus(tmp_path / "c.zarr").classes == ["cat", "dog", "emu"]
    ids = np.concatenate([corpus.train.ids.compute(), corpus.test.ids.compute()])
    y = np.concatenate([corpus.train.y.compute(), corpus.test.y.compute()])
    assert np.array_equal(y, np.searchsorted(["cat", "dog", "emu"], names[ids]))  # every row, by its id
    result = rifscale.attribute(corpus, lam=1.0)
    assert result.model.family.name == "softmax" and result.model.family.n_classes == 3
    assert main(["run", str(tmp_path / "c.zarr"), "--out", str(tmp_path / "run"), "-q"]) == 0
    assert rifscale.open_run(tmp_path / "run").manifest["corpus"]["classes"] == ["cat", "dog", "emu"]
    # the CLI says how the names were numbered
    write_table(MEM, f"{memory_root}/u", {"embedding": embedding_column(X), "label": names}, files=1)
    capsys.readouterr()
    assert main(["ingest", str(tmp_path / "d.zarr"), "--parquet", f"memory://{memory_root}/u",
                 "--test-fraction", "0.2"]) == 0
    assert "labels from text, in sorted order: 0 = cat, 1 = dog, 2 = emu" in capsys.readouterr().out


def test_text_ids_are_kept_from_parquet_to_xarray_dataframes_exports_sets_and_audits(memory_root, tmp_path):
    """Ids given as text (document names, URLs) name the rows all the way: the corpus, its
    digests, the run's sample coordinate, DataFrames, exports, removal sets and audits by
    id. Bugs: ids numbered or dropped on the way, an id shifted by a row after the split,
    a digest over NumPy's in-memory string layout (long strings live on a heap, so the same
    ids read back would hash differently), sets by id cast to integers."""
    pr = make_problem(400, 6, n_test=0, seed=8, dtype=np.float32)
    rng = np.random.default_rng(9)
    ids = np.array([f"https://example.org/docs/{k:05d}/café-{'x' * (k % 7)}" for k in rng.permutation(10**5)[:400]])
    split = np.where(rng.random(400) < 0.25, "test", "train")
    write_table(MEM, f"{memory_root}/t", {"embedding": embedding_column(pr.X), "label": pr.y,
                                           "doc": pa.array(ids).dictionary_encode(), "split": split},
                files=2, row_group_size=45)
    corpus = ingest_parquet(tmp_path / "c.zarr", f"memory://{memory_root}/t", id_column="doc",
                            split_column="split", chunk_rows=64)
    tr = split == "train"
    assert corpus.train.ids.dtype.kind == "T"
    assert np.array_equal(corpus.train.ids.compute(), ids[tr]) and np.array_equal(corpus.test.ids.compute(), ids[~tr])
    reopened = rifscale.open_corpus(tmp_path / "c.zarr")
    assert np.array_equal(reopened.train.ids.compute(), ids[tr])
    assert verify_corpus(reopened)["chunks"] > 0  # the digests of ids read back match ingest's

    assert main(["run", str(tmp_path / "c.zarr"), "--out", str(tmp_path / "run"), "--lam", "0.5",
                 "--test-subset", "all", "-q"]) == 0
    ds = xr.open_zarr(tmp_path / "run" / "scores", consolidated=False)
    assert list(ds.sample.values) == list(ids[tr])
    ref = Reference(pr.X[tr], pr.y[tr], lam=0.5)
    _, rif = ref.scores("test_loss", pr.X[~tr], pr.y[~tr])
    pick = [5, 77, 200]
    assert rel_err(ds.rif_test_loss.sel(sample=list(ids[tr][pick])).values, rif[pick]) <= 1e-8
    run = rifscale.open_run(tmp_path / "run")
    frame = run.to_dataframe()
    assert list(frame.index) == list(ids[tr]) and rel_err(frame.loc[ids[tr][pick], "rif_test_loss"].values,
                                                          rif[pick]) <= 1e-8
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "s.parquet")]) == 0
    assert list(pd.read_parquet(tmp_path / "s.parquet").index) == list(ids[tr])

    by_id = rifscale.group_effects(run, {"ids": {"g": list(ids[tr][[3, 50, 120]])}})["g"]
    by_row = rifscale.group_effects(run, {"g": [3, 50, 120]})["g"]
    assert np.array_equal(by_id.indices, [3, 50, 120]) and by_id.linear == by_row.linear
    with pytest.raises(ConfigError, match="which are text: give them as strings"):
        rifscale.group_effects(run, {"ids": {"g": [3, 50]}})
    with pytest.raises(ConfigError, match="does not have"):
        rifscale.group_effects(run, {"ids": {"g": ["https://example.org/docs/nope"]}})

    wanted = str(ids[~tr][4])
    found = rifscale.audit(run, ids=[wanted])
    assert [p["test_id"] for p in found.points] == [wanted] and found.points[0]["test_row"] == 4
    assert set(found.points[0]["train_ids"]) <= set(ids[tr])
    assert main(["audit", str(tmp_path / "run"), "--out", str(tmp_path / "audit"), "--ids", wanted, "-q"]) == 0
    assert wanted in (tmp_path / "audit" / "points.csv").read_text()


def test_text_ids_from_arrays_in_memory_and_their_errors(tmp_path):
    pr = make_problem(120, 4, n_test=30, seed=3)
    names = np.array([f"row-{i:03d}" for i in range(120)], dtype=object)
    corpus = rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test, pr.y_test, ids=names, chunk_rows=50)
    result = rifscale.attribute(corpus, lam=1.0)
    assert list(result.to_dataframe().index) == list(names)
    y3 = pr.y + (pr.X[:, 0] > 0.5)  # three classes: the softmax model, the same ids
    three = rifscale.Corpus.from_arrays(pr.X, y3, pr.X_test, pr.y_test + (pr.X_test[:, 0] > 0.5), ids=names,
                                        test_ids=[f"t{i}" for i in range(30)], chunk_rows=50)
    frame = rifscale.attribute(three, lam=1.0).to_dataframe()
    assert list(frame.index) == list(names) and frame["leverage"].between(0, 1).all()
    bad = names.copy()
    bad[61] = None
    with pytest.raises(CorpusError, match="train/ids holds None .* at row 61; text ids must all be strings"):
        rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test, pr.y_test, ids=bad, chunk_rows=50)
    dup = names.copy()
    dup[7] = dup[3]
    with pytest.raises(CorpusError, match="duplicated"):
        rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y, train_ids=dup)
