"""Seeded logistic-regression problems for tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Problem:
    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def make_problem(n: int, d: int, *, n_test: int = 150, seed: int = 0, noise: float = 1.0, dtype=np.float64) -> Problem:
    """Gaussian features with a few heavy rows, labels from a noisy linear model.

    ``noise`` scales the logits' randomness; with d > n the classes are typically separable,
    so such problems need λ > 0.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d) / np.sqrt(d)
    scale = np.where(rng.random(n + n_test) < 0.05, 3.0, 1.0)[:, None]  # some high-leverage rows
    A = rng.normal(size=(n + n_test, d)) * scale
    logits = 1.5 * A @ w + 0.3 + noise * rng.logistic(size=n + n_test)
    yy = (logits > 0).astype(np.int8)
    return Problem(A[:n].astype(dtype), yy[:n], A[n:].astype(dtype), yy[n:])
