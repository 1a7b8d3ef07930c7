"""Batched exact retrains equal one-at-a-time exact Newton retrains of the reference."""

import numpy as np
import pytest

import rifscale
from rifscale.validation.removal import removal_sets
from rifscale.validation.exact import retrain
from rifscale.testing import Reference, make_problem

from .conftest import corpus_of


def _sets(train, n):
    sets = {}
    for strategy in ("random", "distance_cluster", "feature_cluster"):
        for s in removal_sets(train, strategy, sizes=[1, 3, max(2, n // 10), n // 4], seed=1):
            sets[s.name] = s.indices
    return sets


@pytest.mark.parametrize("n, d, lam, icpt", [(200, 20, 0.5, True), (60, 120, 0.1, True), (80, 100, 0.3, False)])
def test_batched_retrains_equal_exact_newton(n, d, lam, icpt, synchronous):
    pr = make_problem(n, d, seed=4)
    ref = Reference(pr.X, pr.y, lam=lam, fit_intercept=icpt)
    res = rifscale.attribute(corpus_of(pr, 32), lam=lam, fit_intercept=icpt, test_subset="all")
    sets = _sets(res.corpus.train, n)
    out = retrain(res, sets)
    for name, r in out.items():
        exact = ref.delta_exact(sets[name])
        assert r.certified and r.stopped_at == "tolerance", (name, r)
        assert r.rel_error_bound <= 1e-8 and r.error_bound < np.inf and r.mu > 0
        # the bound is of the retrained θ against the exact leave-T-out optimum ...
        assert np.linalg.norm(r.theta - (ref.theta + exact)) <= r.error_bound, name
        # ... and Δθ equals the reference's (both fits' own errors included) to 1e-8
        assert np.linalg.norm(r.delta - exact) <= 1e-8 * np.linalg.norm(exact), name
        assert r.passes >= 1 and r.seconds >= 0 and r.size == sets[name].size


def test_a_set_that_stalls_the_plain_iteration_is_still_solved(synchronous):
    """d > n, clustered removals: curvature changes a lot, the fixed (NS) preconditioner
    is a poor model, and the plain chord iteration does not converge; the safeguarded one
    switches those sets to exact Newton and certifies them."""
    n, d, lam = 60, 120, 0.1
    pr = make_problem(n, d, seed=4)
    ref = Reference(pr.X, pr.y, lam=lam)
    res = rifscale.attribute(corpus_of(pr, 32), lam=lam, test_subset="all")
    sets = _sets(res.corpus.train, n)
    plain = retrain(res, sets, safeguard=False, max_passes=40)
    stalled = [k for k, r in plain.items() if not r.converged]
    assert stalled, "expected the plain iteration to stall on some set"
    safe = retrain(res, {k: sets[k] for k in stalled})
    for k in stalled:
        assert safe[k].certified and safe[k].method == "newton"
        exact = ref.delta_exact(sets[k])
        assert np.linalg.norm(safe[k].delta - exact) <= 1e-8 * np.linalg.norm(exact)
        assert not plain[k].certified and plain[k].passes == 40  # uncertified after 40 passes
        assert safe[k].passes < 40


def test_first_chord_step_is_the_ns_estimate(synchronous):
    pr = make_problem(150, 10, seed=2)
    res = rifscale.attribute(corpus_of(pr, 50), lam=1.0, test_subset="all")
    sets = {"a": [1, 2, 3, 50], "b": list(range(0, 150, 3))}
    ns = rifscale.group_effects(res, sets)
    one = retrain(res, sets, max_passes=1)
    for k in sets:  # one pass evaluates the start: θ̂ + Δθ_NS, not yet certified
        np.testing.assert_allclose(one[k].delta, ns[k].delta["ns"], rtol=1e-12, atol=1e-15)
        assert not one[k].converged and one[k].passes == 1


def test_newton_problems_take_turns_within_the_hessian_budget(monkeypatch, synchronous):
    import rifscale.validation.exact as R

    n, d, lam = 60, 120, 0.1
    pr = make_problem(n, d, seed=4)
    ref = Reference(pr.X, pr.y, lam=lam)
    res = rifscale.attribute(corpus_of(pr, 32), lam=lam, test_subset="all")
    sets = {f"s{i}": np.arange(i, i + 15) for i in range(0, 40, 4)}
    monkeypatch.setattr(R, "HESSIAN_BUDGET", 121 * 121 * 2)  # two Newton Hessians per pass
    out = R.retrain(res, sets)
    assert sum(r.method == "newton" for r in out.values()) > 2
    for k, r in out.items():
        exact = ref.delta_exact(sets[k])
        assert r.certified and np.linalg.norm(r.delta - exact) <= 1e-8 * np.linalg.norm(exact)


def test_public_retrain_gives_exact_delta_and_metric_changes_against_the_reference():
    """rifscale.retrain(result, sets): Δθ and the change of each metric, equal to the dense
    reference's exact leave-set-out refit."""
    pr = make_problem(150, 8, n_test=40, seed=23)
    ref = Reference(pr.X, pr.y, lam=0.7)
    corpus = rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test, pr.y_test, chunk_rows=50)
    result = rifscale.attribute(corpus, lam=0.7, test_subset="all")
    T = np.array([3, 40, 77, 101])
    out = rifscale.retrain(result, {"T": T})["T"]
    assert out.certified and out.rel_error_bound <= 1e-8
    exact = ref.delta_exact(T)
    assert np.max(np.abs(out.delta - exact)) / np.max(np.abs(exact)) <= 1e-8
    after, _ = ref.test_metric("test_loss", pr.X_test, pr.y_test, ref.theta + exact)
    before, _ = ref.test_metric("test_loss", pr.X_test, pr.y_test, ref.theta)
    assert abs(out.changes["test_loss"] - (after - before)) <= 1e-8 * abs(after - before)
    assert set(out.changes) == {"test_loss", "test_prediction"}
