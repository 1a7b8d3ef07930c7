r"""Multiclass softmax (multinomial logistic) regression: every formula of it, on blocks of
rows (the second model family, :class:`Softmax`, behind the seam
:class:`rifscale.engine.family.ModelFamily`). The maths: docs/design.md §9.

Model. Labels ``y ∈ {0, …, K−1}``; rows ``z = [x, 1]`` (or ``x``), ``q = d + fit_intercept``.
The logits of a row are ``η = W x + b`` (K of them), the loss
``ℓ = logsumexp(η) − η_y`` and the penalty ``(λ/2)‖W‖²_F`` (scikit-learn's multinomial
``LogisticRegression(C = 1/λ)``). The loss does not change when one constant is added to
every ``b_k``, so the intercepts are parametrised in the complement of that direction:
``b = Q c`` with Q (K × (K−1)) the orthonormal Helmert basis of ``1⊥`` (:func:`basis`).

θ (the *reduced* vector, P entries) is ``[W_0 (d), …, W_{K−1} (d), c (K−1)]``: the
intercept coordinates last and unpenalised, as every family keeps them. The kernels work in
the *full* space of the (q, K) matrix ``Θ = [W, b]ᵀ`` (column k: class k's weights and
intercept; logits ``η = z Θ``) and map to and from θ with the isometry E (:func:`expand`,
:func:`reduce`): ``Θ = E θ``, a gradient ``Eᵀ G``, a Hessian ``Eᵀ H_full E``. Per row,
``J_i = ∂η_i/∂θ`` (K × P), ``p_i = softmax(η_i)``, ``r_i = p_i − e_{y_i}``,
``A_i = diag(p_i) − p_i p_iᵀ``:

.. math::

    g_i = J_i^T r_i,\qquad H = \sum_i J_i^T A_i J_i + \lambda D,\qquad
    M_i = J_i H^{-1} J_i^T,\qquad \Delta\theta_{RIF}(i) = H^{-1} J_i^T (I - A_i M_i)^{-1} r_i

Stability: ``1 − p_k`` of the most probable class is summed from the others' probabilities
(so ``r_y`` and ``A``'s diagonal keep full relative precision for confident predictions).
All sums in float64 whatever the storage dtype. NumPy only (the chunks stay on the host).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np

from ...config import MAX_CLASSES
from ...errors import ConfigError, CorpusError
from ._scratch import rows_as
from .products import SUB_ROWS, design, keep_mask

#: Columns of :meth:`Softmax.score_block` before the per-metric IF and RIF columns:
#: the probability of the row's own class, the leverage (largest eigenvalue of A M), the
#: IF and RIF change of the row's own margin, and the flag.
SCORE_COLUMNS = ("prob_label", "leverage", "self_if", "self_rif", "flag")


#: Most float64 values of the per-class products ``L⁻¹ J_iᵀ`` held at once in the scores pass.
LEVERAGE_VALUES = 2**22


@lru_cache(maxsize=64)
def basis(K: int) -> np.ndarray:
    """Q (K × (K−1)): an orthonormal basis of the vectors whose entries sum to 0 (Helmert's:
    column j is ``(1, …, 1, −(j+1), 0, …, 0) / √((j+1)(j+2))`` with j + 1 ones)."""
    Q = np.zeros((K, K - 1))
    for j in range(K - 1):
        Q[: j + 1, j] = 1.0
        Q[j + 1, j] = -(j + 1.0)
        Q[:, j] /= math.sqrt((j + 1.0) * (j + 2.0))
    Q.setflags(write=False)
    return Q


def layout(P: int, K: int, q: int) -> tuple[int, bool]:
    """``(d, fit_intercept)`` of a reduced vector of length P for K classes and rows of q
    columns (``q = d + fit_intercept``): ``P = K q − 1`` with an intercept, ``K q`` without."""
    if P == K * q:
        return q, False
    if P == K * q - 1:
        return q - 1, True
    raise ValueError(f"A softmax theta of length {P} does not fit K = {K} classes and rows of {q} columns.")


def expand(theta, K: int, d: int, fit_intercept: bool) -> np.ndarray:
    """Θ = E θ: the (q, K) full-space matrix (column k = ``[W_k, b_k]``) of a reduced
    vector (P,), or (q, K, M) of the columns of a (P, M) array."""
    theta = np.asarray(theta, dtype=np.float64)
    many = theta.ndim == 2
    t = theta if many else theta[:, None]
    M = t.shape[1]
    W = t[: K * d].reshape(K, d, M).transpose(1, 0, 2)  # (d, K, M)
    if fit_intercept:
        b = np.einsum("kj,jm->km", basis(K), t[K * d :])  # (K, M)
        out = np.concatenate([W, b[None]], axis=0)
    else:
        out = W
    return out if many else out[:, :, 0]


def reduce(G, K: int, d: int, fit_intercept: bool) -> np.ndarray:
    """Eᵀ G: the reduced vector (P,) of a full-space (q, K) array, or (P, M) of (q, K, M)."""
    G = np.asarray(G, dtype=np.float64)
    many = G.ndim == 3
    g = G if many else G[:, :, None]
    parts = [g[:d].transpose(1, 0, 2).reshape(K * d, -1)]
    if fit_intercept:
        parts.append(np.einsum("kj,km->jm", basis(K), g[d]))
    out = np.concatenate(parts, axis=0)
    return out if many else out[:, 0]


def reduce_hessian(S, K: int, d: int, fit_intercept: bool) -> np.ndarray:
    """Eᵀ H_full E for the full-space Hessian given as S (K, K, q, q), ``S[k, l] = Σ A_kl z zᵀ``."""
    Q = basis(K)
    P = K * d + (K - 1) * fit_intercept
    H = np.empty((P, P))
    H[: K * d, : K * d] = S[:, :, :d, :d].transpose(0, 2, 1, 3).reshape(K * d, K * d)
    if fit_intercept:
        cross = np.einsum("klx,lj->kxj", S[:, :, :d, d], Q).reshape(K * d, K - 1)
        H[: K * d, K * d :] = cross
        H[K * d :, : K * d] = cross.T
        H[K * d :, K * d :] = Q.T @ S[:, :, d, d] @ Q
    return H


# ---------------------------------------------------------------------------- per-row maths


def _probabilities(eta):
    """``(p, 1 − p, logsumexp)`` of logits (m, K) without overflow; ``1 − p`` of each row's
    most probable class is summed from the others (no cancellation when p → 1)."""
    top = np.argmax(eta, axis=1)
    mx = np.take_along_axis(eta, top[:, None], axis=1)
    e = np.exp(eta - mx)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    rest = p.copy()
    rows = np.arange(eta.shape[0])
    rest[rows, top] = 0.0
    one_minus = 1.0 - p
    one_minus[rows, top] = rest.sum(axis=1)
    return p, one_minus, (mx + np.log(s))[:, 0]


def row_quantities(eta, y):
    """Per row: loss ℓ (m,), p (m, K), r = p − e_y (m, K), A = diag(p) − p pᵀ (m, K, K)."""
    y = np.asarray(y).astype(np.int64)
    rows = np.arange(eta.shape[0])
    p, one_minus, lse = _probabilities(eta)
    loss = lse - eta[rows, y]
    r = p.copy()
    r[rows, y] = -one_minus[rows, y]
    A = -p[:, :, None] * p[:, None, :]
    K = eta.shape[1]
    A[:, np.arange(K), np.arange(K)] = p * one_minus
    return loss, p, r, A


def _others(eta, y):
    """The margin ``η_y − logsumexp_{k≠y} η_k`` (m,) and its gradient in η, ``e_y − π``
    with π the softmax over the other classes (m, K)."""
    y = np.asarray(y).astype(np.int64)
    rows = np.arange(eta.shape[0])
    masked = eta.copy()
    masked[rows, y] = -np.inf
    mx = masked.max(axis=1, keepdims=True)
    e = np.exp(masked - mx)
    s = e.sum(axis=1, keepdims=True)
    margin = eta[rows, y] - (mx + np.log(s))[:, 0]
    grad = -e / s
    grad[rows, y] = 1.0
    return margin, grad


def _sqrt_psd(A):
    """Symmetric square roots of a stack of PSD matrices (m, K, K)."""
    lam, V = np.linalg.eigh(A)
    return (V * np.sqrt(np.maximum(lam, 0.0))[:, None, :]) @ V.transpose(0, 2, 1)


def rescaled(A, M, r, *, threshold: float):
    """``(h, flag, s)``: the leverage ``h = λ_max(A M)`` (through the symmetric
    ``A^{1/2} M A^{1/2}``, the same eigenvalues), the flag ``1 − h < threshold`` and
    ``s = (I − A M)⁻¹ r`` (NaN rows where flagged)."""
    m, K = r.shape
    if m == 0:
        return np.zeros(0), np.zeros(0, dtype=bool), np.zeros((0, K))
    R = _sqrt_psd(A)
    h = np.linalg.eigvalsh(R @ M @ R)[:, -1]
    flag = 1.0 - h < threshold
    B = np.eye(K) - A @ M
    B[flag] = np.eye(K)
    s = np.linalg.solve(B, r[:, :, None])[:, :, 0]
    s[flag] = np.nan
    return h, flag, s


# ---------------------------------------------------------------------------- block kernels


class _Rows:
    """A block's float64 design rows, a sub-block at a time (the kernels' loops)."""

    def __init__(self, x, fit_intercept: bool, step: int = SUB_ROWS):
        self.x, self.fit_intercept, self.step = np.asarray(x), fit_intercept, max(int(step), 1)

    def __iter__(self):
        m = self.x.shape[0]
        for s in range(0, m, self.step):
            xb = rows_as(self.x[s : s + self.step], np.float64, "rows64")
            z = np.concatenate([xb, np.ones((xb.shape[0], 1))], axis=1) if self.fit_intercept else xb
            yield slice(s, s + xb.shape[0]), z


#: How a block's Hessian is summed: "stacked" (one symmetric product of the m × Kq rows
#: ``p_ik z_i``, the K diagonal blocks replaced by weighted Grams) or "grams" (K(K+1)/2
#: weighted Grams). The same numbers up to rounding; benchmarks/bench_softmax.py times both.
HESSIAN_METHOD = "stacked"


def _gram_blocks(z, A, out, *, dtype=np.float64, p=None, w=None, method=None):
    """``out[k, l] += Σ_i w_i A_ikl z_i z_iᵀ`` for k ≤ l (the lower blocks are filled by
    :func:`_symmetric`), the products in ``dtype`` and summed in float64.

    "grams": K(K+1)/2 weighted Grams. "stacked" (needs ``p``): the off-diagonal blocks
    ``−Σ w p_k p_l z zᵀ`` from one product ``YᵀY`` of ``Y = [√w p_1 z, …, √w p_K z]`` (m × Kq;
    NumPy runs ``Yᵀ @ Y`` as a symmetric rank-k update), the diagonal blocks as weighted Grams
    of the accurate ``A_kk = p_k (1 − p_k)`` (``YᵀY``'s would be ``Σ p_k z zᵀ − Σ p_k² z zᵀ``,
    which cancels when p_k → 1).
    """
    K = A.shape[1]
    zc = z.astype(dtype, copy=False)
    wA = A if w is None else w[:, None, None] * A
    if (method or HESSIAN_METHOD) == "stacked" and p is not None and K > 2:
        m, q = z.shape
        s = p if w is None else p * np.sqrt(w)[:, None]
        Y = (s[:, :, None].astype(dtype) * zc[:, None, :]).reshape(m, K * q)
        G = (Y.T @ Y).reshape(K, q, K, q)
        for k in range(K):
            out[k, k] += ((zc * wA[:, k, k, None].astype(dtype)).T @ zc).astype(np.float64)
            for l in range(k + 1, K):
                out[k, l] -= G[k, :, l, :]
        return
    for k in range(K):
        for l in range(k, K):
            out[k, l] += ((zc * wA[:, k, l, None].astype(dtype)).T @ zc).astype(np.float64)


def _symmetric(S):
    K = S.shape[0]
    for k in range(K):
        S[k, k] = 0.5 * (S[k, k] + S[k, k].T)
        for l in range(k):
            S[k, l] = S[l, k].T
    return S


@dataclass(frozen=True)
class Softmax:
    """Multinomial logistic regression over K ≥ 2 classes (labels 0..K−1, one weight vector
    and one intercept per class, softmax link), the second
    :class:`~rifscale.engine.family.ModelFamily`. docs/design.md §9 has the maths.

    Examples
    --------
    >>> from rifscale.engine.kernels.softmax import Softmax
    >>> Softmax(10).n_params(384, fit_intercept=True)  # 10 × 384 weights, 9 intercept coordinates
    3849
    """

    n_classes: int
    name: str = "softmax"
    score_columns: ClassVar[tuple[str, ...]] = SCORE_COLUMNS
    #: ``H(θ′) ⪰ e^{−c R ‖θ′−θ‖} H(θ)`` with c = √2 (docs/design.md §9.4).
    self_concordance: ClassVar[float] = math.sqrt(2.0)
    #: NumPy kernels only (the chunks stay on the host).
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    counts_labels: ClassVar[bool] = True

    def __post_init__(self):
        if isinstance(self.n_classes, bool) or int(self.n_classes) != self.n_classes or not (
                2 <= self.n_classes <= MAX_CLASSES):
            raise ConfigError(f"A softmax model needs 2 <= K <= {MAX_CLASSES} classes; got {self.n_classes!r}.")
        object.__setattr__(self, "n_classes", int(self.n_classes))

    def __dask_tokenize__(self):
        return ("rifscale-model-family", type(self).__qualname__, self.name, self.n_classes)

    # -- sizes and conventions ----------------------------------------------------------
    def n_params(self, d: int, *, fit_intercept: bool) -> int:
        """P = K d + (K − 1) with intercepts (the last K − 1 entries, ``c`` of ``b = Q c``), else K d."""
        return self.n_classes * d + (self.n_classes - 1) * int(fit_intercept)

    def penalty_diag(self, p: int, *, fit_intercept: bool) -> np.ndarray:
        """Diagonal of D: ones for the weights, zeros for the K − 1 intercept coordinates."""
        D = np.ones(p)
        if fit_intercept:
            D[p - (self.n_classes - 1) :] = 0.0
        return D

    def other_label(self, y):
        """The next class, ``(y + 1) mod K``."""
        return (np.asarray(y) + 1) % self.n_classes

    def prediction_change(self, z, y, *, before, after):
        """The change of the margin ``η_y − logsumexp_{k≠y} η_k`` of design row(s) z from θ =
        ``before`` to ``after`` (a float for one row given as a vector)."""
        z = np.asarray(z, dtype=np.float64)
        rows = np.atleast_2d(z)
        d, fit_intercept = self._dims(len(before), rows.shape[1])
        yy = np.atleast_1d(y)
        m = [_others(rows @ expand(t, self.n_classes, d, fit_intercept), yy)[0] for t in (before, after)]
        change = m[1] - m[0]
        return change[0] if z.ndim == 1 else change

    def record(self) -> dict:
        """The manifest's ``model`` entry: the family and K."""
        return {"family": self.name, "n_classes": self.n_classes}

    def check_settings(self, *, lam: float, device: str) -> None:
        """λ > 0 (adding one vector to every class's weights changes no logit difference: only
        the penalty pins W down) and the CPU (NumPy kernels)."""
        if lam == 0:
            raise ConfigError(
                "The softmax model needs lam > 0: adding one vector to every class's weights leaves the loss "
                "unchanged, so only the penalty pins the weights down. Use e.g. --lam 1.0."
            )
        if device not in self.devices:
            raise ConfigError(
                f"The softmax model runs on the CPU only for now (its kernels are NumPy); device = {device!r} is "
                "not supported for it yet. Use --device cpu."
            )

    def check_labels(self, split: str, lo: int, hi: int, counts=None) -> None:
        """Labels must be 0..K−1; with ``counts`` (training class counts) every class needs a row."""
        K = self.n_classes
        if lo < 0 or hi > K - 1:
            raise CorpusError(
                f"{split}/y holds labels outside 0..{K - 1} (min {lo}, max {hi}); the softmax model was set up for "
                f"K = {K} classes from the training labels. A test label needs a class that training has."
            )
        if counts is not None:
            empty = np.flatnonzero(np.asarray(counts)[:K] == 0)
            if empty.size:
                raise CorpusError(
                    f"{split}/y has no row of class(es) {empty[:10].tolist()} of 0..{K - 1}: a class without a "
                    "training sample has no finite optimum for its intercept. Map the labels to consecutive "
                    "integers 0..K-1 of the classes present."
                )

    def _dims(self, theta_len: int, q: int):
        return layout(theta_len, self.n_classes, q)

    # -- Newton pass ----------------------------------------------------------------------
    def newton_block(self, x, y, w=None, *, theta, fit_intercept: bool, hessian: str | None = "float64"):
        """``[Σ w ℓ, Σ w ‖r‖‖z‖, Σ w g (P), Σ w ∇²ℓ (P², or none)]``, the binary kernel's packing.

        One GEMM gives the K logits of a sub-block; the Hessian is the K(K+1)/2 weighted
        Grams ``Σ w A_kl z zᵀ`` (in float64, or float32 summed in float64) mapped by E."""
        if hessian not in (None, "float32", "float64"):
            raise ValueError(f"hessian must be 'float32', 'float64' or None; got {hessian!r}")
        K = self.n_classes
        d = x.shape[1]
        q = d + int(fit_intercept)
        Theta = expand(theta, K, d, fit_intercept)
        G = np.zeros((q, K))
        S = np.zeros((K, K, q, q)) if hessian else None
        loss = scale = 0.0
        for rows, z in _Rows(x, fit_intercept):
            l, p, r, A = row_quantities(z @ Theta, y[rows])
            wb = None
            if w is not None:
                wb = np.asarray(w[rows], dtype=np.float64)
                l, r = wb * l, wb[:, None] * r
            loss += float(l.sum())
            scale += float(np.linalg.norm(r, axis=1) @ np.linalg.norm(z, axis=1))
            G += z.T @ r
            if hessian:
                _gram_blocks(z, A, S, dtype=np.float32 if hessian == "float32" else np.float64, p=p, w=wb)
        parts = [np.array([loss, scale]), reduce(G, K, d, fit_intercept)]
        if hessian:
            parts.append(reduce_hessian(_symmetric(S), K, d, fit_intercept).ravel())
        return np.concatenate(parts)[None, :]

    def loss_block(self, x, y, *, thetas, fit_intercept: bool):
        """``Σ ℓ`` over the given rows at the columns of ``thetas`` (P, T): (1, T), one GEMM for all of them."""
        K, d = self.n_classes, x.shape[1]
        Th = expand(thetas, K, d, fit_intercept)  # (q, K, T)
        T = Th.shape[2]
        z = design(np.asarray(x), fit_intercept=fit_intercept)
        eta = (z @ Th.reshape(z.shape[1], K * T)).reshape(-1, K, T)
        out = np.empty(T)
        for t in range(T):
            l = row_quantities(eta[:, :, t], y)[0]
            out[t] = np.sum(l)
        return out[None, :]

    def row_loss_block(self, x, y, *, theta, fit_intercept: bool):
        """Each row's loss at θ: (m, 1)."""
        z = design(np.asarray(x), fit_intercept=fit_intercept)
        return row_quantities(z @ expand(theta, self.n_classes, x.shape[1], fit_intercept), y)[0][:, None]

    def min_margin_block(self, x, y, w=None, *, theta, fit_intercept: bool):
        """Smallest ``η_y − max_{k≠y} η_k`` over the rows with non-zero weight (+inf for none)."""
        z = design(np.asarray(x), fit_intercept=fit_intercept)
        eta = z @ expand(theta, self.n_classes, x.shape[1], fit_intercept)
        yy = np.asarray(y).astype(np.int64)
        rows = np.arange(eta.shape[0])
        other = eta.copy()
        other[rows, yy] = -np.inf
        margin = eta[rows, yy] - other.max(axis=1)
        if w is not None:
            margin = np.where(np.asarray(w) != 0, margin, np.inf)
        return np.array([[np.min(np.concatenate([margin, [np.inf]]))]])

    def retrain_block(self, x, y, rows, *, thetas, sets, newton, fit_intercept: bool):
        """A block's share of one pass of T leave-set-out retrains: ``[Σ w ℓ (T), Σ w ‖r‖‖z‖ (T),
        Σ w g (P×T, row-major), Hessians (P×P each, for the sets in ``newton``)]``."""
        K, d = self.n_classes, x.shape[1]
        Th = expand(thetas, K, d, fit_intercept)
        q, T = Th.shape[0], Th.shape[2]
        z = design(np.asarray(x), fit_intercept=fit_intercept)
        eta = (z @ Th.reshape(q, K * T)).reshape(-1, K, T)
        keep = np.asarray(keep_mask(rows, sets))
        znorm = np.linalg.norm(z, axis=1)
        loss, scale = np.empty(T), np.empty(T)
        G = np.empty((q, K, T))
        hess = []
        want = set(newton)
        for t in range(T):
            l, p, r, A = row_quantities(eta[:, :, t], y)
            wt = keep[:, t]
            loss[t] = wt @ l
            r = wt[:, None] * r
            scale[t] = np.linalg.norm(r, axis=1) @ znorm
            G[:, :, t] = z.T @ r
            if t in want:
                S = np.zeros((K, K, q, q))
                _gram_blocks(z, A, S, p=p, w=wt)
                hess.append((t, reduce_hessian(_symmetric(S), K, d, fit_intercept).ravel()))
        hess = [h for _, h in sorted(hess, key=lambda th: list(newton).index(th[0]))]
        return np.concatenate([loss, scale, reduce(G, K, d, fit_intercept).ravel(), *hess])[None, :]

    # -- scores -----------------------------------------------------------------------------
    def _leverage_operands(self, linv, d: int, fit_intercept: bool):
        """``(L⁻¹E)_kᵀ`` for each class k, (q, P − k d): the rows of L⁻¹E below k d (above
        them it vanishes, L⁻¹ being lower-triangular), C-contiguous for the products."""
        K = self.n_classes
        linv = np.asarray(linv, dtype=np.float64)
        Q = basis(K)
        ops = []
        for k in range(K):
            top = k * d
            part = linv[top:, top : top + d]  # (P − kd, d)
            if fit_intercept:
                part = np.concatenate([part, (linv[top:, K * d :] @ Q[k])[:, None]], axis=1)
            ops.append(np.ascontiguousarray(part.T))
        return ops

    def _leverage_blocks(self, z, linv, fit_intercept: bool, ops=None):
        """M_i = J_i H⁻¹ J_iᵀ (m, K, K) from ``V_k = z (L⁻¹ E)_kᵀ`` (:meth:`_leverage_operands`,
        given as ``ops`` or made from ``linv``)."""
        K = self.n_classes
        m, q = z.shape
        if ops is None:
            ops = self._leverage_operands(linv, q - int(fit_intercept), fit_intercept)
        d = q - int(fit_intercept)
        V = [z @ op for op in ops]  # (m, P − kd) each
        M = np.empty((m, K, K))
        for k in range(K):
            for l in range(k, K):
                off = (l - k) * d
                M[:, k, l] = M[:, l, k] = np.einsum("ij,ij->i", V[k][:, off:], V[l])
        return M

    def _at_rows(self, x, y, theta, linv, U, fit_intercept: bool, threshold: float):
        """Per row: p, r, A, M, u = J_i U (m, K, M), h, flag, s = (I − A M)⁻¹ r, the
        gradient of the own margin in η (m, K) and the logits η (m, K)."""
        K, d = self.n_classes, x.shape[1]
        q = d + int(fit_intercept)
        U = np.asarray(U, dtype=np.float64)
        nm = U.shape[1]
        both = np.concatenate([expand(theta, K, d, fit_intercept),
                               expand(U, K, d, fit_intercept).reshape(q, K * nm)], axis=1)
        P = linv.shape[0]
        step = max(16, min(SUB_ROWS, LEVERAGE_VALUES // (K * P)))
        ops = self._leverage_operands(linv, d, fit_intercept)
        out = []
        for rows, z in _Rows(x, fit_intercept, step):
            zb = z @ both
            eta, u = zb[:, :K], zb[:, K:].reshape(zb.shape[0], K, nm)
            _, p, r, A = row_quantities(eta, y[rows])
            M = self._leverage_blocks(z, linv, fit_intercept, ops)
            h, flag, s = rescaled(A, M, r, threshold=threshold)
            out.append((p, r, A, M, u, h, flag, s, _others(eta, y[rows])[1], eta))
        if not out:
            e, kk = np.zeros((0, K)), np.zeros((0, K, K))
            return e, e, kk, kk, np.zeros((0, K, nm)), np.zeros(0), np.zeros(0, dtype=bool), e, e, e
        return tuple(np.concatenate(parts) for parts in zip(*out))

    def score_block(self, x, y, *, theta, linv, U, fit_intercept: bool, threshold: float):
        """All per-sample quantities of one block: :data:`SCORE_COLUMNS`, then ``s_IF = u_iᵀ r_i``
        and ``s_RIF = u_iᵀ (I − A_i M_i)⁻¹ r_i`` of each metric (``u_i = J_i H⁻¹ ∇f``).

        Returns
        -------
        (m, 5 + 2M) float64 array.
        """
        p, r, _, M, u, h, flag, s, own, _ = self._at_rows(x, y, theta, linv, U, fit_intercept, threshold)
        yy = np.asarray(y).astype(np.int64)
        rows = np.arange(p.shape[0])
        s_if = np.einsum("ikm,ik->im", u, r)
        s_rif = np.einsum("ikm,ik->im", u, np.where(flag[:, None], 0.0, s))
        s_rif[flag] = np.nan
        self_if = np.einsum("ik,ikl,il->i", own, M, r)
        self_rif = np.einsum("ik,ikl,il->i", own, M, np.where(flag[:, None], 0.0, s))
        self_rif[flag] = np.nan
        cols = [p[rows, yy], h, self_if, self_rif, flag.astype(np.float64)]
        return np.concatenate([np.stack(cols, axis=1), s_if, s_rif], axis=1)

    def set_stats_block(self, x, y, *, theta, linv, fit_intercept: bool, threshold: float, gram: bool):
        """``[Σ_T g_i, Σ_T J_iᵀ (I − A_i M_i)⁻¹ r_i, #flagged in T, (Σ_T J_iᵀ A_i J_i if gram)]``
        over the set's rows given (flagged rows left out of the second sum)."""
        K, d = self.n_classes, x.shape[1]
        x = np.asarray(x)
        y = np.asarray(y)
        P = len(theta)
        _, r, A, _, _, _, flag, s, _, _ = self._at_rows(x, y, theta, linv, np.empty((P, 0)), fit_intercept,
                                                         threshold)
        z = design(x, fit_intercept=fit_intercept)
        s = np.where(flag[:, None], 0.0, s)
        parts = [reduce(z.T @ r, K, d, fit_intercept), reduce(z.T @ s, K, d, fit_intercept),
                 np.array([float(np.sum(flag))])]
        if gram:
            S = np.zeros((K, K, z.shape[1], z.shape[1]))
            _gram_blocks(z, A, S)
            parts.append(reduce_hessian(_symmetric(S), K, d, fit_intercept).ravel())
        return np.concatenate(parts)[None, :]

    # -- metrics ----------------------------------------------------------------------------
    def metric_grad_block(self, x, y, w=None, *, theta, fit_intercept: bool):
        """``[test_loss, test_prediction, ∇ (P), ∇ (P)]``: the summed cross-entropy and the summed
        margin ``η_y − logsumexp_{k≠y} η_k`` of the weighted rows, with their gradients."""
        K, d = self.n_classes, x.shape[1]
        z = design(np.asarray(x), fit_intercept=fit_intercept)
        eta = z @ expand(theta, K, d, fit_intercept)
        loss, _, r, _ = row_quantities(eta, y)
        margin, dm = _others(eta, y)
        if w is not None:
            w = np.asarray(w, dtype=np.float64)
            loss, margin, r, dm = w * loss, w * margin, w[:, None] * r, w[:, None] * dm
        head = np.array([loss.sum(), margin.sum()])
        return np.concatenate([head, reduce(z.T @ r, K, d, fit_intercept),
                               reduce(z.T @ dm, K, d, fit_intercept)])[None, :]

    def metric_values_block(self, x, y, w=None, *, thetas, fit_intercept: bool):
        """Both test metrics at T parameter vectors at once: (1, 2T)."""
        K, d = self.n_classes, x.shape[1]
        Th = expand(thetas, K, d, fit_intercept)
        q, T = Th.shape[0], Th.shape[2]
        z = design(np.asarray(x), fit_intercept=fit_intercept)
        eta = (z @ Th.reshape(q, K * T)).reshape(-1, K, T)
        wt = np.ones(z.shape[0]) if w is None else np.asarray(w, dtype=np.float64)
        loss = [wt @ row_quantities(eta[:, :, t], y)[0] for t in range(T)]
        margin = [wt @ _others(eta[:, :, t], y)[0] for t in range(T)]
        return np.array(loss + margin)[None, :]

    # -- approximate leave-one-out (rifscale tune; docs/design.md §9) ------------------------
    @staticmethod
    def loo_losses(eta, y):
        """(log-loss, 0/1 error, Brier) of logits ``eta`` (m, K) against labels ``y``: the
        cross-entropy, ``argmax η ≠ y`` and ``Σ_k (p_k − [k = y])²``, each (m,) float64."""
        loss, p, r, _ = row_quantities(eta, y)
        wrong = np.argmax(eta, axis=1) != np.asarray(y).astype(np.int64)
        return loss, wrong.astype(np.float64), np.einsum("ik,ik->i", r, r)

    def predict_logits(self, z, theta):
        """The logits of design rows ``z`` (m, q) at θ: (m, K)."""
        K = self.n_classes
        d, fit_intercept = self._dims(len(theta), z.shape[1])
        return np.asarray(z, dtype=np.float64) @ expand(theta, K, d, fit_intercept)

    def loo_rows(self, x, y, *, theta, linv, fit_intercept: bool, threshold: float):
        """Per row: the logits η_i (m, K), the approximate leave-one-out logits
        ``η̃_i = η_i + M_i (I − A_i M_i)⁻¹ r_i`` (m, K) — the logits at θ̂ + Δθ_RIF(i), the exact
        Newton step of removing row i — the leverage h_i and the flag ``1 − h_i < threshold``
        (flagged rows get ``M_i r_i / threshold``: (I − A_i M_i)⁻¹ bounded as in the binary model)."""
        P = linv.shape[0]
        _, r, _, M, _, h, flag, s, _, eta = self._at_rows(x, np.asarray(y), theta, linv, np.empty((P, 0)),
                                                         fit_intercept, threshold)
        s[flag] = r[flag] / threshold
        return eta, eta + np.einsum("ikl,il->ik", M, s), h, flag

    def loo_block(self, x, y, *, theta, linv, fit_intercept: bool, threshold: float):
        """Sums over the block's rows of the approximate leave-one-out and training losses,
        the leverages and the flags: (1, 9), the binary model's ``LOO_COLUMNS``."""
        eta, loo, h, flag = self.loo_rows(x, y, theta=theta, linv=linv, fit_intercept=fit_intercept,
                                          threshold=threshold)
        cols = [np.ones(len(h)), *self.loo_losses(loo, y), *self.loo_losses(eta, y), h, flag.astype(np.float64)]
        return np.array([c.sum() for c in cols])[None, :]

    def heldout_block(self, x, y, *, theta, fit_intercept: bool):
        """Sums over the block's rows of the three losses at θ: (1, 4), ``HELDOUT_COLUMNS``."""
        eta = self.predict_logits(design(np.asarray(x), fit_intercept=fit_intercept), np.asarray(theta, np.float64))
        cols = [np.ones(eta.shape[0]), *self.loo_losses(eta, y)]
        return np.array([c.sum() for c in cols])[None, :]

    # -- rows in memory ---------------------------------------------------------------------
    def jacobians(self, z, *, theta_len: int):
        """J_i (m, K, P) of design rows z (m, q): row k of J_i is ``[e_k ⊗ x_i, z_i[d] Q[k]]``."""
        K = self.n_classes
        m, q = z.shape
        d, fit_intercept = self._dims(theta_len, q)
        J = np.zeros((m, K, theta_len))
        for k in range(K):
            J[:, k, k * d : (k + 1) * d] = z[:, :d]
            if fit_intercept:
                J[:, k, K * d :] = z[:, d : d + 1] * basis(K)[k]
        return J

    def row_terms(self, z, y, *, theta):
        """``(ℓ (m,), G (m, P) rows g_i, B (m K, P))`` with ``Bᵀ B = Σ_i J_iᵀ A_i J_i`` (rows of
        ``A_i^{1/2} J_i``)."""
        K = self.n_classes
        z = np.asarray(z, dtype=np.float64)
        d, fit_intercept = self._dims(len(theta), z.shape[1])
        loss, _, r, A = row_quantities(z @ expand(theta, K, d, fit_intercept), y)
        J = self.jacobians(z, theta_len=len(theta))
        G = np.einsum("ik,ikp->ip", r, J)
        B = (_sqrt_psd(A) @ J).reshape(-1, len(theta))
        return loss, G, B

    def self_influence(self, z, y, *, theta, solve, threshold: float = 0.0):
        """Leverage and the IF/RIF change of each row's own margin under ``solve = H⁻¹``:
        ``(h, own-margin change from IF, from RIF)``, each (m,)."""
        K = self.n_classes
        z = np.asarray(z, dtype=np.float64)
        d, fit_intercept = self._dims(len(theta), z.shape[1])
        eta = z @ expand(theta, K, d, fit_intercept)
        _, _, r, A = row_quantities(eta, y)
        J = self.jacobians(z, theta_len=len(theta))
        m, P = z.shape[0], len(theta)
        HJ = solve(J.reshape(m * K, P).T).T.reshape(m, K, P)
        M = np.einsum("ikp,ilp->ikl", J, HJ)
        h, _, s = rescaled(A, M, r, threshold=threshold)
        own = _others(eta, y)[1]
        return h, np.einsum("ik,ikl,il->i", own, M, r), np.einsum("ik,ikl,il->i", own, M, s)
