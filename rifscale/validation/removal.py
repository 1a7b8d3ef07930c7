"""Removal-set strategies for the validation experiments (docs/design.md §4.1).

Sizes default to 40 values from 0.1 % to 5 % of n. One set per size per strategy, each
reproducible from ``(seed, strategy, size)``:

- ``random``: k rows uniformly without replacement.
- ``feature_cluster``: a random feature j (never the intercept) and a random anchor row a;
  the k rows with the smallest ``|x_ij − x_aj|``.
- ``distance_cluster``: the k nearest neighbours (L2 in feature space) of a random anchor
  (the anchor itself, at distance 0, is among them unless it has exact duplicates).
- ``top_influence``: for a metric and a sign s, a random k of the **true** top-2k rows by
  ``s · s_IF`` (the paper's code meant this but its ``argpartition`` picked another set).
- ``kmeans_cluster``: a semantic cluster of the embedding space. ``dask_ml.cluster.KMeans``
  (``n_clusters``, default 10, ``random_state=seed``) is fitted once; per size k, a random
  cluster holding at least k rows, and its k rows nearest the cluster's centre (the whole
  cluster when it holds exactly k). Needs dask-ml (``pip install 'rifscale[ml]'``), so it
  is not among the :data:`DEFAULT_STRATEGIES`.

Distances and rankings are computed over the row chunks with ``da.argtopk``: nothing of
size n × d (or n × n) is gathered, and all sizes of a strategy share one read of X.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import dask
import dask.array as da
import numpy as np

from ..engine._blocks import row_map
from ..errors import ConfigError
from ..corpus.model import Split
from ..engine.kernels import to_numpy

Strategy = Literal["random", "feature_cluster", "distance_cluster", "top_influence", "kmeans_cluster"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
#: What validation runs unless told otherwise: the paper's four (kmeans_cluster needs dask-ml).
DEFAULT_STRATEGIES: tuple[Strategy, ...] = STRATEGIES[:4]
#: Clusters of kmeans_cluster: with the default sizes (up to 5 % of n) a cluster holds on
#: average twice the largest set.
N_CLUSTERS = 10


@dataclass(frozen=True)
class RemovalSet:
    """One removal set: sorted row indices and how they were chosen."""

    name: str
    strategy: str
    size: int
    indices: np.ndarray = field(repr=False)
    meta: dict = field(default_factory=dict)


def default_sizes(n: int, count: int = 40, lo: float = 0.001, hi: float = 0.05) -> np.ndarray:
    """``count`` sizes from ``lo·n`` to ``hi·n`` (rounded, at least 1, distinct)."""
    return np.unique(np.clip(np.round(np.linspace(lo * n, hi * n, count)), 1, n).astype(np.int64))


def _rng(seed: int, strategy: str, size: int) -> np.random.Generator:
    return np.random.default_rng([seed, STRATEGIES.index(strategy), size])


def _sq_dist_block(x, *, anchors):
    """(m, K) squared L2 distances from each row to each anchor row (kernel)."""
    from ..engine.kernels import array_namespace

    xp = array_namespace(x)
    x = xp.asarray(x, dtype=xp.float64)
    a = xp.asarray(anchors, dtype=xp.float64)
    return (x * x).sum(axis=1)[:, None] - 2.0 * x @ a.T + (a * a).sum(axis=1)[None, :]


def _abs_diff_block(x, *, features, values):
    """(m, K) ``|x[:, features[k]] − values[k]|`` (kernel)."""
    from ..engine.kernels import array_namespace

    xp = array_namespace(x)
    return xp.abs(xp.asarray(x, dtype=xp.float64)[:, xp.asarray(features)] - xp.asarray(values)[None, :])


def _smallest(D: da.Array, sizes) -> list[np.ndarray]:
    """Row indices of the ``sizes[k]`` smallest entries of column k, all in one compute."""
    picks = dask.compute(*[da.argtopk(-D[:, k], int(s)) for k, s in enumerate(sizes)])
    return [np.sort(to_numpy(p)).astype(np.int64) for p in picks]


def removal_sets(
    train: Split,
    strategy: Strategy,
    *,
    sizes=None,
    seed: int = 0,
    if_scores: da.Array | None = None,
    sign: int = 1,
    label: str = "",
    n_clusters: int = N_CLUSTERS,
) -> list[RemovalSet]:
    """One removal set per size for ``strategy``.

    Parameters
    ----------
    train : the training split
    sizes : sizes k (default :func:`default_sizes`)
    if_scores : (n,) IF scores of one metric, needed by ``top_influence``
    sign : +1 or −1: ``top_influence`` ranks by ``sign · s_IF``
    label : added to the set names (e.g. the metric of ``top_influence``)
    n_clusters : clusters of ``kmeans_cluster``
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"Unknown removal strategy {strategy!r}; choose from {STRATEGIES}.")
    n, d = train.n, train.d
    sizes = default_sizes(n) if sizes is None else np.asarray(sizes, dtype=np.int64)
    if sizes.size == 0 or sizes.min() < 1 or sizes.max() > (n // 2 if strategy == "top_influence" else n - 1):
        raise ConfigError(
            f"Removal-set sizes must be in [1, {n - 1}] (at most n/2 = {n // 2} for top_influence: it draws "
            f"from the top 2k); got {sizes.tolist() or 'none'}."
        )
    rngs = [_rng(seed, strategy, int(k)) for k in sizes]
    meta = [{} for _ in sizes]
    if strategy == "random":
        chosen = [np.sort(r.choice(n, int(k), replace=False)).astype(np.int64) for r, k in zip(rngs, sizes, strict=True)]
    elif strategy == "feature_cluster":
        feats = np.array([r.integers(d) for r in rngs])
        anchors = np.array([r.integers(n) for r in rngs])
        values = np.array([to_numpy(v) for v in dask.compute(*[train.X[a, j] for a, j in zip(anchors, feats, strict=True)])], dtype=np.float64)
        D = row_map(_abs_diff_block, train.X, width=len(sizes), features=feats, values=values)
        chosen = _smallest(D, sizes)
        meta = [{"feature": int(j), "anchor": int(a)} for j, a in zip(feats, anchors, strict=True)]
    elif strategy == "distance_cluster":
        anchors = np.array([r.integers(n) for r in rngs])
        rows = to_numpy(train.X[np.sort(anchors)].compute()).astype(np.float64)
        rows = rows[np.searchsorted(np.sort(anchors), anchors)]
        D = row_map(_sq_dist_block, train.X, width=len(sizes), anchors=rows)
        chosen = _smallest(D, sizes)
        meta = [{"anchor": int(a)} for a in anchors]
    elif strategy == "kmeans_cluster":
        labels, centres = _kmeans(train.X, n_clusters, seed)
        counts = np.bincount(labels, minlength=n_clusters)
        if counts.max() < sizes.max():
            raise ConfigError(
                f"kmeans_cluster: no cluster of the {n_clusters} holds {int(sizes.max())} rows (the largest holds "
                f"{int(counts.max())}); use fewer clusters (n_clusters) or smaller sizes."
            )
        js = np.array([r.choice(np.flatnonzero(counts >= k)) for r, k in zip(rngs, sizes, strict=True)])
        D = row_map(_sq_dist_block, train.X, width=len(sizes), anchors=centres[js])
        member = da.from_array(labels, chunks=train.X.chunks[0])[:, None] == js[None, :]
        chosen = _smallest(da.where(member, D, np.inf), sizes)
        meta = [{"cluster": int(j), "n_clusters": n_clusters, "cluster_size": int(counts[j])} for j in js]
    else:
        if if_scores is None:
            raise ConfigError("The top_influence strategy needs the IF scores of a metric (if_scores=...).")
        if sign not in (1, -1):
            raise ConfigError(f"sign must be +1 or -1; got {sign!r}.")
        tops = dask.compute(*[da.argtopk(sign * if_scores, 2 * int(k)) for k in sizes])
        chosen = [
            np.sort(r.choice(to_numpy(t).astype(np.int64), int(k), replace=False))
            for r, t, k in zip(rngs, tops, sizes, strict=True)
        ]
        meta = [{"sign": sign} for _ in sizes]
    tag = f"{strategy}{label}"
    return [
        RemovalSet(name=f"{tag}-{int(k)}", strategy=strategy, size=int(k), indices=idx, meta=m)
        for k, idx, m in zip(sizes, chosen, meta, strict=True)
    ]


def _kmeans(X: da.Array, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,), centres (K, d) float64) of dask-ml's KMeans, seeded."""
    try:
        from dask_ml.cluster import KMeans
    except ImportError:
        raise ConfigError("The kmeans_cluster strategy clusters with dask-ml, which is not installed: "
                          "pip install 'rifscale[ml]' (or dask-ml).") from None
    if isinstance(n_clusters, bool) or int(n_clusters) != n_clusters or not 2 <= n_clusters <= X.shape[0]:
        raise ConfigError(f"n_clusters must be an integer in [2, n = {X.shape[0]}]; got {n_clusters!r}.")
    km = KMeans(n_clusters=int(n_clusters), random_state=seed).fit(X)
    labels, = dask.compute(km.labels_)
    return to_numpy(labels).astype(np.int64), np.asarray(to_numpy(km.cluster_centers_), dtype=np.float64)
