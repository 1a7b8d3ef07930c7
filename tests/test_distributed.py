"""Passes over row blocks on real workers: every block summed exactly once, in one fixed
order, one task per worker thread on held blocks, the same bits in every execution mode."""

from __future__ import annotations

import logging
import subprocess
import sys

import dask
import dask.array as da
import dask.threaded
import numpy as np
import pytest

import rifscale
from rifscale.engine._blocks import _held_blocks, block_sum, group_ranges, persist_rows, reduce_blocks
from rifscale.testing import Reference, make_problem

from .conftest import rel_err

pytestmark = pytest.mark.cluster

#: 7 blocks of uneven sizes: they do not divide evenly among 2 workers
CHUNKS = (13, 20, 20, 7, 20, 20, 11)


def _count_block(x, y, *, row_start, scale):
    """[1, row_start, rows, scale * Σx, Σy]: sums to [blocks, Σ starts, n, scale Σ X, Σ y]."""
    return np.array([[1.0, row_start, x.shape[0], scale * x.sum(), y.sum()]])


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((sum(CHUNKS), 3))
    y = rng.integers(0, 2, sum(CHUNKS)).astype(float)
    return X, y


def _expected(X, y, scale):
    starts = np.concatenate([[0], np.cumsum(CHUNKS)[:-1]])
    return np.array([len(CHUNKS), starts.sum(), X.shape[0], scale * X.sum(), y.sum()])


def test_group_ranges_cover_every_block_once():
    for nblocks in range(1, 12):
        for groups in range(1, 6):
            ranges = group_ranges(nblocks, groups)
            covered = [i for a, b in ranges for i in range(a, b)]
            assert covered == list(range(nblocks))
            sizes = [b - a for a, b in ranges]
            assert len(ranges) == min(groups, nblocks) and max(sizes) - min(sizes) <= 1


def test_every_block_is_summed_once_in_every_mode(client, arrays):
    X, y = arrays
    Xd, yd = da.from_array(X, chunks=(CHUNKS, 3)), da.from_array(y, chunks=(CHUNKS,))
    want = _expected(X, y, 2.0)
    kw = dict(width=5, row_start=True, scale=2.0)
    with dask.config.set(scheduler="threads", num_workers=2):
        threads = reduce_blocks(_count_block, Xd, yd, client=None, **kw)
    lazy = reduce_blocks(_count_block, Xd, yd, client=client, **kw)
    Xh, yh = persist_rows([Xd, yd], client)
    assert _held_blocks(Xh, yh) is not None
    held = reduce_blocks(_count_block, Xh, yh, client=client, **kw)
    for got in (threads, lazy, held):
        np.testing.assert_allclose(got, want, rtol=1e-13)
    assert block_sum(_count_block, Xh, yh, client=client, **kw).compute().tolist() == held.tolist()


def _sum_and_max_block(x, y):
    """[rows, Σx, max x, −min y-weighted x]: two sums, then two maxima."""
    return np.array([[x.shape[0], x.sum(), x.max(), -(x[:, 0] * y).min()]])


def test_the_last_maxima_entries_keep_the_largest_in_every_mode(client, arrays):
    """A packed row's tail combined by max, the rest summed (bug: a max summed over blocks,
    or taken from the first or last block only, or the sums' part taken as a max)."""
    X, y = arrays
    X = X.copy()
    X[40, 1] = 50.0  # the largest value sits in the third block, neither first nor last in any run
    Xd, yd = da.from_array(X, chunks=(CHUNKS, 3)), da.from_array(y, chunks=(CHUNKS,))
    want = np.array([X.shape[0], X.sum(), 50.0, -(X[:, 0] * y).min()])
    kw = dict(width=4, maxima=2)
    with dask.config.set(scheduler="threads", num_workers=2):
        threads = reduce_blocks(_sum_and_max_block, Xd, yd, client=None, **kw)
    lazy = reduce_blocks(_sum_and_max_block, Xd, yd, client=client, **kw)
    Xh, yh = persist_rows([Xd, yd], client)
    held = reduce_blocks(_sum_and_max_block, Xh, yh, client=client, **kw)
    for got in (threads, lazy, held):
        np.testing.assert_allclose(got, want, rtol=1e-13)
        assert got[2:].tolist() == want[2:].tolist()  # a max is exact


