"""rifscale tune: approximate leave-one-out along a λ path, against exact leave-one-out by
dense refits of every training row (rifscale.testing.Reference), the choice of λ, the
resumable job, the CLI and `run --lam auto`."""

from __future__ import annotations

import json

import numpy as np
import pytest

import rifscale
from rifscale.audits import loo
from rifscale.cli import main
from rifscale.errors import ConfigError
from rifscale.engine.kernels.logistic import loo_rows
from rifscale.testing import Reference, make_problem

from .conftest import corpus_of


def _log_loss(eta, y):
    return np.logaddexp(0.0, eta) - y * eta


def exact_loo_logits(ref: Reference, rows=None) -> np.ndarray:
    """z_iᵀ θ̂_{−i} for each row: the dense reference's exact leave-one-out refit, by plain
    Newton from its own one-step estimate θ̂ + Δθ_RIF(i) until ‖∇L_{−i}‖ is 1e-10 of its
    value at θ̂ (or at the float64 floor). Small matrices: one BLAS thread is fastest."""
    from threadpoolctl import threadpool_limits

    n = len(ref.y)
    out = []
    with threadpool_limits(1):
        for i in range(n) if rows is None else rows:
            keep = np.ones(n, dtype=bool)
            keep[i] = False
            goal = max(1e-10 * np.linalg.norm(ref.grad_hess(ref.theta, keep)[0]), 1e-13)
            theta = ref.theta + ref.delta_rif([i])
            for _ in range(20):
                g, H = ref.grad_hess(theta, keep)
                if np.linalg.norm(g) <= goal:
                    break
                theta = theta - np.linalg.solve(H, g)
            else:
                raise AssertionError(f"the dense LOO refit of row {i} did not converge: |g| = {np.linalg.norm(g):.2e}")
            out.append(ref.Z[i] @ theta)
    return np.array(out)


# ----------------------------------------------------------------------------- the formula

def test_loo_logits_are_the_reference_one_step_newton_removal():
    """η̃_i = z_iᵀ(θ̂ + Δθ_RIF(i)) with the reference's own H⁻¹, g_i and h_i: a flipped sign
    (up-weighting instead of removal) or a missing 1/(1 − h) fails by far more than 1e-10."""
    pr = make_problem(60, 80, seed=4)
    ref = Reference(pr.X, pr.y, lam=2.0)
    L = np.linalg.cholesky(ref.H)
    eta, approx, h, flag = loo_rows(pr.X, pr.y, theta=ref.theta, linv=np.linalg.inv(L), fit_intercept=True,
                                    threshold=1e-6)
    expected = np.array([ref.Z[i] @ (ref.theta + ref.delta_rif([i])) for i in range(60)])
    np.testing.assert_allclose(eta, ref.Z @ ref.theta, rtol=1e-12)
    np.testing.assert_allclose(h, ref.h, rtol=1e-10)
    assert h.max() > 0.5 and not flag.any()  # d > n: the 1/(1 − h) factor matters here
    np.testing.assert_allclose(approx, expected, rtol=1e-10, atol=1e-10)
    # removing a row moves its own logit away from its label: the LOO loss is the larger
    assert np.all(_log_loss(approx, pr.y) >= _log_loss(eta, pr.y))


def test_a_row_whose_weight_underflows_keeps_a_finite_loo_logit():
    """α_i = 0 in float64 (|η_i| > 745): the form with q_i = z_iᵀH⁻¹z_i gives η̃_i = η_i,
    where h_i/α_i would be 0/0."""
    x = np.array([[800.0, 0.0], [-0.5, 1.0]])
    theta, linv = np.array([1.0, 0.5, 0.0]), np.eye(3)
    eta, approx, h, flag = loo_rows(x, np.array([1, 0]), theta=theta, linv=linv, fit_intercept=True, threshold=1e-6)
    assert eta[0] == 800.0 and h[0] == 0.0 and approx[0] == 800.0
    assert np.isfinite(approx).all() and not flag.any()


# ----------------------------------------------------------------------------- the targets

