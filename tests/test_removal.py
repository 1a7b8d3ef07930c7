"""Removal-set strategies: exactly the documented sets, reproducible from the seed."""

import sys

import dask.array as da
import numpy as np
import pytest

import rifscale
from rifscale.errors import ConfigError
from rifscale.validation.removal import default_sizes, removal_sets
from rifscale.testing import Reference, make_problem
from rifscale.validation.experiments import accuracy

from .conftest import corpus_of


@pytest.fixture(scope="module")
def train():
    pr = make_problem(500, 6, seed=9)
    return corpus_of(pr, 64).train, pr


def test_default_sizes_span_point_one_to_five_percent():
    s = default_sizes(100_000)
    assert s.size == 40 and s[0] == 100 and s[-1] == 5000 and np.all(np.diff(s) > 0)
    assert default_sizes(1000)[0] == 1 and default_sizes(1000)[-1] == 50


def test_random_sets_are_seeded(train, synchronous):
    tr, _ = train
    a = removal_sets(tr, "random", sizes=[5, 20], seed=3)
    b = removal_sets(tr, "random", sizes=[5, 20], seed=3)
    c = removal_sets(tr, "random", sizes=[5, 20], seed=4)
    assert [s.size for s in a] == [5, 20] and all(np.unique(s.indices).size == s.size for s in a)
    assert all(np.array_equal(x.indices, y.indices) for x, y in zip(a, b))
    assert not np.array_equal(a[1].indices, c[1].indices)
    # (seed, strategy, size) alone fixes a set: asking for other sizes does not change it
    assert np.array_equal(removal_sets(tr, "random", sizes=[20], seed=3)[0].indices, a[1].indices)


def test_feature_cluster_is_the_k_closest_on_one_feature(train, synchronous):
    tr, pr = train
    for s in removal_sets(tr, "feature_cluster", sizes=[7, 30], seed=1):
        j, a = s.meta["feature"], s.meta["anchor"]
        dist = np.abs(pr.X[:, j] - pr.X[a, j])
        assert a in s.indices
        assert dist[s.indices].max() <= np.sort(dist)[s.size - 1] + 1e-15


def test_distance_cluster_is_the_k_nearest_neighbours(train, synchronous):
    tr, pr = train
    for s in removal_sets(tr, "distance_cluster", sizes=[1, 12], seed=2):
        a = s.meta["anchor"]
        dist = ((pr.X - pr.X[a]) ** 2).sum(1)
        np.testing.assert_array_equal(s.indices, np.sort(np.argsort(dist, kind="stable")[: s.size]))


@pytest.mark.parametrize("sign", [1, -1])
def test_top_influence_is_a_random_k_of_the_true_top_2k(train, sign, synchronous):
    tr, _ = train
    scores = np.random.default_rng(0).normal(size=500)
    for s in removal_sets(tr, "top_influence", sizes=[4, 25], seed=5, if_scores=da.from_array(scores, chunks=64), sign=sign):
        top2k = np.argsort(-sign * scores)[: 2 * s.size]
        assert set(s.indices) <= set(top2k) and s.indices.size == s.size
    # and not the argpartition slip: those sets are subsets of the top 2k, never of the bottom
    worst = set(np.argsort(-sign * scores)[-50:])
    assert not set(s.indices) & worst


@pytest.fixture(scope="module")
def blobs():
    """Five well-separated Gaussian blobs of 120 rows: semantic clusters with a known truth."""
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(5, 6)) * 12
    blob = np.repeat(np.arange(5), 120)
    X = centres[blob] + rng.normal(size=(600, 6))
    y = (rng.random(600) < 0.5).astype(np.int8)
    return rifscale.Corpus.from_arrays(X, y, chunk_rows=100).train, X, blob


def test_kmeans_cluster_sets_are_cores_of_one_semantic_cluster_and_seeded(blobs, synchronous):
    tr, X, blob = blobs
    sets = removal_sets(tr, "kmeans_cluster", sizes=[10, 60, 120], seed=7, n_clusters=5)
    for s in sets:
        assert s.indices.size == s.size and np.unique(blob[s.indices]).size == 1  # one true blob
        members = np.flatnonzero(blob == blob[s.indices[0]])
        assert s.meta["cluster_size"] == 120 and s.meta["n_clusters"] == 5
        centre = X[members].mean(axis=0)  # k-means' centre of a separated blob is its mean
        dist = ((X[members] - centre) ** 2).sum(axis=1)
        np.testing.assert_array_equal(s.indices, np.sort(members[np.argsort(dist, kind="stable")[: s.size]]))
    assert np.array_equal(sets[2].indices, np.flatnonzero(blob == blob[sets[2].indices[0]]))  # k = 120: all of it
    again = removal_sets(tr, "kmeans_cluster", sizes=[60], seed=7, n_clusters=5)
    assert np.array_equal(again[0].indices, sets[1].indices)  # (seed, size) fixes the set
    others = [removal_sets(tr, "kmeans_cluster", sizes=[60], seed=k, n_clusters=5)[0].meta["cluster"]
              for k in range(8, 11)]
    assert len(set(others)) > 1  # the seed chooses among the clusters


def test_kmeans_cluster_refusals(blobs, monkeypatch):
    tr, _, _ = blobs
    with pytest.raises(ConfigError, match=r"no cluster of the 5 holds 200 rows \(the largest holds 120\)"):
        removal_sets(tr, "kmeans_cluster", sizes=[200], n_clusters=5)
    with pytest.raises(ConfigError, match=r"n_clusters must be an integer in \[2, n = 600\]"):
        removal_sets(tr, "kmeans_cluster", sizes=[3], n_clusters=1)
    monkeypatch.setitem(sys.modules, "dask_ml.cluster", None)  # as if dask-ml were not installed
    with pytest.raises(ConfigError, match=r"pip install 'rifscale\[ml\]'"):
        removal_sets(tr, "kmeans_cluster", sizes=[3])


def test_kmeans_cluster_sets_are_validated_by_exact_retrains(synchronous):
    pr = make_problem(400, 5, seed=12)
    ref = Reference(pr.X, pr.y, lam=0.3)
    res = rifscale.attribute(corpus_of(pr, 64), lam=0.3, test_subset="all")
    acc = accuracy(res, strategies=("kmeans_cluster",), sizes=[4, 20], seed=2, n_clusters=4)
    assert [s.strategy for s in acc.sets] == ["kmeans_cluster"] * 2 and all(r.converged for r in acc.retrains.values())
    for s in acc.sets:
        assert np.max(np.abs(acc.retrains[s.name].delta - ref.delta_exact(s.indices))) <= 1e-8 * np.max(
            np.abs(ref.delta_exact(s.indices)))


def test_bad_requests(train):
    tr, _ = train
    with pytest.raises(ConfigError, match="Unknown removal strategy"):
        removal_sets(tr, "nearest", sizes=[3])
    with pytest.raises(ConfigError, match="needs the IF scores"):
        removal_sets(tr, "top_influence", sizes=[3])
    with pytest.raises(ConfigError, match=r"sizes must be in \[1, 499\]"):
        removal_sets(tr, "random", sizes=[0])
    with pytest.raises(ConfigError, match=r"sizes must be in \[1, 499\]"):
        removal_sets(tr, "distance_cluster", sizes=[500])  # removing every row leaves nothing to fit
    with pytest.raises(ConfigError, match=r"at most n/2 = 250 for top_influence"):
        removal_sets(tr, "top_influence", sizes=[251], if_scores=da.zeros(500, chunks=64))