def test_held_blocks_are_placed_in_contiguous_runs_and_a_pass_is_one_task_per_thread(client, arrays):
    from distributed import get_task_stream, wait

    X, y = arrays
    Xh, yh = persist_rows([da.from_array(X, chunks=(CHUNKS, 3)), da.from_array(y, chunks=(CHUNKS,))], client)
    held = _held_blocks(Xh, yh)
    wait([f for blocks in held for f in blocks])
    where = client.who_has([f for blocks in held for f in blocks])
    owner = [where[blocks[0].key] for blocks in held]
    assert all(where[blocks[1].key] == owner[i] for i, blocks in enumerate(held))  # y beside its X
    workers = sorted(client.scheduler_info()["workers"])
    runs = group_ranges(len(CHUNKS), len(workers))
    for (a, b), w in zip(runs, workers):
        assert all(owner[i] == (w,) for i in range(a, b))
    with get_task_stream(client) as ts:
        reduce_blocks(_count_block, Xh, yh, width=5, row_start=True, scale=1.0, client=client)
    tasks = [t for t in ts.data if "_run_sum" in str(t["key"])]
    assert len(tasks) == len(workers) == len(ts.data)
    assert sorted(t["worker"] for t in tasks) == workers  # each run where its blocks are: no transfer
    assert not any(s["action"] == "transfer" for t in ts.data for s in t["startstops"])


def _named(stream, name: str) -> list:
    """The task stream's tasks whose key names ``name`` (as dask's key_split names them)."""
    from dask.utils import key_split

    return [t for t in stream if key_split(t["key"]) == name]


def _moved(stream, name: str) -> list:
    """The tasks named ``name`` that waited for data from another worker."""
    return [t["key"] for t in _named(stream, name) if any(s["action"] == "transfer" for s in t["startstops"])]


@pytest.fixture(scope="module")
def placing_client():
    """Two single-threaded in-process workers whose scheduler does not steal work: where a
    task runs is then the scheduler's first choice alone (work stealing may move a task,
    held blocks and all, when it judges the move cheap: legitimately so for these tests'
    tiny blocks)."""
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.work-stealing": False}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


def test_the_scores_pass_of_a_run_computes_and_stores_each_block_where_its_rows_are(placing_client, uneven_corpus,
                                                                                        tmp_path):
    """``write_run`` on a cluster: the scores kernel takes the factor broadcast to every
    worker, which makes every worker a candidate for every block; dask's scheduler, not
    knowing the kernel's duration yet (0.5 s by default against a few ms to move a small
    block), moved blocks to the other worker. One task per block computes and stores its
    scores where its rows are held: nothing moves, and the scores are right."""
    from distributed import get_task_stream

    client = placing_client
    pr, ref, path = uneven_corpus
    result = rifscale.attribute(path, lam=0.7, client=client)
    with get_task_stream(client) as ts:
        result.to_zarr(tmp_path / "run")
    assert len(_named(ts.data, "score_and_store_block")) == 12 and _named(ts.data, "score_block") == []
    assert _moved(ts.data, "score_and_store_block") == []
    assert rel_err(rifscale.open_run(tmp_path / "run").array("scores/leverage")[:], ref.h) <= 1e-8


