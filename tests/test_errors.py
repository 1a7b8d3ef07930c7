"""Bad parameters and ill-posed problems fail loudly, naming the problem and the fix."""

import numpy as np
import pytest

import rifscale
from rifscale.errors import ConfigError, NotConvergedError, NotPositiveDefiniteError
from rifscale.testing import make_problem

from .conftest import corpus_of


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lam": -1.0}, r"'lam' parameter must be a finite float >= 0. Got -1.0"),
        ({"lam": float("nan")}, r"'lam' parameter must be a finite float >= 0"),
        ({"lam": "1"}, r"'lam' parameter must be a float >= 0. Got '1'"),
        ({"tol": 0.0}, r"'tol' parameter must be in \(0, 1\)"),
        ({"max_iter": 0}, r"'max_iter' parameter must be an integer >= 1"),
        ({"metrics": ("test_loss", "accuracy")}, r"'metrics' parameter must be a non-empty list"),
        ({"test_subset": "no/such/file.npy"}, r"'test_subset' parameter must be 'paper', 'all' or an existing"),
        ({"leverage_threshold": 1.0}, r"'leverage_threshold' parameter must be in \[0, 1\)"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        rifscale.RunConfig(**kwargs)


def test_lam_zero_with_d_greater_than_n_is_not_positive_definite(synchronous):
    pr = make_problem(20, 40, seed=0)
    with pytest.raises(NotPositiveDefiniteError, match=r"not positive definite.*lam = 0.*d > n.*lam > 0"):
        rifscale.attribute(corpus_of(pr, 8), lam=0.0)


def test_lam_zero_with_separable_data_does_not_converge(synchronous):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(np.int8)  # perfectly separable
    c = rifscale.Corpus.from_arrays(X, y, X[:10], y[:10], chunk_rows=20)
    with pytest.raises(NotConvergedError, match=r"lam = 0 the fit has no finite optimum: theta separates the two classes.*Use lam > 0"):
        rifscale.attribute(c, lam=0.0, max_iter=30)


def test_fit_that_needs_more_iterations_says_so(synchronous):
    pr = make_problem(80, 5, seed=1)
    with pytest.raises(NotConvergedError, match=r"did not converge in max_iter = 1 iterations.*Increase max_iter"):
        rifscale.attribute(corpus_of(pr, 16), lam=1.0, max_iter=1)


def test_missing_test_split():
    pr = make_problem(30, 3, seed=1)
    c = rifscale.Corpus.from_arrays(pr.X, pr.y)
    with pytest.raises(rifscale.CorpusError, match=r"no test split.*--test-X.*--test-fraction 0.1 --seed 0"):
        rifscale.attribute(c)


def test_bad_removal_sets(small_problem, synchronous):
    pr, _ = small_problem
    res = rifscale.attribute(corpus_of(pr, 32), lam=0.5, test_subset="all")
    with pytest.raises(ConfigError, match=r"removal set 'a' has indices outside \[0, 120\)"):
        rifscale.group_effects(res, {"a": [1, 120]})
    with pytest.raises(ConfigError, match=r"removal set 'b' lists 1 row index\(es\) more than once"):
        rifscale.group_effects(res, {"b": [1, 2, 2]})
    with pytest.raises(ConfigError, match=r"removal set 'c' must be a non-empty"):
        rifscale.group_effects(res, {"c": []})
    with pytest.raises(ConfigError, match=r"must hold integer row indices"):
        rifscale.group_effects(res, {"d": [0.5]})


def test_lam_zero_with_quasi_separated_data_is_refused(synchronous):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 3))
    y = (X[:, 0] > 0).astype(np.int8)
    X = np.vstack([X, [[0.0, 0.1, 0.2], [0.0, 0.1, 0.2]]])  # the same boundary point twice,
    y = np.concatenate([y, [0, 1]]).astype(np.int8)  # with both labels: no strict separation
    c = rifscale.Corpus.from_arrays(X, y, X[:10], y[:10], chunk_rows=25)
    with pytest.raises(NotConvergedError, match=r"lam = 0 the Hessian at the fitted theta is numerically singular"):
        rifscale.attribute(c, lam=0.0)


def test_theta0_of_wrong_length():
    from rifscale.engine.fit import fit

    pr = make_problem(30, 4, seed=0)
    c = corpus_of(pr, 10)
    with pytest.raises(ConfigError, match=r"theta0 has shape \(4,\); expected \(5,\)"):
        fit(c.train.X, c.train.y, lam=1.0, theta0=np.zeros(4))
