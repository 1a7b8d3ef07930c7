r"""Dense float64 NumPy reference of the softmax model (docs/design.md §9), written
independently of the engine's kernels.

It works in the *full* parameter space, Θ (K × q) with row k = ``[W_k, b_k]`` and
``q = d + fit_intercept``, flattened class by class. The intercepts' common shift
``n = (0, …, 0, 1, …)/√K`` over the b entries is a null direction of the loss; the
reference never parametrises it away, but solves every system with ``H + n nᵀ`` (a
definite matrix whose inverse is ``H⁺ + n nᵀ``) and keeps every Θ with ``Σ_k b_k = 0``,
so its answers are the minimum-norm (pseudo-inverse) ones — which is what any basis of
``1⊥`` gives, the engine's Q included. Leverages come from the eigenvalues of the
non-symmetric ``A_i M_i`` (``np.linalg.eigvals``). Small problems only.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


class SoftmaxReference:
    """L(Θ) = Σ_{i∉T} [logsumexp(Θ z_i) − (Θ z_i)_{y_i}] + (λ/2)‖W‖²_F on dense arrays."""

    def __init__(self, X, y, *, n_classes: int, lam: float, fit_intercept: bool = True):
        X = np.asarray(X, dtype=np.float64)
        self.Z = self.augment(X, fit_intercept)
        self.y = np.asarray(y).astype(np.int64)
        self.K, self.q = int(n_classes), self.Z.shape[1]
        self.lam, self.fit_intercept = float(lam), fit_intercept
        K, q = self.K, self.q
        pen = np.ones((K, q))
        if fit_intercept:
            pen[:, -1] = 0.0
        self.D = np.diag(pen.ravel())
        self.null = np.zeros((K, q))
        if fit_intercept:
            self.null[:, -1] = 1.0 / np.sqrt(K)
        self.null = self.null.ravel()
        self.theta = self.newton(np.ones(len(self.y), dtype=bool), np.zeros(K * q))
        self._at_optimum()

    @staticmethod
    def augment(X, fit_intercept):
        X = np.asarray(X, dtype=np.float64)
        return np.hstack([X, np.ones((X.shape[0], 1))]) if fit_intercept else X

    # -- per row --------------------------------------------------------------------------
    def logits(self, theta, Z=None):
        return (self.Z if Z is None else Z) @ theta.reshape(self.K, self.q).T

    def jacobians(self, Z):
        """J_i = I_K ⊗ z_iᵀ, (m, K, K q)."""
        eye = np.eye(self.K)
        return np.einsum("kl,ia->ikla", eye, Z).reshape(Z.shape[0], self.K, self.K * self.q)

    @staticmethod
    def probs(eta):
        return np.exp(eta - logsumexp(eta, axis=1, keepdims=True))

    def curvature(self, eta):
        p = self.probs(eta)
        return np.stack([np.diag(pi) - np.outer(pi, pi) for pi in p])

    # -- objective on a subset of rows ----------------------------------------------------
    def loss(self, theta, keep):
        eta = self.logits(theta)[keep]
        y = self.y[keep]
        data = np.sum(logsumexp(eta, axis=1) - eta[np.arange(len(y)), y])
        return float(data + 0.5 * self.lam * theta @ self.D @ theta)

    def grad_hess(self, theta, keep):
        Z, y = self.Z[keep], self.y[keep]
        eta = self.logits(theta, Z)
        R = self.probs(eta)
        R[np.arange(len(y)), y] -= 1.0
        g = np.einsum("ik,ia->ka", R, Z).ravel() + self.lam * self.D @ theta
        A = self.curvature(eta)  # H = Σ J_iᵀ A_i J_i with J_i = I_K ⊗ z_iᵀ: block (k, l) is Σ A_ikl z_i z_iᵀ
        KQ = self.K * self.q
        H = np.einsum("ikl,ia,ib->kalb", A, Z, Z, optimize=True).reshape(KQ, KQ) + self.lam * self.D
        return g, H

    def solve(self, H, v):
        """``H⁺ v`` for v ⊥ null: ``(H + n nᵀ)⁻¹ v`` with the null component removed."""
        out = np.linalg.solve(H + np.outer(self.null, self.null), v)
        return out - np.outer(self.null, self.null @ out) if out.ndim == 2 else out - self.null * (self.null @ out)

    def newton(self, keep, theta0, *, rtol=1e-13, max_iter=100):
        theta = theta0.copy()
        g0 = max(np.linalg.norm(self.grad_hess(theta, keep)[0]), np.linalg.norm(self.grad_hess(0 * theta, keep)[0]))
        for _ in range(max_iter):
            g, H = self.grad_hess(theta, keep)
            if np.linalg.norm(g) <= rtol * g0:
                return self._polish(keep, theta)
            step = -self.solve(H, g)
            t, f0 = 1.0, self.loss(theta, keep)
            while self.loss(theta + t * step, keep) > f0 + 1e-4 * t * (g @ step) and t > 1e-12:
                if np.linalg.norm(self.grad_hess(theta + t * step, keep)[0]) < np.linalg.norm(g):
                    break
                t /= 2
            theta = theta + t * step
        g = self.grad_hess(theta, keep)[0]
        if np.linalg.norm(g) > 1e-9 * g0:
            raise RuntimeError(f"softmax reference Newton did not converge: |g| = {np.linalg.norm(g):.3e}")
        return theta

    def _polish(self, keep, theta, *, steps=4):
        g, H = self.grad_hess(theta, keep)
        for _ in range(steps):
            trial = theta - self.solve(H, g)
            g_new, H_new = self.grad_hess(trial, keep)
            if not np.linalg.norm(g_new) < np.linalg.norm(g):
                break
            theta, g, H = trial, g_new, H_new
        return theta

    # -- quantities at Θ̂ ------------------------------------------------------------------
    def _at_optimum(self):
        keep = np.ones(len(self.y), dtype=bool)
        _, self.H = self.grad_hess(self.theta, keep)
        eta = self.logits(self.theta)
        self.p = self.probs(eta)
        self.r = self.p.copy()
        self.r[np.arange(len(self.y)), self.y] -= 1.0
        self.A = self.curvature(eta)
        self.J = self.jacobians(self.Z)
        self.G = np.einsum("ikp,ik->ip", self.J, self.r)  # per-sample gradients (n, Kq)
        n = len(self.y)
        HJ = self.solve(self.H, self.J.reshape(n * self.K, -1).T).T.reshape(n, self.K, -1)
        self.M = np.einsum("ikp,ilp->ikl", self.J, HJ)
        AM = self.A @ self.M
        self.h = np.array([np.max(np.linalg.eigvals(am).real) for am in AM])
        self.S = np.linalg.solve(np.eye(self.K) - AM, self.r[:, :, None])[:, :, 0]  # (I − A M)⁻¹ r

    def delta_if(self, T):
        return self.solve(self.H, self.G[T].sum(axis=0))

    def delta_rif(self, T):
        return self.solve(self.H, np.einsum("ikp,ik->p", self.J[T], self.S[T]))

    def leave_out_hessian(self, T):
        T = np.atleast_1d(T)
        KQ = self.K * self.q
        return self.H - np.einsum("ikl,ia,ib->kalb", self.A[T], self.Z[T], self.Z[T], optimize=True).reshape(KQ, KQ)

    def delta_ns(self, T):
        return self.solve(self.leave_out_hessian(T), self.G[np.atleast_1d(T)].sum(axis=0))

    def delta_exact(self, T):
        keep = np.ones(len(self.y), dtype=bool)
        keep[T] = False
        return self.newton(keep, self.theta) - self.theta

    def newton_step_without(self, i):
        """The exact Newton step of L₋ᵢ from Θ̂: ``−∇²L₋ᵢ(Θ̂)⁺ ∇L₋ᵢ(Θ̂)``, both recomputed."""
        keep = np.ones(len(self.y), dtype=bool)
        keep[i] = False
        g, H = self.grad_hess(self.theta, keep)
        return -self.solve(H, g)

    # -- metrics ----------------------------------------------------------------------------
    def test_metric(self, name, Xs, ys, theta):
        """(value, gradient) of test_loss (summed cross-entropy) or test_prediction (summed
        margin ``η_y − logsumexp_{k≠y} η_k``) over the rows Xs, ys."""
        Zs = self.augment(Xs, self.fit_intercept)
        ys = np.asarray(ys).astype(np.int64)
        eta = self.logits(theta, Zs)
        J = self.jacobians(Zs)
        rows = np.arange(len(ys))
        if name == "test_loss":
            R = self.probs(eta)
            R[rows, ys] -= 1.0
            return float(np.sum(logsumexp(eta, axis=1) - eta[rows, ys])), np.einsum("ikp,ik->p", J, R)
        if name == "test_prediction":
            others = eta.copy()
            others[rows, ys] = -np.inf
            lse = logsumexp(others, axis=1)
            dm = -np.exp(others - lse[:, None])
            dm[rows, ys] = 1.0
            return float(np.sum(eta[rows, ys] - lse)), np.einsum("ikp,ik->p", J, dm)
        raise ValueError(name)

    def scores(self, name, Xs, ys):
        """(s_IF, s_RIF) for every training sample, for one test metric: ``uᵢᵀ rᵢ`` and
        ``uᵢᵀ (I − AᵢMᵢ)⁻¹ rᵢ`` with ``uᵢ = Jᵢ H⁺ ∇f``."""
        _, grad = self.test_metric(name, Xs, ys, self.theta)
        u = np.einsum("ikp,p->ik", self.J, self.solve(self.H, grad))
        return np.einsum("ik,ik->i", u, self.r), np.einsum("ik,ik->i", u, self.S)

    def self_margin(self):
        """(self_if, self_rif): the change of each row's own margin, ``∇m_iᵀ M_i r_i`` and
        ``∇m_iᵀ M_i (I − A_i M_i)⁻¹ r_i``."""
        eta = self.logits(self.theta)
        rows = np.arange(len(self.y))
        others = eta.copy()
        others[rows, self.y] = -np.inf
        dm = -np.exp(others - logsumexp(others, axis=1, keepdims=True))
        dm[rows, self.y] = 1.0
        return (np.einsum("ik,ikl,il->i", dm, self.M, self.r), np.einsum("ik,ikl,il->i", dm, self.M, self.S))

    def as_matrix(self, theta):
        """Θ as (K, q): row k = [W_k, b_k]."""
        return np.asarray(theta).reshape(self.K, self.q)
