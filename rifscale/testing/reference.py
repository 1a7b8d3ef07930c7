r"""Dense float64 NumPy reference of docs/design.md §1–2, written independently of the engine.

Small problems only (everything in memory). Exact Newton with ``np.linalg.solve``, run to
‖∇L‖ ≤ 1e-13 relative and then on while full steps still lower ‖∇L‖ (the float64 rounding
floor); the exact leave-T-out retrain is the same Newton started at θ̂.
"""

from __future__ import annotations

import numpy as np


def _sigmoid(t):
    return np.exp(-np.logaddexp(0.0, -t))  # σ(t) = 1 / (1 + e^{-t}), accurate in both tails


def _residual(eta, y):
    """σ(η) − y without cancellation when the prediction is confident and right."""
    return np.where(y == 1, -_sigmoid(-eta), _sigmoid(eta))


def _softplus(t):
    return np.logaddexp(0.0, t)


class Reference:
    """L(θ) = Σ_{i∉T} ℓ_i(θ) + (λ/2)‖θ_w‖² on dense arrays."""

    def __init__(self, X, y, *, lam: float, fit_intercept: bool = True):
        X = np.asarray(X, dtype=np.float64)
        self.Z = np.hstack([X, np.ones((X.shape[0], 1))]) if fit_intercept else X
        self.y = np.asarray(y, dtype=np.float64)
        self.lam = float(lam)
        self.fit_intercept = fit_intercept
        p = self.Z.shape[1]
        self.D = np.eye(p)
        if fit_intercept:
            self.D[-1, -1] = 0.0
        self.theta = self.newton(np.ones(len(self.y), dtype=bool), np.zeros(p))
        self._at_optimum()

    # -- objective on a subset of rows ------------------------------------------------
    def loss(self, theta, keep):
        eta = self.Z[keep] @ theta
        return float(np.sum(_softplus(eta) - self.y[keep] * eta) + 0.5 * self.lam * theta @ self.D @ theta)

    def grad_hess(self, theta, keep):
        Z, y = self.Z[keep], self.y[keep]
        eta = Z @ theta
        g = Z.T @ _residual(eta, y) + self.lam * self.D @ theta
        H = (Z * (_sigmoid(eta) * _sigmoid(-eta))[:, None]).T @ Z + self.lam * self.D
        return g, H

    def newton(self, keep, theta0, *, rtol=1e-13, max_iter=100):
        theta = theta0.copy()
        # relative to the larger of the start's and zero's gradient: a warm start's own
        # gradient can be at rounding level already
        g0 = max(np.linalg.norm(self.grad_hess(theta, keep)[0]), np.linalg.norm(self.grad_hess(0 * theta, keep)[0]))
        for _ in range(max_iter):
            g, H = self.grad_hess(theta, keep)
            if np.linalg.norm(g) <= rtol * g0:
                return self._polish(keep, theta)
            step = np.linalg.solve(H, -g)
            t, f0 = 1.0, self.loss(theta, keep)
            while self.loss(theta + t * step, keep) > f0 + 1e-4 * t * (g @ step) and t > 1e-12:
                new_g = self.grad_hess(theta + t * step, keep)[0]
                if np.linalg.norm(new_g) < np.linalg.norm(g):
                    break
                t /= 2
            theta = theta + t * step
        g = self.grad_hess(theta, keep)[0]
        if np.linalg.norm(g) > 1e-9 * g0:
            raise RuntimeError(f"reference Newton did not converge: |g| = {np.linalg.norm(g):.3e}")
        return theta

    def _polish(self, keep, theta, *, steps=4):
        """Full Newton steps while they lower ‖∇L‖: down to the float64 rounding floor."""
        g, H = self.grad_hess(theta, keep)
        for _ in range(steps):
            trial = theta - np.linalg.solve(H, g)
            g_new, H_new = self.grad_hess(trial, keep)
            if not np.linalg.norm(g_new) < np.linalg.norm(g):
                break
            theta, g, H = trial, g_new, H_new
        return theta

    # -- quantities at θ̂ --------------------------------------------------------------
    def _at_optimum(self):
        keep = np.ones(len(self.y), dtype=bool)
        _, self.H = self.grad_hess(self.theta, keep)
        self.Hinv = np.linalg.inv(self.H)
        eta = self.Z @ self.theta
        self.p = _sigmoid(eta)
        self.r = _residual(eta, self.y)
        self.alpha = _sigmoid(eta) * _sigmoid(-eta)  # not p(1 - p): that loses digits as p -> 1
        self.G = self.Z * self.r[:, None]  # per-sample gradients g_i (n, p)
        self.h = self.alpha * np.einsum("ij,jk,ik->i", self.Z, self.Hinv, self.Z)

    def delta_if(self, T):
        return self.Hinv @ self.G[T].sum(axis=0)

    def delta_rif(self, T):
        return self.Hinv @ (self.G[T] / (1 - self.h[T])[:, None]).sum(axis=0)

    def delta_ns(self, T):
        ZT = self.Z[T]
        HT = self.H - (ZT * self.alpha[T][:, None]).T @ ZT
        return np.linalg.solve(HT, self.G[T].sum(axis=0))

    def delta_exact(self, T):
        keep = np.ones(len(self.y), dtype=bool)
        keep[T] = False
        return self.newton(keep, self.theta) - self.theta

    # -- metrics -----------------------------------------------------------------------
    @staticmethod
    def augment(X, fit_intercept):
        X = np.asarray(X, dtype=np.float64)
        return np.hstack([X, np.ones((X.shape[0], 1))]) if fit_intercept else X

    def test_metric(self, name, Xs, ys, theta):
        """(value, gradient) of test_loss or test_prediction over the rows Xs, ys."""
        Zs = self.augment(Xs, self.fit_intercept)
        eta = Zs @ theta
        s = _sigmoid(eta)
        if name == "test_loss":
            return float(np.sum(_softplus(eta) - ys * eta)), Zs.T @ _residual(eta, ys)
        if name == "test_prediction":
            return float(np.sum(s)), Zs.T @ (s * _sigmoid(-eta))
        raise ValueError(name)

    def scores(self, name, Xs, ys):
        """(s_IF, s_RIF) for every training sample, for one test metric."""
        _, grad = self.test_metric(name, Xs, ys, self.theta)
        s_if = self.G @ (self.Hinv @ grad)
        return s_if, s_if / (1 - self.h)
