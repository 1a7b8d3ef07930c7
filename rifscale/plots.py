"""Plots of one run, for notebooks: leverage histogram, IF against RIF, top-k table.

Each takes a run (:func:`rifscale.open_run`) or an in-memory result
(:func:`rifscale.attribute`), draws on ``ax`` (a new figure if None) and returns the
Axes; :func:`top_table` returns a pandas DataFrame indexed by the corpus ids. They read
the per-sample columns they need into memory (8 bytes per training row each).
"""

from __future__ import annotations

import numpy as np


def _columns(source, names: list[str]) -> dict[str, np.ndarray]:
    if hasattr(source, "array"):  # a Run
        return {c: np.asarray(source.array(f"scores/{c}")[...]) for c in names}
    import dask

    named = {k.removeprefix("scores/"): v for k, v in source.scores.named().items()}
    return dict(zip(names, (np.asarray(v) for v in dask.compute(*[named[c] for c in names]))))


def _axes(ax):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5, 3.5))[1]


def leverage_histogram(source, *, bins: int = 50, ax=None):
    """Histogram of the leverages h_i (log-scaled counts), with the mean marked."""
    h = _columns(source, ["leverage"])["leverage"]
    ax = _axes(ax)
    ax.hist(h, bins=bins, color="#4c72b0")
    ax.set_yscale("log")
    ax.axvline(float(h.mean()), color="k", lw=1, ls="--", label=f"mean {h.mean():.3g}")
    ax.set_xlabel("leverage $h_i$")
    ax.set_ylabel("training samples")
    ax.legend(frameon=False)
    return ax


def if_vs_rif(source, metric: str = "test_loss", *, ax=None):
    """Scatter of s_RIF against s_IF for every sample, coloured by the factor 1/(1 − h_i)
    that separates them, with the line RIF = IF."""
    cols = _columns(source, [f"if_{metric}", f"rif_{metric}", "leverage"])
    s_if, s_rif, h = cols[f"if_{metric}"], cols[f"rif_{metric}"], cols["leverage"]
    ok = np.isfinite(s_rif)
    ax = _axes(ax)
    points = ax.scatter(s_if[ok], s_rif[ok], c=1.0 / (1.0 - h[ok]), s=4, cmap="viridis")
    lim = float(np.max(np.abs(np.concatenate([s_if[ok], s_rif[ok]])))) if ok.any() else 1.0
    ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8, ls="--", label="RIF = IF")
    ax.figure.colorbar(points, ax=ax, label="1 / (1 − h)")
    ax.set_xlabel(f"IF score ({metric})")
    ax.set_ylabel(f"RIF score ({metric})")
    ax.legend(frameon=False)
    return ax


def top_table(source, k: int = 10, by: str = "rif_test_loss"):
    """The ``k`` samples with the largest |``by``| (NaN last), with their leverage, IF and
    RIF scores, indexed by the corpus ids."""
    frame = source.to_dataframe()
    if by not in frame.columns:
        from .errors import ConfigError

        raise ConfigError(f"Unknown column {by!r}; choose from {list(frame.columns)}.")
    from .runs.listing import top_rows

    return top_rows(frame, by, k)