def test_a_run_holds_its_ids_and_test_split_where_it_holds_its_rows(client, uneven_corpus):
    """Held rows come with their ids (stored with each block's scores, on the same worker)
    and the test split (read once, during the fit, instead of by each of its two passes);
    streamed rows leave both in the store. Same metrics, bit for bit, either way."""
    pr, ref, path = uneven_corpus
    held = rifscale.attribute(path, lam=0.7, client=client)
    assert _held_blocks(held.corpus.train.X, held.corpus.train.y, held.corpus.train.ids) is not None
    assert _held_blocks(held.corpus.test.X, held.corpus.test.y, held.corpus.test.ids) is not None
    streamed = rifscale.attribute(path, lam=0.7, client=client, persist="never")
    assert _held_blocks(streamed.corpus.test.X) is None and _held_blocks(streamed.corpus.train.X) is None
    assert held.model.metric.grads.tobytes() == streamed.model.metric.grads.tobytes()
    assert np.array_equal(held.model.test_subset, streamed.model.test_subset)


def test_a_pass_over_held_blocks_cuts_the_runs_they_were_placed_in_without_asking_the_scheduler(
        client, arrays, monkeypatch):
    """The runs of a pass over held blocks are those of their placement: no round trip for
    the worker table per pass, and one worker more than at the placement does not cut
    the blocks into other runs (which would sum them in another order)."""
    import rifscale.cluster

    X, y = arrays
    Xh, yh = persist_rows([da.from_array(X, chunks=(CHUNKS, 3)), da.from_array(y, chunks=(CHUNKS,))], client)
    placed = len(client.scheduler_info()["workers"])
    asked = []
    monkeypatch.setattr(rifscale.cluster, "workers_info", lambda c: asked.append(c) or {"w": {"nthreads": 5}})
    seen = []
    real_submit = type(client).submit
    monkeypatch.setattr(type(client), "submit", lambda self, *a, **k: seen.append(len(a[3])) or real_submit(self, *a, **k))
    got = reduce_blocks(_count_block, Xh, yh, width=5, row_start=True, scale=1.0, client=client)
    np.testing.assert_allclose(got, _expected(X, y, 1.0), rtol=1e-13)
    assert asked == [] and seen == [b - a for a, b in group_ranges(len(CHUNKS), placed)]


@pytest.fixture(scope="module")
def uneven_corpus(tmp_path_factory):
    pr = make_problem(sum(CHUNKS) * 2, 40, n_test=60, seed=8)
    path = tmp_path_factory.mktemp("uneven") / "c.zarr"
    rifscale.ingest(path, train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=20)
    return pr, Reference(pr.X, pr.y, lam=0.7), path


