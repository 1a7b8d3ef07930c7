"""Error-bounding certificates (docs/design.md §8.9): the bound is proven, so it must hold
at every point — off the optimum, in the weakest direction, far away — and it must be
the bound of the θ that is returned.

Each test names the plausible bug it is there to catch.
"""

import numpy as np
import pytest

import rifscale
from rifscale.validation.exact import retrain
from rifscale.engine.fit import fit
from rifscale.engine.newton import carry_curvature, certify, curvature, leave_out_curvature
from rifscale.estimates.groups import LeaveOutHessian
from rifscale.testing import Reference, make_problem

from .conftest import corpus_of


def _shifted(n, d, *, seed, shift=3.0, noise=1.0):
    """Features far from zero mean: with an intercept, H's smallest eigenvalue (a mix of
    the intercept and the mean direction) is far below λ."""
    pr = make_problem(n, d, seed=seed, noise=noise)
    return pr.X + shift, pr.y


def _at(ref: Reference, theta, keep=None):
    keep = np.ones(len(ref.y), dtype=bool) if keep is None else keep
    g, H = ref.grad_hess(theta, keep)
    return float(np.linalg.norm(g)), H


def _bound(ref: Reference, theta, keep=None) -> float:
    gnorm, H = _at(ref, theta, keep)
    z = ref.Z if keep is None else ref.Z[keep]
    return certify(curvature(H), gnorm, 0.0, radius=float(np.linalg.norm(z, axis=1).max()), lam=ref.lam,
                   fit_intercept=ref.fit_intercept).bound


def test_intercept_is_not_penalised_so_lambda_is_no_curvature_bound():
    """Bug: the strong-convexity bound ‖∇L‖/λ with an intercept. λ bounds H's eigenvalues
    only on the penalised coordinates; along the weakest direction of H (here mostly the
    intercept against the feature mean) the curvature is far below λ, and ‖∇L‖/λ
    undercounts the error there. The certificate must hold along that direction."""
    X, y = _shifted(40, 60, seed=1)
    ref = Reference(X, y, lam=1.0)
    evals, evecs = np.linalg.eigh(ref.H)
    assert evals[0] < 0.01 * ref.lam  # the premise: λ is no lower bound here
    weak = evecs[:, 0]
    for step in (1e-7, 1e-4, 1e-2):
        theta = ref.theta + step * weak
        gnorm, _ = _at(ref, theta)
        assert gnorm / ref.lam < 0.5 * step  # what the wrong bound would claim
        assert _bound(ref, theta) >= step


@pytest.mark.parametrize("lam, icpt", [(1.0, True), (0.3, False), (0.0, True)])
def test_bound_holds_at_any_point_and_is_tight_near_the_optimum(lam, icpt):
    """The bound is proven: ≥ the distance to the optimum at random points near and far,
    with and without an intercept and at λ = 0 (μ₀ from the Hessian alone). Near the
    optimum of a well-conditioned problem it is within a factor κ(H) ≈ 30 of the truth
    (bug: a μ₀ far below λ_min — e.g. a trace-sized rounding margin — makes it useless)."""
    pr = make_problem(400, 8, seed=2)
    ref = Reference(pr.X, pr.y, lam=lam, fit_intercept=icpt)
    rng = np.random.default_rng(0)
    for _ in range(20):
        u = rng.normal(size=ref.theta.size)
        u /= np.linalg.norm(u)
        for step in (1e-8, 1e-5, 1e-2, 0.3, 3.0):
            b = _bound(ref, ref.theta + step * u)
            assert b >= step
            if step <= 1e-5:
                assert b <= 1e2 * step


