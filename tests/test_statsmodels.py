"""For λ = 0 (no penalty) rifscale's RIF is statsmodels' one-step leave-one-out estimate and
its leverage is statsmodels' hat diagonal (docs/guide/conventions.md says so; this shows it).

statsmodels' ``GLM(..., Binomial()).fit().get_influence()`` reports
``d_params[i] = θ̂ − θ̂_(i)`` (its ``params_one = params − d_params``), the one-step
approximation ``H⁻¹ g_i / (1 − h_i)`` with the opposite sign to rifscale's removal
convention ``Δθ = θ̂_{−i} − θ̂``: so ``Δθ_RIF(i) = −d_params[i]``.
"""

import numpy as np
import pytest
import statsmodels.api as sm

import rifscale
from rifscale.testing import make_problem

TOL = 1e-10  # observed: about 3e-13


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def both():
    pr = make_problem(240, 6, n_test=50, seed=11)
    Z = np.hstack([pr.X, np.ones((pr.X.shape[0], 1))])  # rifscale puts the intercept last
    glm = sm.GLM(pr.y.astype(np.float64), Z, family=sm.families.Binomial()).fit(tol=1e-14, maxiter=100)
    corpus = rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test, pr.y_test, chunk_rows=64)
    result = rifscale.attribute(corpus, lam=0.0, tol=1e-12, test_subset="all")
    return Z, glm, glm.get_influence(), result, result.to_dataframe()


def test_same_fit(both):
    _, glm, _, result, _ = both
    assert glm.converged and result.fit.converged
    assert rel(result.theta, glm.params) < 1e-10


def test_leverage_is_the_hat_diagonal(both):
    _, _, influence, _, frame = both
    assert rel(frame["leverage"], influence.hat_matrix_diag) < TOL


def test_rif_is_minus_d_params(both):
    Z, glm, influence, result, frame = both
    n = Z.shape[0]
    # per-sample Δθ_RIF through the public API: one single-sample removal set per row
    est = rifscale.group_effects(result, {f"row {i}": [i] for i in range(n)})
    rif = np.stack([est[f"row {i}"].delta["rif"] for i in range(n)])
    d_params = influence.d_params
    assert rel(rif, -d_params) < TOL
    assert rel(result.theta + rif, influence.params_one) < TOL
    # ... and so every score built from it: the change of each sample's own logit, and the
    # linear change of each test metric
    assert rel(frame["self_rif"], -np.einsum("ij,ij->i", Z, d_params)) < TOL
    for k, metric in enumerate(result.model.metrics):
        assert rel(frame[f"rif_{metric}"], -d_params @ result.model.metric.grads[:, k]) < TOL
    # IF is the same step without the 1 / (1 − h) factor: it is not d_params
    if_delta = np.stack([est[f"row {i}"].delta["if"] for i in range(n)])
    assert rel(if_delta, -d_params * (1 - influence.hat_matrix_diag)[:, None]) < TOL
    assert rel(if_delta, -d_params) > 1e-3
