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


def make_softmax_problem(n: int, d: int, n_classes: int, *, n_test: int = 150, seed: int = 0, noise: float = 1.0,
                         dtype=np.float64) -> Problem:
    """Gaussian features with a few heavy rows, labels 0..K−1 drawn from a noisy linear
    softmax model (every class present in the training rows when n ≫ K).

    Class weights have different scales (asymmetric data: a transposed K × K block shows).
    """
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_classes, d)) / np.sqrt(d) * np.linspace(0.5, 2.0, n_classes)[:, None]
    b = np.linspace(-0.5, 0.5, n_classes)
    scale = np.where(rng.random(n + n_test) < 0.05, 3.0, 1.0)[:, None]
    A = rng.normal(size=(n + n_test, d)) * scale
    logits = 1.5 * A @ W.T + b + noise * rng.gumbel(size=(n + n_test, n_classes))
    yy = np.argmax(logits, axis=1).astype(np.int8)
    return Problem(A[:n].astype(dtype), yy[:n], A[n:].astype(dtype), yy[n:])
