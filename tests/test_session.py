"""rifscale.Session: a corpus read once, held for several calls, checked against its store,
and released on close."""

from __future__ import annotations

import time

import numpy as np
import pytest

import rifscale
from rifscale.errors import ConfigError, CorpusError
from rifscale.testing import Reference, make_problem, spoil_chunks

from .conftest import rel_err


@pytest.fixture
def corpus(tmp_path):
    pr = make_problem(150, 12, n_test=40, seed=13)
    path = tmp_path / "c.zarr"
    rifscale.ingest(path, train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=40)
    return pr, path


def test_calls_read_nothing_from_the_store_and_match_fresh_runs(corpus):
    pr, path = corpus
    fresh = {lam: rifscale.attribute(path, lam=lam, test_subset="all") for lam in (0.5, 3.0)}
    fresh_scores = {lam: a.rif_scores["test_loss"].compute() for lam, a in fresh.items()}
    with rifscale.Session(path) as s:
        first = s.attribute(lam=0.5, test_subset="all")
        assert spoil_chunks(path) > 0  # from here on any read of the rows would fail to decode
        first_scores = first.rif_scores["test_loss"].compute()
        second = s.attribute(lam=3.0, test_subset="all")
        frame = second.to_dataframe()
        est = s.group_effects(second, {"a": [0, 3, 7]})
        fits = s.retrain(second, {"a": [0, 3, 7]})
    # the first fit starts as a fresh one does: same layout, same sums, same bits
    assert first.theta.tobytes() == fresh[0.5].theta.tobytes()
    np.testing.assert_array_equal(first_scores, fresh_scores[0.5])
    # the second starts from the first's theta: the same optimum to its certified bound, from
    # nearer, with fewer Hessians built
    assert second.fit.certified and rel_err(second.theta, fresh[3.0].theta) <= 1e-8
    assert second.fit.history[0]["grad_norm"] < 0.5 * fresh[3.0].fit.history[0]["grad_norm"]
    assert sum(second.fit.hessian_passes.values()) < sum(fresh[3.0].fit.hessian_passes.values())
    assert second.fit.n_passes <= fresh[3.0].fit.n_passes
    assert rel_err(frame["rif_test_loss"].to_numpy(), fresh_scores[3.0]) <= 1e-7
    assert list(frame.index[:3]) == [0, 1, 2]
    ref = Reference(pr.X, pr.y, lam=3.0)
    assert rel_err(est["a"].delta["ns"], ref.delta_ns(np.array([0, 3, 7]))) <= 1e-8
    assert rel_err(fits["a"].delta, ref.delta_exact(np.array([0, 3, 7]))) <= 1e-7


def test_a_changed_corpus_is_refused_not_reused(corpus, tmp_path):
    pr, path = corpus
    with rifscale.Session(path) as s:
        s.attribute(lam=1.0)
        rifscale.ingest(path, train_X=pr.X, train_y=1 - pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=40,
                        overwrite=True)
        with pytest.raises(CorpusError, match="changed since this session read it"):
            s.attribute(lam=1.0)
    with pytest.raises(ConfigError, match="closed"):
        s.attribute(lam=1.0)


def test_results_of_another_corpus_are_refused(corpus, tmp_path):
    pr, path = corpus
    other = tmp_path / "other.zarr"
    rifscale.ingest(other, train_X=pr.X[:100], train_y=pr.y[:100], test_X=pr.X_test, test_y=pr.y_test)
    res = rifscale.attribute(other, lam=1.0)
    with rifscale.Session(path) as s, pytest.raises(CorpusError, match="another corpus"):
        s.group_effects(res, {"a": [0]})


@pytest.mark.cluster
def test_close_releases_the_held_blocks_on_the_cluster(client, corpus):
    from distributed import futures_of

    pr, path = corpus
    s = rifscale.Session(path, client=client)
    res = s.attribute(lam=1.0)
    keys = {f.key for a in (s.corpus.train.X, s.corpus.train.y, s.corpus.test.X) for f in futures_of(a)}
    assert keys and len(s.layout) and s.layout["persisted"]

    def held(dask_scheduler, keys=keys):
        return sorted(str(k) for k in keys if k in dask_scheduler.tasks)

    assert client.run_on_scheduler(held)
    assert rel_err(res.theta, Reference(pr.X, pr.y, lam=1.0).theta) <= 1e-8
    s.close()
    deadline = time.monotonic() + 10
    while client.run_on_scheduler(held) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.run_on_scheduler(held) == []  # released, although `res` still refers to them
    assert "closed" in repr(s)


def test_the_corpus_fingerprint_is_the_opened_one_also_for_foreign_stores(corpus, tmp_path):
    """The session's check reads metadata only; it must agree with open_corpus, or every
    call on a store rifscale did not write would be refused."""
    import zarr

    from rifscale.corpus.model import open_corpus, corpus_fingerprint

    pr, path = corpus
    assert corpus_fingerprint(path) == open_corpus(path).fingerprint
    foreign = zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    for split, X, y in (("train", pr.X, pr.y), ("test", pr.X_test, pr.y_test)):
        foreign.create_array(f"{split}/X", data=X.astype(np.float32), chunks=(64, 5))
        foreign.create_array(f"{split}/y", data=y.astype(np.int8), chunks=(32,))
    assert corpus_fingerprint(tmp_path / "foreign.zarr") == open_corpus(tmp_path / "foreign.zarr").fingerprint
    with rifscale.Session(tmp_path / "foreign.zarr") as s:
        s.attribute(lam=1.0)


def test_warm_false_gives_the_bits_of_a_fresh_fit(corpus):
    pr, path = corpus
    fresh = rifscale.attribute(path, lam=2.0)
    with rifscale.Session(path) as s:
        s.attribute(lam=0.5)
        again = s.attribute(lam=2.0, warm=False)
    assert again.theta.tobytes() == fresh.theta.tobytes()
