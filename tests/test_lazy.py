"""Laziness (building graphs computes nothing) and a driver whose memory does not grow with n."""

import tracemalloc

import pytest
from dask.callbacks import Callback

import rifscale
from rifscale.engine.fit import fit
from rifscale.engine.hessian import max_row_norm
from rifscale.engine.scores import score_table
from rifscale.testing import make_problem

from .conftest import corpus_of


class CountComputes(Callback):
    """Counts graph executions on dask's local schedulers (xarray's raise_if_dask_computes idea)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def _start(self, dsk):
        self.count += 1


def test_building_score_graph_computes_nothing(small_problem, synchronous):
    pr, _ = small_problem
    res = rifscale.attribute(corpus_of(pr, 16), lam=0.5)
    with CountComputes() as counter:
        scores = score_table(res.corpus.train, res.model)
        named = scores.named()
        total = sum(a.sum() for a in named.values() if a.dtype != bool)
        _ = res.rif_scores["test_loss"] / res.if_scores["test_loss"]
    assert counter.count == 0
    with CountComputes() as counter:
        total.compute()
    assert counter.count == 1


def test_fit_computes_one_graph_per_pass_and_no_more(small_problem, synchronous):
    pr, _ = small_problem
    c = corpus_of(pr, 16)
    with CountComputes() as counter:
        f = fit(c.train.X, c.train.y, lam=0.5)
    # every full Newton step accepted on this problem, the first pass at the start; the
    # certificate's radius comes with that first pass (not a light pass of its own)
    assert f.n_passes == f.n_iter + 1
    assert f.row_norm_max == max_row_norm(c.train.X, fit_intercept=True)
    assert counter.count == f.n_passes


def _driver_peak(client, path, out) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    res = rifscale.attribute(path, lam=1.0, client=client)
    res.to_zarr(out)
    rifscale.group_effects(res, {"a": list(range(0, 2000, 7)), "b": [1, 2, 3]}, client=client)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


@pytest.mark.cluster
def test_driver_memory_does_not_grow_with_n(client, tmp_path):
    d = 50
    peaks = {}
    for n in (20_000, 160_000):
        pr = make_problem(n, d, n_test=2_000, seed=n)
        path = tmp_path / f"c{n}.zarr"
        # same number of chunks (8) for both: the graph is the same size, only the data grow
        rifscale.ingest(path, train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=n // 8)
        del pr
        peaks[n] = _driver_peak(client, path, tmp_path / f"run{n}")
    small, large = peaks[20_000], peaks[160_000]
    data_bytes = 160_000 * d * 8
    # 8x the rows in the same number of chunks: the driver's peak allocation stays flat
    # (graph metadata grows with the number of chunks only) and far below one copy of X
    assert large < 1.5 * small + 2**20, peaks
    assert large < data_bytes / 4, peaks