def _run_cli(path, out, *extra):
    done = subprocess.run([sys.executable, "-m", "rifscale.cli", "run", str(path), "--out", str(out), "--lam", "0.7",
                           "--test-subset", "all", "-q", *extra], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return rifscale.open_run(out)


SCORES = ("leverage", "alpha", "self_rif", "if_test_loss", "rif_test_loss")


def test_held_run_matches_the_dense_reference_and_threads_bit_for_bit(cluster, uneven_corpus, tmp_path):
    """A Hessian sum that dropped or doubled a block would miss the reference; a summation
    order that depended on where blocks ran would differ from the threaded run in the last
    bits. Same corpus, same number of threads (2): threads, worker processes."""
    pr, ref, path = uneven_corpus
    on_cluster = _run_cli(path, tmp_path / "cluster", "--scheduler", cluster.scheduler_address)
    assert on_cluster.manifest["layout"]["persisted"] and on_cluster.manifest["layout"]["blocks"] == 12
    assert rel_err(on_cluster.model.theta, ref.theta) <= 1e-8
    assert rel_err(on_cluster.array("scores/leverage")[:], ref.h) <= 1e-8
    _, s_rif = ref.scores("test_loss", pr.X_test, pr.y_test)
    assert rel_err(on_cluster.array("scores/rif_test_loss")[:], s_rif) <= 1e-8
    threads = _run_cli(path, tmp_path / "threads", "--workers", str(len(cluster.scheduler_info["workers"])))
    processes = _run_cli(path, tmp_path / "processes", "--processes",
                         "--workers", str(len(cluster.scheduler_info["workers"])))
    for other in (threads, processes):
        assert other.manifest["layout"]["blocks"] == on_cluster.manifest["layout"]["blocks"]
        assert other.model.theta.tobytes() == on_cluster.model.theta.tobytes()
        for name in SCORES:
            assert other.array(f"scores/{name}")[:].tobytes() == on_cluster.array(f"scores/{name}")[:].tobytes(), name


def test_a_client_that_is_not_dasks_default_does_all_the_work(cluster, uneven_corpus, tmp_path):
    """``attribute(client=c)``, ``to_zarr`` and ``group_effects(client=c)`` with a client
    created with ``set_as_default=False``: the label check, the radius and every pass run
    on it (before, the computes that look for dask's default client ran on local threads
    over its futures and failed with "Missing dependency")."""
    from distributed import Client

    from rifscale.cluster import current_client

    pr, ref, path = uneven_corpus
    with Client(cluster, set_as_default=False) as c:
        assert current_client() is not c
        result = rifscale.attribute(path, lam=0.7, client=c)
        result.to_zarr(tmp_path / "run")
        effects = rifscale.group_effects(result, {"first": [0, 1, 2]}, client=c)
    assert rel_err(result.theta, ref.theta) <= 1e-8
    assert rel_err(rifscale.open_run(tmp_path / "run").array("scores/leverage")[:], ref.h) <= 1e-8
    rif = effects["first"].plugin["test_loss"]["rif"]
    assert np.isfinite(rif) and rif != 0


def test_group_effects_of_large_sets_on_held_blocks_match_the_dense_reference(client, uneven_corpus, monkeypatch):
    """The large sets' statistics and the removed rows' losses come from one placed task
    per run of held blocks, a batch of sets per pass (``groups.sets_pass``). Bugs it
    catches: a set's rows of a block missed or counted twice (at a block edge, in an
    uneven last block), one set's sums packed into another's slot, a batch boundary that
    drops or repeats a set. Three large sets in batches of two, against the dense
    reference's IF, RIF and NS and the removed rows' losses written out in NumPy."""
    from rifscale.estimates import groups

    pr, ref, path = uneven_corpus
    n, p = pr.X.shape[0], pr.X.shape[1] + 1
    sets = {"spread": list(range(1, n, 3)),  # every block, both workers
            "edge": list(range(10, 10 + p + 9)),  # across the first block's edge
            "last": list(range(n - p - 5, n)),  # the uneven last block and the one before it
            "small": [0, 2, 50]}  # gathered, not reduced
    monkeypatch.setattr(groups, "SET_STATS_BUDGET", 2 * (2 * p + 1 + p * p))
    result = rifscale.attribute(path, lam=0.7, client=client)
    assert _held_blocks(result.corpus.train.X, result.corpus.train.y) is not None
    effects = rifscale.group_effects(result, sets, client=client)
    Z = np.hstack([pr.X, np.ones((n, 1))])

    def losses(theta, T):
        eta = Z[T] @ theta
        return np.sum(np.logaddexp(0.0, eta) - pr.y[T] * eta)

    for name, T in sets.items():
        e = effects[name]
        for method, want in (("if", ref.delta_if(T)), ("rif", ref.delta_rif(T)), ("ns", ref.delta_ns(T))):
            assert rel_err(e.delta[method], want) <= 1e-8, (name, method)
            change = losses(ref.theta + e.delta[method], T) - losses(ref.theta, T)
            assert abs(e.plugin["self_loss"][method] - change) <= 1e-8 * abs(change), (name, method)


def test_clusters_rifscale_starts_sample_stacks_rarely_and_others_are_named(cluster, caplog):
    """dask's default 10 ms stack sampling costs the kernels 20-30 %: rifscale's own
    LocalCluster uses 100 ms; a cluster at the default gets a warning naming the setting."""
    from distributed import Client

    from rifscale.cluster import WORKER_PROFILE_SETTING, check_worker_profiling, connect

    with connect(processes=True, n_workers=1) as own:
        seen = own.run(lambda: dask.config.get(WORKER_PROFILE_SETTING))
        assert set(seen.values()) == {"100ms"}
        with caplog.at_level(logging.WARNING, logger="rifscale"):
            check_worker_profiling(own)
        assert "PROFILE__INTERVAL" not in caplog.text
    with Client(cluster) as other, caplog.at_level(logging.WARNING, logger="rifscale"):
        check_worker_profiling(other)
    assert "2 of 2 workers sample their threads' stacks every 10 ms" in caplog.text
    assert "DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL=100ms" in caplog.text


def _worker_state():
    import os
    import sys

    from threadpoolctl import threadpool_info

    from rifscale.cluster import WORKER_MODULES

    return {"missing": [m for m in WORKER_MODULES if m not in sys.modules],
            "blas": sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}),
            "hash": hash("rifscale"), "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def test_worker_processes_start_with_rifscales_modules_one_blas_thread_and_one_hash_seed():
    """The workers of --processes are forked from a server that imported their modules once,
    started in dask's pre-spawn environment: a server started in this process's environment
    would give each worker BLAS threads for every core (and oversubscribe them); one without
    the preload would leave each worker to import them at its first task."""
    import os

    from rifscale.cluster import connect, start_worker_server

    before = dict(os.environ)
    assert start_worker_server()
    assert dict(os.environ) == before  # the server's environment only
    with connect(processes=True, n_workers=2) as client:
        seen = list(client.run(_worker_state).values())
    assert len(seen) == 2
    for state in seen:
        assert state["missing"] == [] and state["blas"] == [1] and state["trim"] == "65536", state
    seeded = subprocess.run([sys.executable, "-c", "print(hash('rifscale'))"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONHASHSEED": "6640"})
    assert {s["hash"] for s in seen} == {int(seeded.stdout)}


#: A client process that has not imported pandas (the users' install has no xarray, through
#: which dask.array imports it): which packages does starting the LocalCluster try to import?
_PRELOAD_PROBE = """
import sys
attempts = []
class Record:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            attempts.append(name)
            raise ImportError(name)  # as if not installed: nothing is imported either way
sys.meta_path.insert(0, Record())
from rifscale.cluster import connect, start_worker_server
assert start_worker_server()
import rifscale.pipeline
attempts.clear()
with connect(processes=True, n_workers=1) as client:
    assert client.submit(sum, [1, 2]).result() == 3
print(sorted(set(attempts)))
"""


def test_starting_the_worker_processes_imports_nothing_for_distributeds_preload():
    """With rifscale's fork server running, distributed's own preload list is not needed:
    building it imports pandas (and more) in the client (0.2 s of a 0.4 s cluster start),
    then is ignored by the running server. Fails if the installed distributed no longer
    keeps the flag that skips it (rifscale.cluster._keep_worker_server_preload)."""
    out = subprocess.run([sys.executable, "-c", _PRELOAD_PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_worker_processes_still_start_when_the_fork_server_cannot(monkeypatch, caplog):
    """A fork server that cannot start (no room for its socket, say) leaves dask's spawned
    workers, with a warning, not a traceback."""
    import multiprocessing.forkserver

    import rifscale.cluster as cluster

    def refuse():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cluster, "_worker_server_started", False)
    monkeypatch.setattr(multiprocessing.forkserver, "ensure_running", refuse)
    with caplog.at_level(logging.WARNING, logger="rifscale"):
        with cluster.connect(processes=True, n_workers=1) as client:
            assert client.submit(sum, [1, 2]).result() == 3
    assert "could not start the server that forks worker processes (" in caplog.text
    assert "No space left on device" in caplog.text


def test_the_worker_environment_is_dasks_pre_spawn_setting(monkeypatch):
    """Read before distributed is imported, the defaults are rifscale's copy of
    distributed's: they must equal the installed distributed's; the user's setting and
    this process's environment override them, as in dask's nanny."""
    import distributed  # noqa: F401 (its defaults in dask's config)

    from rifscale.cluster import PRE_SPAWN_DEFAULTS, WORKER_HASH_SEED, worker_environment

    for name in PRE_SPAWN_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    defaults = {k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()}
    assert defaults == PRE_SPAWN_DEFAULTS
    assert worker_environment() == {**defaults, "PYTHONHASHSEED": WORKER_HASH_SEED}
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 2, "MALLOC_TRIM_THRESHOLD_": None}}):
        env = worker_environment()
    assert env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "3" and "MALLOC_TRIM_THRESHOLD_" not in env


