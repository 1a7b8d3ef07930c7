"""One BLAS thread per process while rifscale computes, but for the driver's wide algebra.

Every chunk kernel is a BLAS product and dask's threaded scheduler runs a task per core;
with BLAS's own thread per core on top, the cores are oversubscribed (measured: a
``rifscale.tune`` at 1e5 x 256 on 2 cores took 22 s from Python against 8.8 s from the
CLI, whose ``connect`` already set the limit). The driver's small algebra stays on one
thread too: OpenBLAS's idle threads spin after each call, on the cores the tasks (or local
worker processes) need. The public entry points that compute set it while they run, and
only then; algebra on matrices of at least WIDE_BLAS_P columns gets the threads back.
"""

import threading

import dask
import pytest
from threadpoolctl import threadpool_info

import rifscale
from rifscale import pipeline
from rifscale.cluster import WIDE_BLAS_P, blas_per_task, wide_blas

from .conftest import corpus_of
from rifscale.testing import make_problem


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def _threads_in_a_task():
    return dask.delayed(_blas_threads)().compute()


def test_the_limit_holds_in_tasks_and_the_driver_but_wide_algebra_gets_the_threads_back():
    before = _blas_threads()
    assert before  # the premise: NumPy's BLAS is seen
    wide = []
    with dask.config.set(scheduler="threads", num_workers=2), blas_per_task():
        assert set(_threads_in_a_task()) == {1}
        assert set(_blas_threads()) == {1}  # the driver too: idle OpenBLAS threads spin after each call
        with wide_blas(WIDE_BLAS_P):
            assert _blas_threads() == before  # a P x P Cholesky wide enough to use them
        with wide_blas(WIDE_BLAS_P - 1):
            assert set(_blas_threads()) == {1}

        def in_task():
            with wide_blas(10 * WIDE_BLAS_P):  # never in a task: the other tasks hold the cores
                wide.append(_blas_threads())

        dask.delayed(in_task)().compute()
        with blas_per_task():  # nested: changes nothing, and lifting still works inside
            with wide_blas(WIDE_BLAS_P):
                assert _blas_threads() == before
        assert set(_blas_threads()) == {1}
    assert wide and set(wide[0]) == {1}
    with dask.config.set(scheduler="threads", num_workers=2):
        assert _threads_in_a_task() == before  # outside the block: as it was
        with wide_blas(10 * WIDE_BLAS_P):
            assert _blas_threads() == before
    with dask.config.set(scheduler="synchronous"), blas_per_task():
        assert _threads_in_a_task() == before  # one task at a time: BLAS keeps its threads
    with dask.config.set(scheduler="threads", num_workers=1), blas_per_task():
        assert _threads_in_a_task() == before and _blas_threads() == before
    assert _blas_threads() == before


def test_with_a_client_the_driver_holds_one_thread_even_on_the_synchronous_setting(client):
    """Worker processes on this machine: the driver's idle BLAS threads would spin on their
    cores (measured: 0.9 s of CPU per 2e5 x 384 attribute on 2 workers), whatever dask's
    local scheduler setting says."""
    before = _blas_threads()
    with dask.config.set(scheduler="synchronous"), blas_per_task():
        assert set(_blas_threads()) == {1}
        with wide_blas(WIDE_BLAS_P):
            assert _blas_threads() == before
    assert _blas_threads() == before


@pytest.mark.parametrize("entry", ["attribute", "group_effects", "retrain", "tune"])
def test_public_entry_points_compute_with_one_blas_thread(entry, monkeypatch):
    """Bug: an entry point without the limit (the API then runs 2-3x slower than the CLI);
    a driver whose small algebra runs on every thread (its idle threads then spin on the
    cores the tasks need); or one whose wide algebra does not get them back (a softmax
    model's P × P Cholesky and eigenvalues on one core: the ten-class demo fit took 5.3 s
    instead of 3.5 s). Here the Hessian's Cholesky counts as wide (WIDE_BLAS_P = 3)."""
    from dask.callbacks import Callback

    from rifscale import cluster
    from rifscale.engine import newton

    pr = make_problem(120, 5, seed=3)
    corpus = corpus_of(pr, 40)
    result = rifscale.attribute(corpus, lam=1.0)
    before = _blas_threads()
    in_tasks, in_driver, in_cholesky, driver = [], [], [], threading.get_ident()
    real_fit, real_cho = pipeline.fit, newton.scipy.linalg.cho_factor

    def fit(*args, **kwargs):
        in_driver.append(_blas_threads())
        return real_fit(*args, **kwargs)

    def cho_factor(*args, **kwargs):
        if threading.get_ident() == driver:  # (a task's Cholesky stays on its one thread)
            in_cholesky.append(_blas_threads())
        return real_cho(*args, **kwargs)

    monkeypatch.setattr(pipeline, "fit", fit)
    monkeypatch.setattr(cluster, "WIDE_BLAS_P", 3)
    monkeypatch.setattr(newton.scipy.linalg, "cho_factor", cho_factor)
    with dask.config.set(scheduler="threads", num_workers=2), \
            Callback(pretask=lambda key, dsk, state: in_tasks.append(set(_blas_threads()))):
        if entry == "attribute":
            rifscale.attribute(corpus, lam=1.0)
        elif entry == "group_effects":
            rifscale.group_effects(result, {"a": [0, 1, 2]})
        elif entry == "retrain":
            rifscale.retrain(result, {"a": [0, 1, 2]})
        else:
            rifscale.tune(corpus, [0.5, 2.0], exact_loo=0)
    assert in_tasks and all(s == {1} for s in in_tasks), in_tasks
    assert all(set(threads) == {1} for threads in in_driver), (in_driver, before)
    if entry in ("attribute", "tune"):  # they fit: Newton directions by Cholesky, in the driver
        assert in_cholesky and all(threads == before for threads in in_cholesky), (in_cholesky, before)
    assert _blas_threads() == before