@pytest.mark.parametrize("n, d, seed, every", [
    (300, 20, 1, 1),
    (150, 200, 0, 3),
    pytest.param(150, 200, 0, 1, marks=pytest.mark.slow),  # about 40 s on 2 busy cores
], ids=["d<n", "d>n-every-third-lam", "d>n"])
def test_approximate_loo_is_within_3_percent_of_exact_loo_of_every_row(n, d, seed, every):
    """Issue 18's targets on the default grid (d > n: every third of its values, or all of
    them in the slow suite): at every λ the approximate LOO log-loss is within 3 % of the
    exact LOO log-loss (every training row refitted by the dense reference), and the λ
    chosen has an exact LOO loss within 0.5 % of the best. A LOO logit with the wrong sign
    or without 1/(1 − h) misses the 3 % by far (h reaches 0.96 at the small λ here)."""
    pr = make_problem(n, d, seed=seed)
    grid = np.mean(np.sum(pr.X**2, axis=1)) * np.logspace(-3, 3, 13)
    tuning = rifscale.tune(corpus_of(pr, 64), None if every == 1 else grid[::every], exact_loo=0)
    table = tuning.table
    assert table["lam"].is_monotonic_increasing
    np.testing.assert_allclose(table["lam"].to_numpy(), grid[::every], rtol=1e-12)  # the default grid
    exact, approx_ref = [], []
    for lam in table["lam"]:
        ref = Reference(pr.X, pr.y, lam=lam)
        exact.append(_log_loss(exact_loo_logits(ref), pr.y).mean())
        q = np.einsum("ij,jk,ik->i", ref.Z, ref.Hinv, ref.Z)
        approx_ref.append(_log_loss(ref.Z @ ref.theta + q * ref.r / (1 - ref.h), pr.y).mean())
    exact = np.array(exact)
    got = table["loo_logloss"].to_numpy()
    np.testing.assert_allclose(got, approx_ref, rtol=1e-8)  # the distributed pass is the dense formula
    assert np.max(np.abs(got - exact) / exact) <= 0.03
    assert exact[table["selected"].to_numpy()][0] <= 1.005 * exact.min()
    assert tuning.lam == table["lam"][np.argmin(got)]
    # the training loss falls all the way down the grid: it would pick the smallest λ
    assert table["train_logloss"].is_monotonic_increasing and tuning.lam > table["lam"].min()


def test_the_choice_follows_the_criterion_never_the_training_loss():
    import pandas as pd

    table = pd.DataFrame({"lam": [0.1, 1.0, 10.0, 100.0], "loo_logloss": [0.9, 0.6, 0.7, 0.8],
                          "loo_error": [0.3, 0.2, 0.2, 0.4], "loo_brier": [0.3, 0.25, 0.2, 0.3],
                          "train_logloss": [0.1, 0.3, 0.5, 0.7]})
    assert loo.select(table, "logloss") == 1
    assert loo.select(table, "error") == 2  # a tie: the larger λ, the simpler model
    assert loo.select(table, "brier") == 2


