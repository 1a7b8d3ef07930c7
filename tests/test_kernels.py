"""Kernels on plain NumPy arrays: stability, closed forms, block additivity."""

import numpy as np
import pytest

from rifscale.engine import kernels
from rifscale.engine.kernels import SCORE_COLUMNS


def test_log_loss_matches_closed_form_and_is_stable():
    eta = np.array([-800.0, -40.0, -1.0, 0.0, 2.5, 40.0, 800.0])
    for y in (0, 1):
        got = kernels.log_loss(eta, np.full(eta.shape, y))
        assert np.all(np.isfinite(got)) and np.all(got >= 0)
        mid = np.abs(eta) < 30
        naive = np.log1p(np.exp(eta[mid])) - y * eta[mid]
        np.testing.assert_allclose(got[mid], naive, rtol=1e-13)
    # tails: ℓ(η, 0) = η + log1p(e^-η) ≈ η and ℓ(η, 1) = log1p(e^-η) ≈ e^-η for large η
    assert kernels.log_loss(np.array([800.0]), np.array([0]))[0] == 800.0
    np.testing.assert_allclose(kernels.log_loss(np.array([40.0]), np.array([1])), np.exp(-40.0), rtol=1e-14)
    np.testing.assert_allclose(kernels.log_loss(np.array([-40.0]), np.array([0])), np.exp(-40.0), rtol=1e-14)


def test_residual_keeps_relative_precision_when_confident():
    eta = np.array([40.0, -40.0, 0.0])
    r1 = kernels.residual(eta, np.array([1, 1, 1]))
    np.testing.assert_allclose(r1, [-np.exp(-40.0), -1.0, -0.5], rtol=1e-14)  # σ(40) - 1 would be 0
    r0 = kernels.residual(eta, np.array([0, 0, 0]))
    np.testing.assert_allclose(r0, [1.0, np.exp(-40.0), 0.5], rtol=1e-14)


@pytest.mark.parametrize("scratch_name", [None, "test-lrw"])
def test_loss_and_residual_are_log_loss_residual_and_weight_bit_for_bit(scratch_name):
    """The one-exponential form the retrains use (t = (1 − 2y) η) against the three
    separate functions, on logits from 0 to the tails, one column and K columns, twice in a
    row (scratch buffers reused)."""
    from rifscale.engine.kernels.logistic import loss_and_residual

    rng = np.random.default_rng(3)
    eta1 = np.concatenate([[-800.0, -40.0, -1e-300, 0.0, 1e-300, 40.0, 800.0], rng.normal(scale=8, size=500)])
    y = (rng.random(eta1.size) < 0.5).astype(np.float64)
    for eta in (eta1, np.stack([eta1, -eta1, 3 * eta1], axis=1)):
        for _ in range(2):
            ell, r, (e, inv) = loss_and_residual(eta, y, scratch_name=scratch_name)
            assert np.array_equal(ell, kernels.log_loss(eta, y))
            assert np.array_equal(r, kernels.residual(eta, y))
            assert np.array_equal(e * inv * inv, kernels.sigmoid_and_weight(eta)[1])


def test_sigmoid_and_weight_tails():
    eta = np.array([-745.0, -60.0, -3.0, 0.0, 3.0, 60.0, 745.0])
    p, a = kernels.sigmoid_and_weight(eta)
    pm, am = kernels.sigmoid_and_weight(-eta)
    np.testing.assert_allclose(p + pm, 1.0, rtol=0, atol=2.3e-16)
    np.testing.assert_array_equal(a, am)
    # α(60) = e^-60 / (1 + e^-60)^2 to full relative precision (p(1 - p) would give 0)
    np.testing.assert_allclose(a[1], np.exp(-60.0), rtol=1e-14)
    assert p[3] == 0.5 and a[3] == 0.25


def test_design_appends_intercept_in_float64():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    z = kernels.design(x, fit_intercept=True)
    assert z.dtype == np.float64 and z.shape == (3, 3) and np.all(z[:, -1] == 1)
    assert kernels.design(x, fit_intercept=False).shape == (3, 2)


def _data(seed=0, m=50, d=6):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, d)), (rng.random(m) < 0.4).astype(np.int8), rng.normal(size=d + 1)