@pytest.fixture(scope="module")
def wide_corpus(tmp_path_factory):
    """Big enough for the scores pass to be killed in, wide enough for BLAS's blocked paths."""
    from .test_batch_jobs import _ingested

    return _ingested(tmp_path_factory.mktemp("wide") / "c.zarr", 200_000, 64, chunk_rows=10_000)


def test_a_run_resumed_after_its_fit_equals_an_uninterrupted_one_with_two_threads(wide_corpus, tmp_path):
    """Killed once the fit is checkpointed, the rerun computes the scores on blocks laid out
    anew in memory (another allocation, another thread per block): the same bits."""
    from .test_batch_jobs import CLI, _arrays, _start, _wait_for_path

    args = ["run", str(wide_corpus), "--out", str(tmp_path / "r"), "--workers", "2"]
    ref = subprocess.run(CLI + ["run", str(wide_corpus), "--out", str(tmp_path / "ref"), "--workers", "2"],
                         capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    proc = _start(args)
    _wait_for_path(tmp_path / ".r.partial" / "scores", proc)
    proc.kill()
    proc.communicate()
    done = subprocess.run(CLI + args, capture_output=True, text=True)
    assert done.returncode == 0 and "resumed from the finished fit" in done.stdout, done.stderr
    resumed, uninterrupted = _arrays(tmp_path / "r"), _arrays(tmp_path / "ref")
    assert resumed.keys() == uninterrupted.keys()
    differ = [k for k in resumed if resumed[k] != uninterrupted[k]]
    assert differ == []


def test_every_worker_is_counted_also_where_dask_lists_five_by_default():
    """distributed 2025.4-2026.6 list 5 workers unless asked for all; 2024.8 takes no
    n_workers: the thread count (and so the runs of every pass) must see all of them."""
    from rifscale.cluster import total_threads, workers_info

    workers = {f"tcp://10.0.0.{i}:1": {"nthreads": 2} for i in range(8)}

    class Capped:
        def scheduler_info(self, n_workers=5):
            return {"workers": dict(list(workers.items())[: None if n_workers == -1 else n_workers])}

    class Old:
        def scheduler_info(self):
            return {"workers": workers}

    for client in (Capped(), Old()):
        assert len(workers_info(client)) == 8 and total_threads(client) == 16


def test_scores_of_irregular_blocks_are_stored_column_by_column_and_right(tmp_path):
    """Blocks of several sizes cannot be Zarr chunks: the writer falls back to regular
    chunks; both writers must store the same numbers."""
    pr = make_problem(sum(CHUNKS), 6, n_test=30, seed=2)
    Xd = da.from_array(pr.X, chunks=(CHUNKS, 6))
    yd = da.from_array(pr.y, chunks=(CHUNKS,))
    irregular = rifscale.Corpus.from_arrays(Xd, yd, pr.X_test, pr.y_test)
    assert len(set(irregular.train.X.chunks[0][:-1])) > 1
    res = rifscale.attribute(irregular, lam=0.9, test_subset="all")
    res.to_zarr(tmp_path / "run")
    run = rifscale.open_run(tmp_path / "run", corpus=irregular)
    ref = Reference(pr.X, pr.y, lam=0.9)
    assert rel_err(run.array("scores/leverage")[:], ref.h) <= 1e-8
    _, s_rif = ref.scores("test_loss", pr.X_test, pr.y_test)
    assert rel_err(run.array("scores/rif_test_loss")[:], s_rif) <= 1e-8
    np.testing.assert_array_equal(run.array("scores/sample")[:], np.arange(sum(CHUNKS)))
