"""Pure per-block maths: no Dask here.

Every function takes plain arrays (NumPy or CuPy; the namespace is asked of the input)
and explicit keyword-only parameters, and returns plain arrays. :mod:`.products` holds the
family-independent products; :mod:`.logistic` every formula of the binary logistic model
(the first model family, :mod:`rifscale.engine.family`). Orchestration in
``rifscale.engine.fit``, ``rifscale.engine.scores`` and ``rifscale.estimates.groups`` wires
them into Dask graphs.
"""

from ..._namespace import array_namespace, to_numpy
from .logistic import (BINARY, SCORE_COLUMNS, log_loss, loss_block, metric_grad_block, metric_values_block,
                       min_margin_block, newton_block, residual, retrain_block, row_loss_block, row_terms, score_block,
                       self_influence, set_stats_block, sigmoid, sigmoid_and_weight)
from .products import design, design_products, keep_mask, max_row_norm_block

__all__ = [
    "BINARY",
    "SCORE_COLUMNS",
    "array_namespace",
    "design",
    "design_products",
    "keep_mask",
    "log_loss",
    "loss_block",
    "max_row_norm_block",
    "metric_grad_block",
    "metric_values_block",
    "min_margin_block",
    "newton_block",
    "residual",
    "retrain_block",
    "row_loss_block",
    "row_terms",
    "score_block",
    "self_influence",
    "set_stats_block",
    "sigmoid",
    "sigmoid_and_weight",
    "to_numpy",
]
