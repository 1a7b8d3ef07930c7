"""Removal-set strategies: exactly the documented sets, reproducible from the seed."""

import dask.array as da
import numpy as np
import pytest

from rifscale.errors import ConfigError
from rifscale.removal import default_sizes, removal_sets
from rifscale.testing import make_problem

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
