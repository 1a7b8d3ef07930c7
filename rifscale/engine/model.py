"""The fitted state every downstream stage needs: θ̂, the factor of H, and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .factor import Factor
from .family import BINARY, ModelFamily


@dataclass(frozen=True)
class MetricAtOptimum:
    """f(θ̂) and ∇f(θ̂) of each test metric over S."""

    names: tuple[str, ...]
    values: np.ndarray  # (M,)
    grads: np.ndarray  # (p, M)


@dataclass(frozen=True)
class FittedModel:
    """θ̂ with its factored Hessian and the test metrics at θ̂.

    ``U[:, k] = H⁻¹ ∇f_k(θ̂)`` so that ``s_IF(i) = r_i z_iᵀ U[:, k]``.
    """

    theta: np.ndarray
    lam: float
    fit_intercept: bool
    factor: Factor
    test_subset: np.ndarray
    metric: MetricAtOptimum
    leverage_threshold: float
    family: ModelFamily = BINARY  # the model (rifscale.engine.family)

    @property
    def p(self) -> int:
        return self.theta.shape[0]

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.metric.names

    @property
    def U(self) -> np.ndarray:
        return self.factor.solve(self.metric.grads)
