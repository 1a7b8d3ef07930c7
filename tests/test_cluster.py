"""The engine on a real multi-process LocalCluster: same numbers as the reference, the
factor broadcast once, and the CLI's --scheduler path."""

import json
import time

import numpy as np
import pytest
import zarr

import rifscale
from rifscale.cli import main
from rifscale.testing import Reference, make_problem

from .conftest import rel_err

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def problem():
    pr = make_problem(90, 110, n_test=120, seed=21)  # d > n
    return pr, Reference(pr.X, pr.y, lam=2.0)


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory, problem):
    pr, _ = problem
    path = tmp_path_factory.mktemp("cluster") / "c.zarr"
    rifscale.ingest(path, train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=20)
    return path


def test_multiworker_run_matches_reference(client, corpus_path, problem, tmp_path):
    pr, ref = problem
    res = rifscale.attribute(corpus_path, lam=2.0, test_subset="all", client=client)
    assert len(client.scheduler_info()["workers"]) == 2
    res.to_zarr(tmp_path / "run")
    run = rifscale.open_run(tmp_path / "run")
    assert rel_err(run.model.theta, ref.theta) <= 1e-8
    assert rel_err(run.array("scores/leverage")[:], ref.h) <= 1e-8
    s_if, s_rif = ref.scores("test_loss", pr.X_test, pr.y_test)
    assert rel_err(run.array("scores/if_test_loss")[:], s_if) <= 1e-8
    assert rel_err(run.array("scores/rif_test_loss")[:], s_rif) <= 1e-8
    est = rifscale.group_effects(run, {"a": [0, 5, 9], "b": list(range(40))}, client=client)
    for name, idx in {"a": [0, 5, 9], "b": list(range(40))}.items():
        idx = np.array(idx)
        assert rel_err(est[name].delta["ns"], ref.delta_ns(idx)) <= 1e-8
        assert rel_err(est[name].delta["rif"], ref.delta_rif(idx)) <= 1e-8


def _times(block, m):
    return block @ m


