"""One BLAS thread per dask task when the Python API computes on dask's local threads.

Every chunk kernel is a BLAS product and dask's threaded scheduler runs a task per core;
with BLAS's own thread per core on top, the cores are oversubscribed (measured: a
``rifscale.tune`` at 1e5 x 256 on 2 cores took 22 s from Python against 8.8 s from the
CLI, whose ``connect`` already set the limit). The public entry points that compute set it
while they run, and only then.
"""

import dask
import pytest
from threadpoolctl import threadpool_info

import rifscale
from rifscale import pipeline
from rifscale.cluster import blas_per_task

from .conftest import corpus_of
from rifscale.testing import make_problem


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def _threads_in_a_task():
    return dask.delayed(_blas_threads)().compute()


def test_the_limit_holds_in_tasks_on_local_threads_only():
    before = _blas_threads()
    assert before  # the premise: NumPy's BLAS is seen
    with dask.config.set(scheduler="threads", num_workers=2), blas_per_task():
        assert set(_threads_in_a_task()) == {1}
        assert _blas_threads() == before  # between computes: the driver keeps its threads
    with dask.config.set(scheduler="threads", num_workers=2):
        assert _threads_in_a_task() == before  # outside the block: as it was
    with dask.config.set(scheduler="synchronous"), blas_per_task():
        assert _threads_in_a_task() == before  # one task at a time: BLAS keeps its threads
    with dask.config.set(scheduler="threads", num_workers=1), blas_per_task():
        assert _threads_in_a_task() == before


@pytest.mark.parametrize("entry", ["attribute", "group_effects", "retrain", "tune"])
def test_public_entry_points_compute_with_one_blas_thread_per_task(entry, monkeypatch):
    """Bug: an entry point without the limit (the API then runs 2-3x slower than the CLI),
    or one that holds it between computes too (the driver's Cholesky and eigenvalues of a
    softmax model's P × P Hessian then run on one core: the ten-class demo fit took 5.3 s
    instead of 3.5 s). Every task starts under the limit; the driver's fit loop, between
    computes, runs without it."""
    from dask.callbacks import Callback

    pr = make_problem(120, 5, seed=3)
    corpus = corpus_of(pr, 40)
    result = rifscale.attribute(corpus, lam=1.0)
    before = _blas_threads()
    in_tasks, in_driver = [], []
    real_fit = pipeline.fit

    def fit(*args, **kwargs):
        in_driver.append(_blas_threads())
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(pipeline, "fit", fit)
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
    assert all(threads == before for threads in in_driver), (in_driver, before)
    assert _blas_threads() == before
