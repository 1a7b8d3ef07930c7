"""Every notebook's code cells run, in order, in one namespace (as 'Run all' would), with
matplotlib's headless Agg backend; then checks on what each notebook leaves in its namespace
fail if it computed nonsense (wrong rows shown, estimates no better than chance, a retrain
that does not give back the clean model, ...). The notebooks are stored without outputs and
use only the public API."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CHECKS = {}


def checks(name):
    def register(fn):
        CHECKS[name] = fn
        return fn

    return register


def code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(cell["source"]) for cell in nb["cells"] if cell["cell_type"] == "code"]


def run_notebook(path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    namespace = {}
    try:
        for source in code_cells(path):
            exec(compile(source, path.name, "exec"), namespace)
    finally:
        plt.close("all")
    return namespace


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_computes_what_it_shows(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # whatever a notebook writes lands here
    namespace = run_notebook(path)
    CHECKS[path.name](namespace, capsys.readouterr().out)


def test_every_notebook_has_checks():
    assert NOTEBOOKS
    assert {p.name for p in NOTEBOOKS} == set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stripped_and_uses_the_public_api(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "strip the outputs before committing"
    code = "\n".join(code_cells(path))
    assert not re.search(r"\._\w|import _|\b_\w+ import", code), "notebooks use the public API only"
    assert "plt.show(" not in code  # a warning under Agg; Jupyter shows the figures anyway


# ----------------------------------------------------------------------------------- checks


@checks("quickstart.ipynb")
def _quickstart(ns, out):
    data, result, scores, top, K = ns["data"], ns["result"], ns["scores"], ns["top"], ns["K"]
    assert result.fit.converged and result.fit.rel_grad_norm <= 1e-10
    # indexed by the Fashion-MNIST ids, not row numbers
    np.testing.assert_array_equal(scores.index.to_numpy(), data["train_ids"])
    # the top table is the top K by |RIF| ...
    expected = scores["rif_test_loss"].abs().sort_values(ascending=False).index[:K]
    assert list(top.index) == list(expected)
    # ... and the images drawn are those training images, in that order, labelled by id
    pos = [int(np.flatnonzero(data["train_ids"] == i)[0]) for i in top.index]
    np.testing.assert_array_equal(ns["images"], data["train_X"][pos].reshape(K, 14, 14))
    panels = ns["fig"].axes
    assert len(panels) == K
    for ax, image, image_id in zip(panels, ns["images"], top.index):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), image)
        assert f"id {image_id}" in ax.get_title()
    # removing the ten most helpful images raises the test loss; RIF and NS are nearer the
    # exact retrain than IF
    exact, est = ns["exact"], ns["estimate"].plugin["test_loss"]
    assert exact.converged
    truth = exact.changes["test_loss"]
    assert truth > 0
    assert abs(est["rif"] - truth) < abs(est["if"] - truth)
    assert abs(est["ns"] - truth) < abs(est["if"] - truth)
    assert "exact change in test loss" in out


@checks("02-validation.ipynb")
def _validation(ns, out):
    sets, exact, estimates, summary = ns["sets"], ns["exact"], ns["estimates"], ns["summary"]
    assert len(sets) == 24 and {s.strategy for s in sets} == set(ns["STRATEGIES"])
    assert all(r.converged for r in exact.values())
    # the retrain's own metric changes equal the metrics evaluated at its Δθ by group_effects
    for name, r in exact.items():
        assert estimates[name].plugin["test_loss"]["exact"] == pytest.approx(r.changes["test_loss"], rel=1e-9, abs=1e-9)
    slope = summary["slope"].unstack("method").sort_index().loc["self_loss"]
    error = summary["median_rel_err"].unstack("method").sort_index().loc["self_loss"]
    # random removals: IF underestimates, RIF is close to exact
    assert slope.loc["random", "IF"] < 0.8
    assert abs(slope.loc["random", "RIF"] - 1) < 0.1
    assert error.loc["random", "RIF"] < 0.1 < error.loc["random", "IF"]
    # tight clusters: NS best, RIF better than IF
    assert error.loc["distance_cluster", "NS"] < error.loc["distance_cluster", "RIF"] < error.loc["distance_cluster", "IF"]
    # one sample: RIF is the Newton step
    assert ns["rif_vs_ns"] < 1e-8
    # a strong penalty (small leverage): IF and RIF agree; at lam = 0.1 they do not
    strong = ns["strong_summary"]
    assert abs(strong.loc["if", "slope"] - strong.loc["rif", "slope"]) < 0.1
    assert abs(slope.loc["random", "IF"] - slope.loc["random", "RIF"]) > 0.2
    assert "self_loss, random" in out


@checks("03-poisoning.ipynb")
def _poisoning(ns, out):
    found, agreement, K, M = ns["found"], ns["agreement"], ns["K"], ns["M"]
    scores, planted, victims = ns["scores"], ns["planted"], ns["victims"]
    assert len(planted) == M and set(found) == {"self-IF", "self-RIF", "leverage", "exact"}
    assert all(r.converged for r in ns["loo"].values())
    # a copy has exactly its original's leverage (same z, same fitted probability)
    np.testing.assert_allclose(scores.leverage.to_numpy()[planted], scores.leverage.to_numpy()[victims], rtol=1e-9)
    # RIF's top-k is nearly the exact (retrained) top-k; IF's and leverage's are not
    assert agreement["self-RIF"] >= K - 6
    assert agreement["self-RIF"] > agreement["self-IF"] + 2
    assert agreement["self-RIF"] > agreement["leverage"] + 2
    assert abs(found["self-RIF"] - found["exact"]) <= 2
    # on the planted copies RIF is close to the exact effect, IF is not
    assert ns["rel_err"]["RIF"] < 0.2 and ns["rel_err"]["RIF"] < ns["rel_err"]["IF"]
    # removing every planted copy gives back the clean model
    assert ns["restored"].converged and ns["restore_error"] < 1e-8
    assert f"planted copies in the top {K} by self-RIF" in out


@checks("04-multiclass.ipynb")
def _multiclass(ns, out):
    result, frame, table = ns["result"], ns["frame"], ns["table"]
    # ten classes select softmax; P = K(d + 1) − 1; certified fit
    assert result.model.family.name == "softmax" and result.model.family.n_classes == 10
    assert len(result.theta) == 10 * 197 - 1 and result.fit.certified
    # the same optimum as scikit-learn's multinomial model (an independent solver)
    assert ns["prob_gap"] <= 1e-8 and ns["test_accuracy"] > 0.6
    assert ((frame["leverage"] >= 0) & (frame["leverage"] < 1)).all()
    # every retrain certified; for the sets that matter RIF beats IF and NS beats RIF or ties
    assert table["certified"].all()
    errors = ns["errors"]
    for name in ("top RIF +", "top RIF -", "20 shirts"):
        assert errors.loc[name, "RIF"] < 0.6 * errors.loc[name, "IF"], name
    assert (np.sign(table["RIF"]) == np.sign(table["exact"])).all()
    assert "largest difference of the true-class probability" in out


@checks("05-audits.ipynb")
def _audits(ns, out):
    tuned, table, cv_lam = ns["tuned"], ns["table"], ns["cv_lam"]
    # the choice is the lowest approximate-LOO log-loss, not the lowest training loss
    assert tuned.lam == table["loo_logloss"].idxmin() != table["train_logloss"].idxmin()
    # the estimate agrees with the exact leave-one-out of the rows retrained exactly
    best = table.loc[tuned.lam]
    assert bool(best["exact_certified"])
    assert abs(best["sample_logloss"] - best["exact_logloss"]) <= 0.03 * best["exact_logloss"]
    # 5-fold CV picks a lambda whose test loss is as good (within 2 %) as the LOO choice's, or worse
    assert cv_lam in set(table.index)
    assert table.loc[tuned.lam, "test_logloss"] <= 1.02 * table.loc[cv_lam, "test_logloss"]
    # every audited point's flip is found, certified by its retrain (the margin changed sign)
    points = ns["points"]
    assert len(points) == 5 and points["found"].all() and points["retrain_certified"].all()
    assert (np.sign(points["retrained_margin"]) != np.sign(points["margin"])).all()
    assert points["minimal"].all() and (points["lower_bound"] <= points["size"]).all()
    # RIF predicts the exact margin change better than IF
    rif = np.abs(points["rif_change"] - points["exact_change"]).median()
    if_ = np.abs(points["if_change"] - points["exact_change"]).median()
    assert rif < if_
    accuracy = ns["found"].accuracy_frame()
    assert len(accuracy) == 1 and accuracy["certified_drop"].iloc[0] >= accuracy["target_drop"].iloc[0] * 500 - 1e-9
    assert "LogisticRegressionCV: lam" in out