def test_exact_loo_of_the_sample_is_the_dense_refit(tmp_path):
    """The exact-LOO columns: certified batched retrains of a seeded sample equal the dense
    reference's refits of the same rows; the approximate LOO of those rows is beside them."""
    pr = make_problem(120, 30, seed=5)
    lams = (0.3, 30.0, 3000.0)
    tuning = rifscale.tune(corpus_of(pr, 40), lams, exact_loo=12, exact_at="all")
    rows = loo.exact_sample(120, 12, 0)
    assert len(set(rows)) == 12
    for _, r in tuning.table.iterrows():
        ref = Reference(pr.X, pr.y, lam=r["lam"])
        exact = exact_loo_logits(ref, rows)
        q = np.einsum("ij,jk,ik->i", ref.Z[rows], ref.Hinv, ref.Z[rows])
        approx = ref.Z[rows] @ ref.theta + q * ref.r[rows] / (1 - ref.h[rows])
        assert r["exact_n"] == 12 and r["exact_converged"] == 12 and r["exact_certified"] >= 10
        assert r["exact_logloss"] == pytest.approx(_log_loss(exact, pr.y[rows]).mean(), rel=1e-8)
        assert r["sample_logloss"] == pytest.approx(_log_loss(approx, pr.y[rows]).mean(), rel=1e-8)
        assert r["exact_max_logit_diff"] == pytest.approx(np.abs(exact - approx).max(), rel=1e-5, abs=1e-9)
    best_only = rifscale.tune(corpus_of(pr, 40), lams, exact_loo=12)
    assert best_only.table["exact_n"].tolist() == [12 * s for s in best_only.table["selected"]]


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_the_path_predictor_lands_near_the_next_optimum(fit_intercept):
    """The start of the next λ, from θ̂(λ₀) and the Hessian there (no pass over the data), is
    closer to θ̂(λ) than θ̂(λ₀) is, by 5x for a step of √10 in λ: a wrong sign is not (and the
    old Hessian without the new penalty term only gets to 0.43 of the distance)."""
    pr = make_problem(150, 40, seed=6)
    before = Reference(pr.X, pr.y, lam=10.0, fit_intercept=fit_intercept)
    after = Reference(pr.X, pr.y, lam=10.0 / np.sqrt(10), fit_intercept=fit_intercept)
    start = loo.predict_theta(before.theta, before.H, 10.0, 10.0 / np.sqrt(10), fit_intercept=fit_intercept)
    assert np.linalg.norm(start - after.theta) <= 0.25 * np.linalg.norm(before.theta - after.theta)  # 0.19 measured


# ----------------------------------------------------------------------------- the job

@pytest.fixture
def small(tmp_path):
    pr = make_problem(200, 10, n_test=60, seed=7)
    path = tmp_path / "c.zarr"
    rifscale.ingest(path, train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=50)
    return pr, path


class Killed(Exception):
    pass


REAL_STEP = loo.step


def _killing_after(monkeypatch, k: int):
    """loo.step raises after ``k`` calls; returns the list of λ it was called with."""
    real, calls = REAL_STEP, []

    def step(corpus, config, lam, **kw):
        if len(calls) == k:
            raise Killed
        calls.append(lam)
        return real(corpus, config, lam, **kw)

    monkeypatch.setattr(loo, "step", step)
    return calls


def test_a_killed_tune_resumes_its_finished_lams_and_only_those_of_the_same_job(small, tmp_path, monkeypatch):
    _, path = small
    out = tmp_path / "tune"
    lams = [0.1, 1.0, 10.0, 100.0]
    fresh = rifscale.tune(path, lams, exact_loo=0)
    calls = _killing_after(monkeypatch, 2)
    with pytest.raises(Killed):
        rifscale.tune(path, lams, out=out, exact_loo=0)
    assert calls == [100.0, 10.0] and not out.exists()
    partial = tmp_path / ".tune.partial"
    assert len(list((partial / "steps").glob("*.json"))) == 2

    # the same job again: only the two λ values left are fitted
    calls = _killing_after(monkeypatch, 99)
    done = rifscale.tune(path, lams, out=out, exact_loo=0)
    assert calls == [1.0, 0.1] and done.manifest["resumed"] and not partial.exists()
    np.testing.assert_allclose(done.table["loo_logloss"], fresh.table["loo_logloss"], rtol=1e-9)
    assert done.lam == fresh.lam

    # a checkpoint of other λ values (sharing 1 and 10) is discarded, not resumed
    out2, other = tmp_path / "tune2", [1.0, 10.0, 1000.0]
    _killing_after(monkeypatch, 2)
    with pytest.raises(Killed):
        rifscale.tune(path, lams, out=out2, exact_loo=0)
    calls = _killing_after(monkeypatch, 99)
    done2 = rifscale.tune(path, other, out=out2, exact_loo=0)
    assert calls == [1000.0, 10.0, 1.0] and "resumed" not in done2.manifest
    assert done2.table["lam"].tolist() == other

    # the complete output of the same job is read back; another job is refused
    calls = _killing_after(monkeypatch, 0)
    again = rifscale.tune(path, lams, out=out, exact_loo=0)
    assert again.lam == done.lam and calls == []
    with pytest.raises(rifscale.OutputExistsError, match="different job"):
        rifscale.tune(path, lams, out=out, exact_loo=0, criterion="error")


