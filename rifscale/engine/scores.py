"""The per-sample scores pass: one lazy pass over the training row chunks.

For every training row: p, r, α, leverage h, the self-influence on its own logit (IF and
RIF), a flag for ``1 − h < threshold``, and for each metric ``s_IF`` and ``s_RIF``
(the model family's ``score_block`` has the formulas; :mod:`rifscale.engine.kernels.logistic` for the binary model). The result is a lazy
(n, 7 + 2M) Dask array aligned to the corpus row chunks; building it computes nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import dask.array as da

from ._blocks import row_map
from .factor import broadcast
from ..corpus.model import Split
from .kernels.logistic import SCORE_COLUMNS
from .model import FittedModel


@dataclass(frozen=True)
class Scores:
    """Lazy per-sample score columns of the rows ``inputs`` = ``(X, y)``: block i of
    :attr:`table` is ``kernel(X_i, y_i, **kwargs)`` (``kwargs`` may hold futures, such as the
    broadcast factor, passed as task arguments), so a writer may compute and store a block
    in one task; every property shares one graph."""

    metrics: tuple[str, ...]
    kernel: Callable
    inputs: tuple
    kwargs: dict
    columns: tuple[str, ...] = SCORE_COLUMNS  # the family's per-sample columns (``score_columns``)

    @functools.cached_property
    def table(self) -> da.Array:
        """The lazy (n, columns + 2 metrics) table, aligned to the rows' blocks."""
        return row_map(self.kernel, *self.inputs, width=len(self.columns) + 2 * len(self.metrics), **self.kwargs)

    def column(self, name: str) -> da.Array:
        if name not in self.columns:
            raise KeyError(f"this model's scores have no column {name!r}; they have {list(self.columns)}")
        return self.table[:, self.columns.index(name)]

    @property
    def prob(self) -> da.Array:
        return self.column("prob")

    @property
    def residual(self) -> da.Array:
        return self.column("residual")

    @property
    def alpha(self) -> da.Array:
        return self.column("alpha")

    @property
    def leverage(self) -> da.Array:
        return self.column("leverage")

    @property
    def self_if(self) -> da.Array:
        return self.column("self_if")

    @property
    def self_rif(self) -> da.Array:
        return self.column("self_rif")

    @property
    def flags(self) -> da.Array:
        return self.column("flag") > 0.5

    @property
    def if_scores(self) -> dict[str, da.Array]:
        base = len(self.columns)
        return {m: self.table[:, base + k] for k, m in enumerate(self.metrics)}

    @property
    def rif_scores(self) -> dict[str, da.Array]:
        base = len(self.columns) + len(self.metrics)
        return {m: self.table[:, base + k] for k, m in enumerate(self.metrics)}

    def layout(self) -> list[tuple[str, int, str]]:
        """``(run-group name, column of the table, dtype)`` of every stored score column, in
        the order of :meth:`named` (flags are stored as booleans)."""
        base = len(self.columns)
        out = [(f"scores/{name if name != 'flag' else 'flags'}", k, "bool" if name == "flag" else "float64")
               for k, name in enumerate(self.columns)]
        out += [(f"scores/if_{m}", base + k, "float64") for k, m in enumerate(self.metrics)]
        out += [(f"scores/rif_{m}", base + len(self.metrics) + k, "float64") for k, m in enumerate(self.metrics)]
        return out

    def named(self) -> dict[str, da.Array]:
        """Every output array by its run-group name (see the README)."""
        out = {"scores/flags" if n == "flag" else f"scores/{n}": self.flags if n == "flag" else self.column(n)
               for n in self.columns}
        out.update({f"scores/if_{m}": a for m, a in self.if_scores.items()})
        out.update({f"scores/rif_{m}": a for m, a in self.rif_scores.items()})
        return out


def score_table(train: Split, model: FittedModel, *, client=None) -> Scores:
    """Build (lazily) the scores of every training row; the factor is broadcast once."""
    kwargs = dict(theta=model.theta, linv=broadcast(model.factor.linv, client=client), U=model.U,
                  fit_intercept=model.fit_intercept, threshold=model.leverage_threshold)
    return Scores(metrics=model.metrics, kernel=model.family.score_block, inputs=(train.X, train.y), kwargs=kwargs,
                  columns=tuple(model.family.score_columns))