def test_bound_accounts_for_the_curvature_between_theta_and_the_optimum():
    """Bug: ‖∇L(θ)‖ / λ_min(H(θ)) — the curvature at θ only. On nearly separable data the
    optimum sits where the α_i are small; θ nearer zero sees larger α_i, so H(θ) promises
    more curvature than the segment to θ* has, and the naive bound falls short. The
    self-concordant bound stays ≥ the distance (here it proves nothing: inf)."""
    pr = make_problem(300, 5, seed=0, noise=0.05)
    ref = Reference(pr.X, pr.y, lam=1e-3)
    for s in (0.0, 0.3, 0.5):
        theta = s * ref.theta
        gnorm, H = _at(ref, theta)
        dist = float(np.linalg.norm(theta - ref.theta))
        assert gnorm / np.linalg.eigvalsh(H)[0] < dist  # the premise: the naive bound fails
        assert _bound(ref, theta) >= dist


def test_carried_curvature_is_a_lower_bound_at_the_new_point():
    """A chord set's μ₀ is carried from the last point with a Hessian (e^{−R d} μ). Bug:
    carrying μ unchanged — where the curvature falls between the two points it is no
    lower bound (θ*/2 has more curvature than θ* on nearly separable data)."""
    pr = make_problem(300, 5, seed=0, noise=0.05)
    ref = Reference(pr.X, pr.y, lam=1e-3)
    R = float(np.linalg.norm(ref.Z, axis=1).max())
    for a, b in ((0.5, 1.0), (0.9, 1.0), (1.0, 0.999), (0.999999, 1.0)):
        _, Ha = _at(ref, a * ref.theta)
        _, Hb = _at(ref, b * ref.theta)
        dist = float(np.linalg.norm((a - b) * ref.theta))
        carried = carry_curvature(curvature(Ha), distance=dist, radius=R)
        assert carried <= np.linalg.eigvalsh(Hb)[0]
    assert curvature(_at(ref, 0.5 * ref.theta)[1]) > np.linalg.eigvalsh(_at(ref, ref.theta)[1])[0]  # premise


def _leave_out_bound(H, roots, *, direct: bool) -> float:
    """leave_out_curvature of H − rootsᵀroots from H's factor, as the retrains compute it."""
    L = np.linalg.cholesky(H)
    linv = np.linalg.inv(L)
    lo = (LeaveOutHessian.direct(H, roots.T @ roots, linv, threshold=0.0) if direct
          else LeaveOutHessian.woodbury(linv, roots, threshold=0.0))
    return leave_out_curvature(curvature(H), lo.relative_min, lo.removed, trace=float(np.trace(H)), p=H.shape[0])


@pytest.mark.parametrize("direct", [False, True])
def test_leave_out_curvature_is_a_lower_bound_and_tight_where_it_can_be(direct):
    """μ₀ of H_{−T} at θ̂ from H's factor (what lets a retrain certify without a Hessian
    pass). Bugs: μ₀ = λ_min(H) (removing rows lowers the curvature: no bound at all),
    or ρ = 1 − Σ h_i (the set's summed leverage instead of the largest eigenvalue of its
    leverage block: valid but loose, so sets that could certify from θ̂ would not).
    Random sets must give a lower bound on λ_min(H − S); rows along H's eigenvectors, whose
    removal lowers λ_min by a known amount, must give it to 1e-9."""
    rng = np.random.default_rng(7)
    p = 12
    Q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    evals = np.geomspace(0.5, 50.0, p)
    H = (Q * evals) @ Q.T
    for k in (1, 3, 8):
        for _ in range(20):
            roots = rng.normal(size=(k, p)) * rng.uniform(0.05, 0.5)
            true = np.linalg.eigvalsh(H - roots.T @ roots)[0]
            if true <= 0:
                continue
            bound = _leave_out_bound(H, roots, direct=direct)
            assert bound <= true, (k, bound, true)
    # one row along the weakest direction: λ_min(H − S) = λ₁ − a², and ρ λ₁ is exactly that
    a = 0.6
    roots = a * Q[:, [0]].T
    assert _leave_out_bound(H, roots, direct=direct) == pytest.approx(evals[0] - a**2, rel=1e-9)
    # two rows, along the weakest and the third direction: ρ = 1 − max(a²/λ₁, b²/λ₃)
    b = 0.9
    roots = np.stack([a * Q[:, 0], b * Q[:, 2]])
    true = np.linalg.eigvalsh(H - roots.T @ roots)[0]
    assert true == pytest.approx(evals[0] - a**2)  # the premise: the weakest direction stays the weakest
    assert _leave_out_bound(H, roots, direct=direct) == pytest.approx(true, rel=1e-9)
    # a removal that leaves H_{−T} singular up to rounding: nothing is proven (−inf), never a
    # tiny positive or a negative "bound"
    assert _leave_out_bound(H, (1 - 1e-14) * np.sqrt(evals[0]) * Q[:, [0]].T, direct=direct) == -np.inf