def test_the_tune_directory_reads_back(small, tmp_path):
    _, path = small
    out = tmp_path / "t"
    made = rifscale.tune(path, [0.1, 10.0, 1000.0], out=out, exact_loo=5)
    back = rifscale.open_tune(out)
    assert back.lam == made.lam and back.table.equals(made.table)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["best"]["lam"] == made.lam and m["grid"]["lams"] == [0.1, 10.0, 1000.0]
    assert (out / "tune.png").stat().st_size > 0 and not (out / "steps").exists()
    assert "lam = " in repr(back)


# ----------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("lams, message", [
    (["0.1", "abc"], "--lams takes numbers > 0"),
    (["0.1", "-1"], "finite numbers > 0"),
    (["0", "1"], "finite numbers > 0"),
    (["1", "1"], "repeated values"),
    (["10:1:5"], "0 < LO < HI and N >= 2"),
])
def test_a_bad_lams_is_refused_naming_the_fix(small, tmp_path, capsys, lams, message):
    _, path = small
    out = tmp_path / "t"
    assert main(["tune", str(path), "--out", str(out), "--lams", *lams]) == 2
    err = capsys.readouterr().err
    assert message in err and "e.g." in err and "Traceback" not in err
    assert not out.exists()


def test_lams_are_numbers_lists_or_a_log_range():
    assert loo.parse_lams(["1", "0.1,10"]) == (0.1, 1.0, 10.0)
    np.testing.assert_allclose(loo.parse_lams(["1e-2:1e2:5"]), [0.01, 0.1, 1.0, 10.0, 100.0])
    with pytest.raises(ConfigError):
        loo.TuneConfig(exact_loo=-1)


def test_run_lam_auto_runs_at_the_tuned_lam(small, tmp_path, capsys):
    pr, path = small
    tune = tmp_path / "t"
    assert main(["tune", str(path), "--out", str(tune), "--lams", "0.3", "30", "3000", "--exact-loo", "0", "-q"]) == 0
    tuned = rifscale.open_tune(tune).lam
    assert tuned != 1.0  # the default lam: a run that ignored the tune would show
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--lam", "auto", "--tune", str(tune), "-q"]) == 0
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["config"]["lam"] == tuned
    assert main(["run", str(path), "--out", str(tmp_path / "r2"), "--tune", str(tune), "-q"]) == 0
    assert json.loads((tmp_path / "r2" / "manifest.json").read_text())["config"]["lam"] == tuned
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(tmp_path / "r3"), "--lam", "auto", "-q"]) == 2
    assert "pass --tune TUNE" in capsys.readouterr().err
    other = tmp_path / "other.zarr"
    rifscale.ingest(other, train_X=pr.X[:150], train_y=pr.y[:150], test_X=pr.X_test, test_y=pr.y_test)
    assert main(["run", str(other), "--out", str(tmp_path / "r4"), "--lam", "auto", "--tune", str(tune), "-q"]) == 2
    assert "made on another corpus" in capsys.readouterr().err
    assert not (tmp_path / "r3").exists() and not (tmp_path / "r4").exists()


@pytest.mark.cluster
def test_tune_on_a_cluster_equals_the_threaded_tune(small, cluster):
    from distributed import Client

    _, path = small
    lams = [0.1, 10.0, 1000.0]
    threads = rifscale.tune(path, lams, exact_loo=4)  # no client yet: dask's threaded scheduler
    with Client(cluster) as client:
        clustered = rifscale.tune(path, lams, exact_loo=4, client=client)
    cluster = clustered
    assert cluster.lam == threads.lam
    for col in ("loo_logloss", "test_logloss", "exact_logloss"):
        np.testing.assert_allclose(cluster.table[col], threads.table[col], rtol=1e-9)
