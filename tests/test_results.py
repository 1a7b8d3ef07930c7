"""Results where users work: the run is a Zarr group that xarray opens with the sample
ids as coordinate, pandas frames indexed by ids, and Parquet / CSV exports."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

import rifscale
from rifscale.cli import main
from rifscale.testing import Reference, make_problem

from .conftest import rel_err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    pr = make_problem(400, 6, n_test=60, seed=11, dtype=np.float32)
    ids = 1000 + 3 * np.arange(400)[::-1]  # ids unlike row numbers, and not sorted
    rifscale.ingest(root / "c.zarr", train_X=pr.X, train_y=pr.y, train_ids=ids, test_X=pr.X_test,
                    test_y=pr.y_test, test_ids=5000 + np.arange(60)[::-1], chunk_rows=128)
    rifscale.run_job(root / "c.zarr", root / "run", rifscale.RunConfig(lam=0.5, test_subset="all"))
    return rifscale.open_run(root / "run"), pr, ids


def test_xarray_opens_scores_indexed_by_ids_and_the_model_with_named_dimensions(run):
    r, pr, ids = run
    ds = xr.open_zarr(r.path / "scores", consolidated=False)
    assert list(ds.sample.values) == list(ids)
    ref = Reference(pr.X, pr.y, lam=0.5)
    assert rel_err(ds.leverage.values, ref.h) <= 1e-8
    i = 17
    assert float(ds.rif_test_loss.sel(sample=ids[i]).values) == r.array("scores/rif_test_loss")[i]
    assert {"if_test_loss", "rif_test_prediction", "flags", "self_rif"} <= set(ds.data_vars)
    model = xr.open_zarr(r.path / "model", consolidated=False)
    assert list(model.metric.values) == ["test_loss", "test_prediction"]
    assert model.metric_gradients.dims == ("param", "metric") and model.cholesky.dims == ("param", "param_col")
    root = zarr.open_group(str(r.path), mode="r")
    assert root.attrs["rifscale_run"] == 2
    assert np.array_equal(root["scores"]["leverage"][...], ds.leverage.values)


def test_dataframes_are_indexed_by_ids_from_a_run_and_from_memory(run):
    r, pr, ids = run
    df = r.to_dataframe()
    assert df.index.name == "id" and list(df.index) == list(ids)
    assert list(df.columns[:7]) == ["prob", "residual", "alpha", "leverage", "self_if", "self_rif", "flags"]
    assert np.array_equal(df["rif_test_prediction"].to_numpy(), r.array("scores/rif_test_prediction")[...])
    result = rifscale.attribute(r.corpus, rifscale.RunConfig(lam=0.5, test_subset="all"))
    mem = result.to_dataframe(columns=["leverage", "if_test_loss"])
    assert list(mem.index) == list(ids)
    assert rel_err(mem["if_test_loss"], df["if_test_loss"]) <= 1e-8
    assert "scores lazy" in repr(result) and "n = 400" in repr(r)
    assert len(repr(result)) < 300 and len(repr(r)) < 300  # no arrays dumped
    assert "<th style='text-align:left'>n × d</th><td style='text-align:left'>400 × 6</td>" in r._repr_html_()
    assert "400 × 6" in result._repr_html_() and "lazy" in result._repr_html_()


def test_export_top_k_by_magnitude_to_parquet_and_csv(run, tmp_path, capsys):
    r, _, ids = run
    out = tmp_path / "top.parquet"
    assert main(["export", str(r.path), "--out", str(out), "--top", "10", "--by", "rif_test_loss"]) == 0
    assert "wrote" in capsys.readouterr().out
    top = pd.read_parquet(out)
    rif = r.array("scores/rif_test_loss")[...]
    want = np.argsort(-np.abs(rif))[:10]
    assert list(top.index) == list(ids[want]) and top.index.name == "id"
    assert np.array_equal(top["rif_test_loss"].to_numpy(), rif[want])
    csv = tmp_path / "s.csv"
    assert main(["export", str(r.path), "--out", str(csv), "--columns", "leverage", "rif_test_loss"]) == 0
    back = pd.read_csv(csv, index_col="id")
    assert list(back.columns) == ["leverage", "rif_test_loss"] and len(back) == 400
    assert np.allclose(back["leverage"].to_numpy(), r.array("scores/leverage")[...], rtol=1e-15, atol=0)
    assert main(["export", str(r.path), "--out", str(csv)]) == 2  # exists: not replaced unasked
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(r.path), "--out", str(tmp_path / "x.parquet"), "--by", "nope", "--top", "3"]) == 2
    assert "Unknown column(s) ['nope']" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # each file with its marker; no temporaries, no locks
        ".s.csv.rifscale-output", ".top.parquet.rifscale-output", "s.csv", "top.parquet"]


def test_sets_and_test_subsets_by_id_and_group_results_as_a_frame(run, tmp_path, capsys):
    import json
    import shutil

    r, pr, ids = run
    rows = np.array([5, 17, 230])
    direct = rifscale.group_effects(r, {"s": rows})["s"]
    by_id = rifscale.group_effects(r, {"ids": {"s": ids[rows].tolist()}})["s"]
    assert np.array_equal(by_id.indices, rows) and by_id.plugin == direct.plugin
    copy = tmp_path / "run"
    shutil.copytree(r.path, copy)
    (tmp_path / "sets.json").write_text(json.dumps({"s": ids[rows].tolist(), "t": [int(ids[0])]}))
    assert main(["groups", str(copy), "--sets", str(tmp_path / "sets.json"), "--by-id"]) == 0
    capsys.readouterr()
    frame = rifscale.open_run(copy).groups_dataframe()
    assert len(frame) == 2 * 2 * 3 * 3  # sets x forms x (2 metrics + self_loss) x methods
    got = frame.query("set == 's' and form == 'plugin' and metric == 'test_loss' and method == 'rif'")["value"]
    assert got.item() == direct.plugin["test_loss"]["rif"]
    (tmp_path / "bad.json").write_text(json.dumps({"ids": {"s": [1, 2]}}))  # 1, 2 are row numbers, not ids
    assert main(["groups", str(copy), "--sets", str(tmp_path / "bad.json"), "--overwrite"]) == 2
    assert "names 2 id(s) that the corpus does not have (e.g. [1, 2])" in capsys.readouterr().err
    test_ids = r.corpus.test.ids.compute()
    (tmp_path / "subset.json").write_text(json.dumps({"ids": test_ids[[3, 8]].tolist()}))
    res = rifscale.attribute(r.corpus, rifscale.RunConfig(lam=0.5, test_subset=str(tmp_path / "subset.json")))
    assert list(res.model.test_subset) == [3, 8] and list(test_ids[[3, 8]]) == [5056, 5051]


def test_plots_of_one_run_draw_its_numbers(run):
    import matplotlib

    matplotlib.use("Agg")
    from rifscale import plots

    r, _, ids = run
    h = r.array("scores/leverage")[...]
    ax = plots.leverage_histogram(r, bins=20)
    assert sum(p.get_height() for p in ax.patches) == h.size
    ax = plots.if_vs_rif(r, "test_loss")
    xy = ax.collections[0].get_offsets()
    assert np.array_equal(xy[:, 0], r.array("scores/if_test_loss")[...])
    assert np.array_equal(xy[:, 1], r.array("scores/rif_test_loss")[...])
    assert np.allclose(ax.collections[0].get_array(), 1 / (1 - h), rtol=1e-15)
    top = plots.top_table(r, k=5, by="leverage")
    assert list(top.index) == list(ids[np.argsort(-h)[:5]])
    result = rifscale.attribute(r.corpus, rifscale.RunConfig(lam=0.5, test_subset="all"))
    in_memory = [p.get_height() for p in plots.leverage_histogram(result, bins=20).patches]
    stored = [p.get_height() for p in plots.leverage_histogram(r, bins=20).patches]
    assert in_memory == stored
    import matplotlib.pyplot as plt

    plt.close("all")
