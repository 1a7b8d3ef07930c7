"""The Newton core and the fit built on it: the answer is exact however cheap the passes
before it were, and the stopping rules are the documented ones.

Each test names the plausible bug it is there to catch.
"""

import dask.array as da
import numpy as np
import pytest

import rifscale
from rifscale.engine import newton
from rifscale.engine.fit import fit
from rifscale.validation.exact import retrain
from rifscale.testing import Reference, make_problem

from .conftest import corpus_of, rel_err


def test_tolerance_is_relative_to_the_size_of_theta(synchronous):
    """Bug: certifying ‖θ − θ*‖ ≤ tol instead of ≤ tol·‖θ̂‖. With features scaled by 1e3
    (no intercept) ‖θ̂‖ ≈ 3e-3, so an absolute test is some 300x too loose."""
    pr = make_problem(400, 6, seed=21)
    X = pr.X * 1e3
    ref = Reference(X, pr.y, lam=1.0, fit_intercept=False)
    c = rifscale.Corpus.from_arrays(X, pr.y, chunk_rows=64)
    res = fit(c.train.X, c.train.y, lam=1.0, fit_intercept=False)
    assert np.linalg.norm(ref.theta) < 0.01  # the premise: an absolute test would be far looser
    assert res.stopped_at == "tolerance"
    # checked by the independent reference
    assert np.linalg.norm(res.theta - ref.theta) <= res.error_bound <= 1e-10 * np.linalg.norm(res.theta)
    # Newton overshoots the tolerance, which can hide the bug above; a loose tolerance
    # cannot be overshot from θ = 0, where the bound is already below 0.5: relative
    # (to ‖θ‖ = 0), the fit must move; absolute, it would not
    g0, H0 = ref.grad_hess(np.zeros(6), np.ones(400, dtype=bool))
    assert np.linalg.norm(g0) / np.linalg.eigvalsh(H0)[0] < 0.5
    loose = fit(c.train.X, c.train.y, lam=1.0, fit_intercept=False, tol=0.5, warm_start=False)
    assert loose.n_iter >= 1 and np.linalg.norm(loose.theta - ref.theta) <= 0.5 * np.linalg.norm(loose.theta)


def test_well_conditioned_fit_and_retrains_stop_at_the_tolerance(synchronous):
    """Bug: a rounding-floor constant 1000x too large makes fits and retrains stop at a
    'rounding floor' far above the tolerance (and, added into the bound, keeps the bound
    above it). On a well-conditioned problem the floor is never what stops them."""
    pr = make_problem(3000, 10, seed=22)
    res = rifscale.attribute(corpus_of(pr, 500), lam=1.0, test_subset="all")
    assert res.fit.stopped_at == "tolerance" and res.fit.certified and res.fit.rel_error_bound <= 1e-10
    rng = np.random.default_rng(0)
    sets = {f"s{k}": rng.choice(3000, size, replace=False) for k, size in enumerate((1, 5, 30, 300))}
    for r in retrain(res, sets).values():
        assert r.stopped_at == "tolerance" and r.certified and r.rel_error_bound <= 1e-8, r


def test_rounding_floor_is_a_small_multiple_of_epsilon():
    """The floor is 32 ε (Σ|r|‖z‖ + λ‖Dθ‖): a unit check of the one place it is defined."""
    theta = np.array([3.0, 4.0, 7.0])  # intercept last: not penalised
    _, _, floor = newton.penalised(theta, 1.0, np.zeros(3), 10.0, lam=2.0, fit_intercept=True)
    assert floor == pytest.approx(32 * np.finfo(float).eps * (10.0 + 2.0 * 5.0), rel=1e-15)
    loss, grad, _ = newton.penalised(theta, 1.0, np.zeros(3), 10.0, lam=2.0, fit_intercept=True)
    assert loss == pytest.approx(1.0 + 25.0) and np.array_equal(grad, [6.0, 8.0, 0.0])


def test_cheap_passes_end_with_the_exact_float64_hessian(synchronous):
    """Float32 / reused Hessians are only ever used for steps: the returned H must be the
    float64 Hessian at the returned θ̂ (bug: returning the last float32 or stale one)."""
    pr = make_problem(6000, 30, seed=23, dtype=np.float32)
    ref = Reference(pr.X, pr.y, lam=0.5)
    c = corpus_of(pr, 500)
    res = fit(c.train.X, c.train.y, lam=0.5)
    assert res.hessian_passes["float32"] >= 1  # the cheap path was taken
    assert res.warm_start is not None and res.warm_start["used"]
    _, H = ref.grad_hess(res.theta, np.ones(6000, dtype=bool))
    assert rel_err(res.hessian, H) <= 1e-12
    assert rel_err(res.theta, ref.theta) <= 1e-8
    assert res.history[-1]["hessian"] == "float64"


