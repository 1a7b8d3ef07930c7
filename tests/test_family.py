"""The model-family seam (rifscale.engine.family): every stage takes the model's maths from
the family it is given and never from the binary kernels directly.

A second family that doubles the loss (ℓ' = 2ℓ) has, at λ, the optimum of the binary model
at λ/2, and the same leave-T-out optima: a fit or a retrain that called a binary kernel
instead of the family's would minimise another objective and fail these tests. A recording
family checks that the scores, group and metric passes call the family's kernels."""

from __future__ import annotations

import dataclasses
import pickle

import dask
import numpy as np
import pytest

import rifscale
from rifscale.engine import kernels
from rifscale.engine.family import BINARY, FAMILIES, ModelFamily
from rifscale.engine.fit import fit
from rifscale.engine.kernels.logistic import BinaryLogistic
from rifscale.testing import Reference, make_problem

from .conftest import corpus_of

LAM = 0.8


def _twice(kernel):
    def doubled(*args, **kwargs):
        return 2.0 * kernel(*args, **kwargs)

    return staticmethod(doubled)


def _row_terms_twice(z, y, *, theta):
    loss, grads, roots = kernels.row_terms(z, y, theta=theta)
    return 2.0 * loss, 2.0 * grads, np.sqrt(2.0) * roots


@dataclasses.dataclass(frozen=True)
class Doubled(BinaryLogistic):
    """Twice the logistic loss: the binary model with λ halved."""

    name: str = "doubled"
    newton_block = _twice(kernels.newton_block)
    loss_block = _twice(kernels.loss_block)
    retrain_block = _twice(kernels.retrain_block)
    row_terms = staticmethod(_row_terms_twice)


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def pr():
    return make_problem(240, 12, seed=5)


def test_the_binary_family_is_the_default_and_pickles_as_itself():
    assert FAMILIES["binary"] is BINARY and isinstance(BINARY, ModelFamily) and isinstance(Doubled(), ModelFamily)
    assert pickle.loads(pickle.dumps(BINARY)) == BINARY
    assert pickle.loads(pickle.dumps(Doubled())) == Doubled() != BINARY
    assert dask.base.tokenize(Doubled()) != dask.base.tokenize(BINARY)
    assert BINARY.n_params(7, fit_intercept=True) == 8 and BINARY.n_params(7, fit_intercept=False) == 7


def test_the_fit_minimises_the_family_objective(pr):
    import dask.array as da

    X, y = da.from_array(pr.X, chunks=(50, -1)), da.from_array(pr.y, chunks=50)
    doubled = fit(X, y, lam=LAM, family=Doubled())
    assert rel(doubled.theta, Reference(pr.X, pr.y, lam=LAM / 2).theta) <= 1e-8
    assert rel(doubled.hessian, 2 * Reference(pr.X, pr.y, lam=LAM / 2).H) <= 1e-8
    binary = fit(X, y, lam=LAM)
    assert rel(binary.theta, Reference(pr.X, pr.y, lam=LAM).theta) <= 1e-8
    assert rel(doubled.theta, binary.theta) > 1e-3  # the two objectives differ


def test_exact_retrains_minimise_the_family_objective(pr):
    """A run at λ/2, read as the doubled family at λ (the same θ̂ and, up to the factor 2,
    the same H): its exact leave-T-out retrains are the binary model's at λ/2."""
    ref = Reference(pr.X, pr.y, lam=LAM / 2)
    result = rifscale.attribute(corpus_of(pr, 50), lam=LAM / 2, test_subset="all")
    model = result.model
    doubled = dataclasses.replace(
        model, lam=LAM, family=Doubled(),
        factor=dataclasses.replace(model.factor, L=np.sqrt(2) * model.factor.L, linv=model.factor.linv / np.sqrt(2)),
    )
    as_doubled = dataclasses.replace(result, model=doubled)
    sets = {"first": np.arange(0, 9), "spread": np.arange(3, 240, 17), "one": np.array([11])}
    exact = rifscale.retrain(as_doubled, sets)
    for name, T in sets.items():
        assert exact[name].certified
        assert rel(exact[name].delta, ref.delta_exact(T)) <= 1e-8, name


def test_the_score_group_and_metric_passes_call_the_family(pr, monkeypatch):
    called = set()

    def recorded(name):
        kernel = getattr(kernels, name)

        def run(*args, **kwargs):
            called.add(name)
            return kernel(*args, **kwargs)

        return staticmethod(run)

    names = ["score_block", "set_stats_block", "loss_block", "metric_values_block", "row_terms"]
    Recording = dataclasses.make_dataclass("Recording", [], bases=(BinaryLogistic,), frozen=True,
                                           namespace={n: recorded(n) for n in names})
    result = rifscale.attribute(corpus_of(pr, 50), lam=LAM, test_subset="all")
    rec = dataclasses.replace(result, model=dataclasses.replace(result.model, family=Recording()))
    from rifscale.engine.scores import score_table

    table = score_table(result.corpus.train, rec.model).table.compute(scheduler="threads")
    assert np.array_equal(table, result.scores.table.compute(scheduler="threads"), equal_nan=True)
    assert called == {"score_block"}
    called.clear()  # a set of p rows or more: blockwise sums over the training chunks
    rifscale.group_effects(rec, {"big": np.arange(0, 240, 2)})
    assert called == {"set_stats_block", "loss_block", "metric_values_block"}
    called.clear()  # a smaller set: its rows gathered to the driver, a Woodbury update
    rifscale.group_effects(rec, {"small": np.arange(5)})
    assert called == {"set_stats_block", "loss_block", "metric_values_block", "row_terms"}