def test_single_row_retrains_certify_from_the_factor_without_a_hessian_pass(synchronous):
    """Leave-one-out retrains (what ``rifscale tune`` checks its estimate with) start from
    μ₀ of H_{−i}(θ̂) ⪰ (1 − h_i) H(θ̂), carried to each chord point: no set needs its own
    p × p Hessian (bug: the anchor ignored, each set paying a pass of n p² work). The bound
    they record must still hold against the dense reference retrain."""
    pr = make_problem(300, 20, seed=21)
    ref = Reference(pr.X, pr.y, lam=0.5)
    res = rifscale.attribute(corpus_of(pr, 64), lam=0.5, test_subset="all")
    rows = [0, 17, 42, 99, 250]
    out = retrain(res, {str(i): [i] for i in rows})
    for i in rows:
        r = out[str(i)]
        keep = np.ones(300, dtype=bool)
        keep[i] = False
        exact = ref.newton(keep, ref.theta)
        assert r.certified and r.hessians == 0 and r.method == "chord", r
        assert np.linalg.norm(r.theta - exact) <= r.error_bound <= 1e-8 * np.linalg.norm(r.delta)
        assert r.mu <= np.linalg.eigvalsh(ref.grad_hess(r.theta, keep)[1])[0]


@pytest.mark.parametrize("data", ["d>n", "shifted"])
def test_retrains_record_the_bound_of_the_returned_theta(data, synchronous):
    """Bug: a certificate computed before the last step (of θ_k, while θ_{k+1} is
    returned), or μ₀ from a Hessian elsewhere. With a loose tolerance the final gradient
    is far above rounding, so the recorded ‖∇L_{−T}‖ must be the reference's at the
    returned θ, the recorded μ₀ a lower bound on λ_min(H_{−T}) there, and the recorded
    bound at least the true error — and within the tolerance."""
    if data == "d>n":
        pr = make_problem(60, 120, seed=4)
        X, y, lam = pr.X, pr.y, 0.1
    else:
        X, y = _shifted(150, 6, seed=5, shift=10.0)
        lam = 1.0
    ref = Reference(X, y, lam=lam)
    res = rifscale.attribute(rifscale.Corpus.from_arrays(X, y, X, y, chunk_rows=32), lam=lam, test_subset="all")
    n = len(y)
    rng = np.random.default_rng(1)
    sets = {f"r{k}": np.sort(rng.choice(n, k, replace=False)) for k in (1, 4, n // 6)}
    sets["block"] = np.arange(n // 3)
    tol = 1e-4
    out = retrain(res, sets, tol=tol)
    for name, r in out.items():
        keep = np.ones(n, dtype=bool)
        keep[sets[name]] = False
        exact = ref.newton(keep, ref.theta)
        gnorm, H = _at(ref, r.theta, keep)
        assert r.certified and r.stopped_at == "tolerance", (name, r)
        assert r.grad_norm == pytest.approx(gnorm, rel=1e-6), name
        assert r.mu <= np.linalg.eigvalsh(H)[0], name
        assert np.linalg.norm(r.theta - exact) <= r.error_bound <= tol * np.linalg.norm(r.delta), name
        assert r.rel_error_bound == pytest.approx(r.error_bound / np.linalg.norm(r.delta))


def test_fit_records_the_bound_of_the_returned_theta(synchronous):
    """Bug: the fit's certificate taken from a float32 or stale Hessian, or from the point
    before the last step. With a loose tolerance the record must match the reference at
    the returned θ̂: its gradient norm, μ₀ from the float64 Hessian there, and a bound on
    the true error within tol · ‖θ̂‖. Here the fit decides to stop at a pass without a
    Hessian (a chord step), so the proof needs one more pass, at θ̂."""
    X, y = _shifted(3000, 8, seed=6)
    ref = Reference(X, y, lam=1.0)
    c = rifscale.Corpus.from_arrays(X, y, chunk_rows=500)
    tol = 1e-4
    res = fit(c.train.X, c.train.y, lam=1.0, tol=tol, warm_start=False)
    gnorm, H = _at(ref, res.theta)
    assert res.history[-1]["hessian"] is None  # the premise: the stop was decided at a chord step
    assert res.certified
    assert res.grad_norm == pytest.approx(gnorm, rel=1e-6)
    assert res.mu == pytest.approx(curvature(H), rel=1e-9)
    assert np.linalg.norm(res.theta - ref.theta) <= res.error_bound <= tol * np.linalg.norm(res.theta)
    assert res.row_norm_max == pytest.approx(np.linalg.norm(ref.Z, axis=1).max(), rel=1e-12)


def test_a_removal_that_changes_nothing_stops_at_the_rounding_floor_with_its_bound(synchronous):
    """Rows fitted to a residual of 1e-126 or so: removing them changes θ̂ by nothing float64
    can show, so no bound can be a small fraction of ‖Δθ‖. Such a set stops at the
    rounding floor — converged, not certified — after its Hessian is brought to the
    accepted point for the bound (bug: a chord set stopping with no bound, or running
    out of passes)."""
    pr = make_problem(400, 10, seed=13, noise=0.05)
    ref = Reference(pr.X, pr.y, lam=0.01)
    res = rifscale.attribute(corpus_of(pr, 64), lam=0.01, test_subset="all")
    T = np.argsort(np.abs(ref.r))[:3]
    assert np.abs(ref.r[T]).max() < 1e-60  # the premise
    r = retrain(res, {"T": T})["T"]
    assert r.converged and not r.certified and r.stopped_at == "rounding floor" and r.passes <= 4
    keep = np.ones(400, dtype=bool)
    keep[T] = False
    assert np.linalg.norm(r.theta - ref.newton(keep, ref.theta)) <= r.error_bound <= 1e-10 * np.linalg.norm(ref.theta)
    assert r.mu > 0


def test_a_tiny_lambda_on_separable_data_is_fitted_to_its_bound_not_stopped_early(tmp_path):
    """Issue 17, row 14: with lam = 1e-12 on separable classes the gradient rule said
    "converged" with theta 11 % off the optimum. The certificate keeps the fit going until
    the proven error bound holds; theta and the leverages then match a dense reference
    iterated to its rounding floor."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5))
    w = rng.standard_normal(5)
    y = (X @ w > 0).astype(np.int8)  # separable through the origin
    Xt = rng.standard_normal((50, 5))
    rifscale.ingest(tmp_path / "c.zarr", train_X=X, train_y=y, test_X=Xt, test_y=(Xt @ w > 0).astype(np.int8))
    res = rifscale.attribute(tmp_path / "c.zarr", lam=1e-12)
    ref = Reference(X, y.astype(float), lam=1e-12)
    assert res.fit.certified and res.fit.rel_error_bound <= res.fit.tol
    assert np.linalg.norm(res.theta - ref.theta) <= 1e-8 * np.linalg.norm(ref.theta)
    lev = res.leverage.compute()
    assert np.max(np.abs(lev - ref.h)) <= 1e-6