def test_newton_block_is_additive_over_blocks_and_weights_drop_rows():
    x, y, theta = _data()
    whole = kernels.newton_block(x, y, theta=theta, fit_intercept=True)
    parts = kernels.newton_block(x[:20], y[:20], theta=theta, fit_intercept=True) + kernels.newton_block(
        x[20:], y[20:], theta=theta, fit_intercept=True
    )
    np.testing.assert_allclose(parts, whole, rtol=1e-13)
    w = np.ones(50)
    w[[3, 7]] = 0
    dropped = kernels.newton_block(np.delete(x, [3, 7], 0), np.delete(y, [3, 7]), theta=theta, fit_intercept=True)
    np.testing.assert_allclose(kernels.newton_block(x, y, w, theta=theta, fit_intercept=True), dropped, rtol=1e-13)


def test_newton_block_gradient_and_hessian_match_finite_differences():
    x, y, theta = _data(1)
    p = theta.size
    out = kernels.newton_block(x, y, theta=theta, fit_intercept=True)[0]
    grad, hess = out[2 : 2 + p], out[2 + p :].reshape(p, p)
    eps = 1e-6
    for j in range(p):
        e = np.zeros(p)
        e[j] = eps
        up = kernels.newton_block(x, y, theta=theta + e, fit_intercept=True)[0]
        dn = kernels.newton_block(x, y, theta=theta - e, fit_intercept=True)[0]
        assert abs((up[0] - dn[0]) / (2 * eps) - grad[j]) < 1e-6 * max(1, abs(grad[j]))
        np.testing.assert_allclose((up[2 : 2 + p] - dn[2 : 2 + p]) / (2 * eps), hess[:, j], rtol=1e-5, atol=1e-7)


def test_loss_block_many_thetas_equals_one_at_a_time():
    x, y, theta = _data(2)
    thetas = np.stack([theta, 2 * theta, -theta], axis=1)
    many = kernels.loss_block(x, y, thetas=thetas, fit_intercept=True)[0]
    one = [kernels.newton_block(x, y, theta=thetas[:, k], fit_intercept=True)[0, 0] for k in range(3)]
    np.testing.assert_allclose(many, one, rtol=1e-14)


def test_score_block_flags_samples_with_leverage_near_one():
    """Rows with 1 − h below the threshold get NaN RIF values; every other row keeps its
    finite value (bug: flagging all rows, or none, or NaN-ing the IF columns too)."""
    x, y, theta = _data(3, m=40, d=2)
    p = 3
    linv = np.eye(p) * 3.0
    U = np.ones((p, 1))
    base = kernels.score_block(x, y, theta=theta, linv=linv, U=U, fit_intercept=True, threshold=0.0)
    one_minus_h = 1.0 - base[:, SCORE_COLUMNS.index("leverage")]
    threshold = float(np.median(one_minus_h))  # about half the rows fall below it
    out = kernels.score_block(x, y, theta=theta, linv=linv, U=U, fit_intercept=True, threshold=threshold)
    flag = out[:, SCORE_COLUMNS.index("flag")] == 1
    np.testing.assert_array_equal(flag, one_minus_h < threshold)
    assert 0 < flag.sum() < len(flag)
    s_if, s_rif = out[:, len(SCORE_COLUMNS)], out[:, len(SCORE_COLUMNS) + 1]
    assert np.all(np.isnan(s_rif[flag])) and np.all(np.isnan(out[flag, SCORE_COLUMNS.index("self_rif")]))
    np.testing.assert_allclose(s_rif[~flag], s_if[~flag] / one_minus_h[~flag], rtol=1e-14)
    assert np.all(np.isfinite(s_if))


def test_metric_gradients_honour_the_test_subset_weights():
    """Bug: weighting the metric values by the subset but not their gradients. The
    weighted block must equal the block of the subset's rows, gradients included."""
    x, y, theta = _data(5)
    w = (np.arange(50) % 3 == 0).astype(np.float64)
    weighted = kernels.metric_grad_block(x, y, w, theta=theta, fit_intercept=True)
    subset = kernels.metric_grad_block(x[w == 1], y[w == 1], theta=theta, fit_intercept=True)
    np.testing.assert_allclose(weighted, subset, rtol=1e-13, atol=1e-14)
    full = kernels.metric_grad_block(x, y, theta=theta, fit_intercept=True)
    assert not np.allclose(weighted[0, 2:], full[0, 2:])  # the weights matter here


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_metric_blocks_agree(fit_intercept):
    x, y, theta = _data(4)
    theta = theta if fit_intercept else theta[:-1]
    g = kernels.metric_grad_block(x, y, theta=theta, fit_intercept=fit_intercept)[0]
    v = kernels.metric_values_block(x, y, thetas=theta[:, None], fit_intercept=fit_intercept)[0]
    np.testing.assert_allclose(g[:2], v, rtol=1e-14)