def test_factor_is_broadcast_to_every_worker_once(client):
    import dask.array as da

    from rifscale.engine.factor import broadcast

    value = np.arange(9.0).reshape(3, 3)
    before = client.has_what()
    d = broadcast(value, client=client)
    # workers report received keys to the scheduler asynchronously: wait (bounded) for both
    deadline = time.monotonic() + 10
    while True:
        after = client.has_what()
        new = {w: set(after[w]) - set(before.get(w, ())) for w in after}
        if all(new.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(new) == 2 and all(len(keys) == 1 for keys in new.values())
    assert len(set().union(*new.values())) == 1  # the same single key on both workers
    x = da.ones((8, 3), chunks=(1, 3))
    graph = x.map_blocks(_times, m=d, dtype=float)
    np.testing.assert_array_equal(graph.compute(), np.ones((8, 3)) @ value)
    # the value is one dependency of the graph, not a copy inside each of the 8 tasks
    assert sum(isinstance(v, np.ndarray) for v in dict(graph.__dask_graph__()).values()) == 0


def test_cli_run_and_groups_on_existing_scheduler(cluster, corpus_path, problem, tmp_path, capsys):
    pr, ref = problem
    out = tmp_path / "run"
    rc = main(["-q", "run", str(corpus_path), "--out", str(out), "--lam", "2.0", "--test-subset", "all",
               "--scheduler", cluster.scheduler_address])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["fit"]["converged"]
    assert manifest["fit"]["rel_grad_norm"] <= 1e-10
    assert rel_err(zarr.open_array(str(out / "scores/leverage"))[:], ref.h) <= 1e-8
    sets = tmp_path / "sets.json"
    sets.write_text(json.dumps({"first": [0, 1, 2], "many": list(range(0, 90, 3))}))
    rc = main(["-q", "groups", str(out), "--sets", str(sets), "--scheduler", cluster.scheduler_address])
    assert rc == 0
    g = zarr.open_group(str(out / "groups"), mode="r")
    assert g.attrs["names"] == ["first", "many"]
    assert rel_err(g["delta_theta/ns"][0], ref.delta_ns(np.array([0, 1, 2]))) <= 1e-8
    printed = capsys.readouterr().out
    assert "first" in printed and "many" in printed and "wrote" in printed
    # a second `groups` does not overwrite unasked
    assert main(["-q", "groups", str(out), "--sets", str(sets), "--scheduler", cluster.scheduler_address]) == 2
    assert "already exists" in capsys.readouterr().err


def test_batched_retrains_on_the_cluster(client, corpus_path, problem):
    from rifscale.validation.exact import retrain

    pr, ref = problem
    res = rifscale.attribute(corpus_path, lam=2.0, test_subset="all", client=client)
    sets = {"a": [0, 5, 9], "b": list(range(0, 90, 4)), "c": [44]}
    out = retrain(res, sets, client=client)
    for name, idx in sets.items():
        exact = ref.delta_exact(np.array(idx))
        assert out[name].converged
        assert np.linalg.norm(out[name].delta - exact) <= 1e-7 * np.linalg.norm(exact)


def test_dask_scheduler_address_is_used_when_no_scheduler_is_given(cluster, corpus_path, tmp_path, monkeypatch):
    """Jupyter on a cluster: the server sets DASK_SCHEDULER_ADDRESS; rifscale uses it."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, DASK_SCHEDULER_ADDRESS=cluster.scheduler_address)
    done = subprocess.run([sys.executable, "-m", "rifscale.cli", "run", str(corpus_path), "--out",
                           str(tmp_path / "r"), "--lam", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"using the scheduler from dask's config (DASK_SCHEDULER_ADDRESS): {cluster.scheduler_address}" in done.stderr
    assert "connected to scheduler" in done.stderr and "threaded scheduler" not in done.stderr


def test_the_library_is_silent_until_show_progress(corpus_path, capsys):
    import io
    import logging

    log = logging.getLogger("rifscale")
    assert any(isinstance(h, logging.NullHandler) for h in log.handlers)
    rifscale.attribute(corpus_path, lam=2.0)
    assert capsys.readouterr().out == ""
    buf = io.StringIO()
    rifscale.show_progress(stream=buf)
    rifscale.show_progress(stream=buf)  # again: replaced, not doubled
    try:
        rifscale.attribute(corpus_path, lam=2.0)
    finally:
        for h in [h for h in log.handlers if getattr(h, "rifscale_progress", False)]:
            log.removeHandler(h)
        log.setLevel(logging.NOTSET)
    lines = buf.getvalue().splitlines()
    assert any("rifscale.engine.fit: newton iter  0" in line for line in lines)
    assert len([line for line in lines if "fit converged in" in line]) == 1


@pytest.mark.parametrize("processes", [False, True])
def test_dashboard_link_is_logged_and_answers_with_the_bokeh_dashboard(caplog, processes):
    import logging
    import urllib.request

    from rifscale.cluster import connect

    with caplog.at_level(logging.INFO, logger="rifscale"), connect(dashboard=True, processes=processes, n_workers=1):
        (line,) = [r.getMessage() for r in caplog.records if "started a LocalCluster" in r.getMessage()]
        link = line.rsplit("dashboard ", 1)[1]
        assert link.startswith("http://127.0.0.1:") and link.endswith("/status")
        page = urllib.request.urlopen(link, timeout=30).read().decode()
    assert "bokeh" in page.lower() and "pip install" not in page  # the dashboard, not "install bokeh"


def test_worker_processes_serve_no_dashboard_unless_asked(caplog):
    """Serving the dashboard costs the start of --processes about 0.35 s: only on request."""
    import logging

    from rifscale.cluster import connect

    import urllib.error
    import urllib.request

    with caplog.at_level(logging.INFO, logger="rifscale"), connect(processes=True, n_workers=1) as client:
        port = client.scheduler_info()["services"]["dashboard"]  # the HTTP server, without the dashboard
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as health:
            assert health.read() == b"ok"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30)
    (line,) = [r.getMessage() for r in caplog.records if "started a LocalCluster" in r.getMessage()]
    assert line.endswith("(--dashboard serves dask's dashboard)")


def test_a_large_hessian_reaches_the_factoring_worker_outside_the_graph(client, monkeypatch):
    """A softmax model's H is P × P (113 MiB at P = 3 849): sent as an argument of the
    factoring task it travelled inside the graph through the scheduler, and distributed
    warned "Sending large graph". Above SCATTER_ABOVE it is scattered to the worker first;
    the factor is the same."""
    import warnings

    from rifscale.engine import factor as factor_mod

    rng = np.random.default_rng(0)
    A = rng.normal(size=(300, 300))
    H = A @ A.T + 300 * np.eye(300)  # 0.7 MB
    sent = []
    real_scatter = client.scatter
    monkeypatch.setattr(client, "scatter", lambda data, **kw: sent.append(data.nbytes) or real_scatter(data, **kw))
    monkeypatch.setattr(factor_mod, "SCATTER_ABOVE", 2**19)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a large-graph warning fails the test
        f = factor_mod.factor_hessian(H, client=client)
    assert sent == [H.nbytes]
    np.testing.assert_allclose(f.L @ f.L.T, H, rtol=1e-12)
    np.testing.assert_allclose(f.linv @ f.L, np.eye(300), atol=1e-12)
    monkeypatch.setattr(factor_mod, "SCATTER_ABOVE", 2**30)  # small: as an argument, as before
    factor_mod.factor_hessian(H, client=client)
    assert sent == [H.nbytes]
