"""Validation experiments, their files, and the HTML report rendered in a real browser."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import zarr

import rifscale
from rifscale.cli import main
from rifscale.testing import Reference, make_problem
from rifscale.validation.experiments import accuracy, poisoning, summarise

from .conftest import corpus_of


@pytest.fixture(scope="module")
def problem():
    pr = make_problem(300, 15, n_test=120, seed=17)
    return pr, Reference(pr.X, pr.y, lam=0.3)


def test_summary_statistics_closed_forms():
    a = np.array([1.0, 2.0, -1.0, 4.0])
    s = summarise(0.5 * a, a)
    assert s["slope"] == pytest.approx(0.5) and s["pearson"] == pytest.approx(1.0)
    assert s["median_rel_err"] == pytest.approx(0.5) and s["count"] == 4


def test_accuracy_actual_changes_are_exact_retrains(problem, synchronous):
    pr, ref = problem
    res = rifscale.attribute(corpus_of(pr, 64), lam=0.3, test_subset="all")
    acc = accuracy(res, strategies=("random", "top_influence"), sizes=[3, 30], seed=1)
    assert len(acc.sets) == 4 and all(r.certified and r.rel_error_bound <= 1e-8 for r in acc.retrains.values())
    S = res.model.test_subset
    for s in acc.sets:
        exact = ref.delta_exact(s.indices)
        f0, _ = ref.test_metric("test_loss", pr.X_test[S], pr.y_test[S], ref.theta)
        f1, _ = ref.test_metric("test_loss", pr.X_test[S], pr.y_test[S], ref.theta + exact)
        rows = [r for r in acc.rows if r["set"] == s.name and r["metric"] == "test_loss"]
        assert len(rows) == 6  # 2 forms x 3 methods, one actual
        assert rows[0]["actual"] == pytest.approx(f1 - f0, rel=1e-7, abs=1e-10)
        est = ref.delta_ns(s.indices)
        f_ns, _ = ref.test_metric("test_loss", pr.X_test[S], pr.y_test[S], ref.theta + est)
        ns = [r for r in rows if r["method"] == "ns" and r["form"] == "plugin"][0]
        assert ns["predicted"] == pytest.approx(f_ns - f0, rel=1e-7, abs=1e-10)
    keys = {(r["strategy"], r["metric"], r["form"], r["method"]) for r in acc.summary}
    assert ("top_influence", "self_loss", "plugin", "rif") in keys


def test_poisoning_matches_reference(problem, synchronous):
    pr, ref = problem
    res = rifscale.attribute(corpus_of(pr, 64), lam=0.3)
    rows = poisoning(res, n_points=6, seed=2)
    for r in rows:
        assert r["converged"] and r["certified"] and r["rel_error_bound"] <= 1e-8
        t = r["test_row"]
        X = np.vstack([pr.X, pr.X_test[t]])
        y = np.concatenate([pr.y, [1 - pr.y_test[t]]])
        poisoned = Reference(X, y, lam=0.3)
        z = poisoned.Z[-1]
        assert r["exact"] == pytest.approx(z @ (ref.theta - poisoned.theta), rel=1e-7, abs=1e-10)
        i = len(y) - 1  # the reference's own IF/RIF for removing the poisoned row, on its logit
        assert r["if"] == pytest.approx(z @ poisoned.delta_if([i]), rel=1e-7, abs=1e-10)
        assert r["rif"] == pytest.approx(z @ poisoned.delta_rif([i]), rel=1e-7, abs=1e-10)
        assert r["leverage"] == pytest.approx(poisoned.h[i], rel=1e-7)


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory, problem):
    pr, _ = problem
    tmp = tmp_path_factory.mktemp("validate")
    c = rifscale.ingest(tmp / "c.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=64)
    import dask

    with dask.config.set(scheduler="synchronous"):
        rifscale.attribute(c, lam=0.3).to_zarr(tmp / "run")
        rc = main(["-q", "validate", str(tmp / "run"), "--experiments", "accuracy", "poisoning", "sweeps",
                   "--n-sizes", "4", "--poison-points", "5", "--workers", "1"])
    assert rc == 0
    return tmp / "run"


def test_validate_cli_writes_tables_sets_and_figures(validated_run):
    report = validated_run / "report"
    for f in ("accuracy_plugin.png", "accuracy_linear.png", "sweeps.png", "poisoning.png"):
        assert (report / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((report / "accuracy_summary.json").read_text())
    assert {s["strategy"] for s in summary} == {"random", "feature_cluster", "distance_cluster", "top_influence"}
    g = zarr.open_group(str(validated_run / "validation"), mode="r")
    names = g["sets"].attrs["names"]
    offsets = g["sets/offsets"][:]
    assert len(names) == 16 and offsets[-1] == g["sets/indices"].shape[0]
    records = g["exact"].attrs["retrains"]
    assert all(r["certified"] and r["rel_error_bound"] <= 1e-8 and r["mu"] > 0 for r in records)
    # the bound is stated: per set in the store, per strategy in the report, and for the fit
    table = json.loads((report / "retrains.json").read_text())
    assert table[-1]["strategy"] == "all" and table[-1]["certified"] == 16
    assert table[-1]["max_rel_error_bound"] == max(r["rel_error_bound"] for r in records)
    assert table[-1]["max_rel_bound_with_fit"] > table[-1]["max_rel_error_bound"]  # the fit's bound added
    assert g.attrs["records"]["accuracy"]["certified"] == 16
    page = (report / "index.html").read_text()
    assert "16 certified to within 1e-08 · |Δθ|" in page and "max_rel_error_bound" in page
    fit = json.loads((validated_run / "manifest.json").read_text())["fit"]
    assert fit["certified"] and fit["rel_error_bound"] <= 1e-10 and fit["mu"] > 0 and fit["error_bound"] > 0
    assert all(r["certified"] for r in json.loads((report / "poisoning.json").read_text()))
    assert main(["-q", "validate", str(validated_run), "--workers", "1"]) == 2  # never overwritten unasked


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium (CI installs it; apt-get install chromium)")
def test_html_report_renders_with_its_figures(validated_run, tmp_path):
    page = validated_run / "report" / "index.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-images-loaded="4/4"' in dom, dom[-500:]
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", *flags, "--window-size=1400,2000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_poisoning_when_newton_problems_take_turns(problem, monkeypatch, synchronous):
    """One Hessian per pass (as for very wide embeddings): every poisoned fit still gets its
    own passes and converges to the same answers."""
    import rifscale.validation.exact as R

    pr, _ = problem
    res = rifscale.attribute(corpus_of(pr, 64), lam=0.3)
    wide_open = poisoning(res, n_points=8, seed=3)
    monkeypatch.setattr(R, "HESSIAN_BUDGET", 16 * 16)
    in_turns = poisoning(res, n_points=8, seed=3)
    for a, b in zip(wide_open, in_turns):
        assert b["converged"] and b["rif"] == pytest.approx(a["rif"], rel=1e-9, abs=1e-12)


def test_figures_without_converged_rows(tmp_path):
    from rifscale.validation.report import accuracy_figure, poisoning_figure, sweeps_figure

    rows = [{"form": "plugin", "converged": False, "strategy": "random", "metric": "test_loss",
             "method": "if", "predicted": 1.0, "actual": 2.0}]
    for path in (accuracy_figure(rows, "plugin", tmp_path / "a.png"), sweeps_figure([], tmp_path / "s.png"),
                 poisoning_figure([{"converged": False}], tmp_path / "p.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