def test_warm_start_and_cold_start_reach_the_same_optimum(synchronous):
    pr = make_problem(5000, 20, seed=24)
    c = corpus_of(pr, 400)
    warm = fit(c.train.X, c.train.y, lam=0.2)
    cold = fit(c.train.X, c.train.y, lam=0.2, warm_start=False)
    assert warm.warm_start["used"] and cold.warm_start is None
    assert rel_err(warm.theta, cold.theta) <= 1e-9
    assert warm.rel_error_bound <= 1e-10 and cold.rel_error_bound <= 1e-10


def test_a_fit_whose_hessian_is_not_used_builds_no_float64_hessian_and_reads_no_radius(synchronous):
    """The warm start's subsample fit (``final_hessian=False``) only has to get near its
    optimum: it stops on the bound's estimate (bug: it built the float64 Hessian and read the
    certificate's radius in passes of their own, which only a certified answer needs)."""
    pr = make_problem(5000, 20, seed=24)
    c = corpus_of(pr, 400)
    sub = fit(c.train.X, c.train.y, lam=0.2, tol=1e-3, warm_start=False, final_hessian=False)
    assert sub.hessian_passes["float64"] == 0 and np.isnan(sub.row_norm_max)
    assert sub.n_passes == sub.n_iter + 1 and not sub.certified
    ref = Reference(pr.X, pr.y, lam=0.2)
    assert rel_err(sub.theta, ref.theta) <= 1e-3


def test_misleading_float32_hessian_falls_back_to_exact_newton(synchronous):
    """Near-collinear features at a tiny λ: float32 Hessian products lose the small
    eigenvalues, the approximate step is rejected, and the fit finishes with exact
    float64 Newton steps at the reference optimum."""
    rng = np.random.default_rng(25)
    n = 4000
    a = rng.normal(size=n)
    X = np.column_stack([a, a + 1e-5 * rng.normal(size=n), rng.normal(size=n)])
    y = (a + rng.logistic(size=n) > 0).astype(np.int8)
    ref = Reference(X, y, lam=1e-6)
    c = rifscale.Corpus.from_arrays(X, y, chunk_rows=500)
    res = fit(c.train.X, c.train.y, lam=1e-6, warm_start=False)
    assert res.hessian_passes["float64"] >= 2, res.history  # the fallback took over
    assert rel_err(res.theta, ref.theta) <= 1e-8


def test_accept_is_armijo_or_lower_gradient_at_the_loss_floor():
    assert newton.accept(0.9, 5.0, prev_loss=1.0, prev_gnorm=1.0, t=1.0, slope=-1.0)
    assert not newton.accept(0.99999, 2.0, prev_loss=1.0, prev_gnorm=1.0, t=1.0, slope=-1.0)
    # at the loss's rounding floor a lower gradient decides; a higher one does not
    assert newton.accept(1.0 + 1e-14, 0.5, prev_loss=1.0, prev_gnorm=1.0, t=1.0, slope=-1e-20)
    assert not newton.accept(1.0 + 1e-14, 2.0, prev_loss=1.0, prev_gnorm=1.0, t=1.0, slope=-1e-20)
    assert not newton.accept(np.nan, 0.0, prev_loss=1.0, prev_gnorm=1.0, t=1.0, slope=-1.0)


def test_weights_drop_rows_in_the_fast_fit(synchronous):
    """The warm start and the float32 passes honour row weights (bug: the subsample or
    the approximate Hessian ignoring them would still converge, to the wrong θ)."""
    pr = make_problem(6000, 15, seed=26)
    ref = Reference(pr.X, pr.y, lam=0.3)
    T = np.arange(0, 6000, 7)
    keep = 1.0 - da.isin(da.arange(6000, chunks=500), T).astype(float)
    c = corpus_of(pr, 500)
    res = fit(c.train.X, c.train.y, lam=0.3, weights=keep)
    assert res.warm_start["used"]
    assert np.linalg.norm(res.theta - ref.theta - ref.delta_exact(T)) <= 1e-8 * np.linalg.norm(ref.theta)
