"""Shared fixtures: seeded problems, their dense references, and one real LocalCluster."""

from __future__ import annotations

import dask
import numpy as np
import pytest

import rifscale
from rifscale.testing import Reference, make_problem


@pytest.fixture
def synchronous():
    """Run dask graphs in this thread (fast, deterministic) for tests that need no cluster."""
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture(scope="session")
def cluster():
    """A real multi-process LocalCluster on 127.0.0.1, shared by the cluster tests."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


@pytest.fixture
def client(cluster):
    from distributed import Client

    with Client(cluster) as c:
        yield c


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: a relative error that ignores the size of single entries."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="session")
def small_problem():
    pr = make_problem(120, 30, seed=3)
    return pr, Reference(pr.X, pr.y, lam=0.5)


def corpus_of(pr, chunk_rows):
    return rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test, pr.y_test, chunk_rows=chunk_rows)
