"""Pure per-block maths: no Dask here.

Every function takes plain arrays (NumPy or CuPy; the namespace is asked of the input)
and explicit keyword-only parameters, and returns plain arrays. Orchestration in
``rifscale.engine.fit``, ``rifscale.engine.scores`` and ``rifscale.estimates.groups`` wires them into Dask graphs.
"""

from ..._namespace import array_namespace, to_numpy
from .logistic import (design, log_loss, keep_mask, loss_block, max_row_norm_block, min_margin_block, newton_block,
    residual, retrain_block, row_loss_block, sigmoid, sigmoid_and_weight)
from .scores import metric_grad_block, metric_values_block, score_block, set_stats_block

__all__ = [
    "array_namespace",
    "to_numpy",
    "design",
    "log_loss",
    "keep_mask",
    "loss_block",
    "metric_grad_block",
    "metric_values_block",
    "max_row_norm_block",
    "min_margin_block",
    "newton_block",
    "residual",
    "retrain_block",
    "row_loss_block",
    "score_block",
    "set_stats_block",
    "sigmoid",
    "sigmoid_and_weight",
]