def test_max_row_norm_is_the_largest_design_row_norm():
    """The certificates' radius R: the largest ‖z_i‖, the intercept's 1 included (bug: the
    norm of x alone would understate R for an intercept model), 0 for an empty block."""
    x = np.array([[3.0, 4.0], [0.0, 1.0]], dtype=np.float32)
    assert kernels.max_row_norm_block(x, fit_intercept=False)[0, 0] == pytest.approx(5.0)
    assert kernels.max_row_norm_block(x, fit_intercept=True)[0, 0] == pytest.approx(np.sqrt(26.0))
    assert kernels.max_row_norm_block(np.empty((0, 2)), fit_intercept=True)[0, 0] == 0.0


@pytest.mark.parametrize("hessian", ["float64", "float32"])
def test_newton_block_allocates_only_its_packed_row_once_its_scratch_is_warm(hessian):
    """dask's worker processes return freed memory to the system (MALLOC_TRIM_THRESHOLD_),
    so every p² temporary of a block faults its pages in afresh: 4x the page faults of a
    Newton fit measured on 2e5 x 384. The Hessian sums live in the thread's scratch and the
    packed row is the block's one allocation of p² values (bug: H, H + Hᵀ, the intercept's
    copy and the packed row each allocated per block, peak 3-5 p² values)."""
    import tracemalloc

    x, y, theta = _data(m=3000, d=200)
    x = x.astype(np.float32)
    kernels.newton_block(x, y, theta=theta, fit_intercept=True, hessian=hessian)  # scratch buffers made
    tracemalloc.start()
    try:
        packed = kernels.newton_block(x, y, theta=theta, fit_intercept=True, hessian=hessian)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    row = packed.nbytes  # (2 + p + p²) float64
    assert peak <= row + 300_000, (peak, row)  # beyond the row: per sub-block vectors of 2048 values
    H = packed[0, 2 + 201 :].reshape(201, 201)
    assert np.array_equal(H, H.T)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_retrain_block_matches_the_dense_sums_of_each_set(fit_intercept):
    """The retrains' kernel (cast and summed a sub-block at a time, the intercept's parts
    as sums) against its definition written densely: for each set k, with w the rows kept,
    Σ w ℓ, Σ w |r| ‖z‖, Σ w r z and, for the Newton sets, Σ w α z zᵀ at θ_k. The block
    spans several sub-blocks and a partial last one; the sets reach into it and beyond."""
    from rifscale.engine.kernels.products import SUB_ROWS

    rng = np.random.default_rng(11)
    m, d, K = 2 * SUB_ROWS + 333, 7, 5
    x = rng.standard_normal((m, d)).astype(np.float32)
    y = (rng.random(m) < 0.4).astype(np.float64)
    start = 1000
    rows = np.arange(start, start + m)
    sets = [np.sort(rng.choice(start + m + 500, size, replace=False)) for size in (0, 1, 40, 900, 3000)]
    p = d + fit_intercept
    thetas = rng.standard_normal((p, K)) / 2
    newton = [1, 3, 4]
    got = kernels.retrain_block(x, y, rows, thetas=thetas, sets=sets, newton=newton, fit_intercept=fit_intercept)[0]
    z = np.asarray(x, dtype=np.float64)
    if fit_intercept:
        z = np.hstack([z, np.ones((m, 1))])
    want_loss, want_scale, want_grad, want_hess = [], [], [], []
    for k in range(K):
        w = (~np.isin(rows, sets[k])).astype(np.float64)
        eta = z @ thetas[:, k]
        prob = 1.0 / (1.0 + np.exp(-eta))
        r = prob - y
        want_loss.append(np.sum(w * (np.logaddexp(0.0, eta) - y * eta)))
        want_scale.append(np.sum(w * np.abs(r) * np.linalg.norm(z, axis=1)))
        want_grad.append(z.T @ (w * r))
        if k in newton:
            want_hess.append((z * (w * prob * (1 - prob))[:, None]).T @ z)
    np.testing.assert_allclose(got[:K], want_loss, rtol=1e-12)
    np.testing.assert_allclose(got[K : 2 * K], want_scale, rtol=1e-12)
    np.testing.assert_allclose(got[2 * K : 2 * K + p * K].reshape(p, K), np.stack(want_grad, axis=1), rtol=1e-11,
                               atol=1e-12 * np.abs(want_grad).max())
    hess = got[2 * K + p * K :].reshape(len(newton), p, p)
    for j in range(len(newton)):
        np.testing.assert_allclose(hess[j], want_hess[j], rtol=1e-11, atol=1e-13 * np.abs(want_hess[j]).max())
        assert np.array_equal(hess[j], hess[j].T)
