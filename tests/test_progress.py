"""Progress bars: drawn on a terminal (stderr) and in Jupyter (an HTML bar updated in
place), following dask's finished tasks locally and on a cluster, never mixed up with the
log lines, and off unless asked for."""

import io
import logging
import os
import pty
import subprocess
import sys
import types
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

import rifscale
from rifscale import progress
from rifscale.testing import make_problem

from .conftest import corpus_of

RIFSCALE = str(Path(sys.executable).with_name("rifscale"))


@pytest.fixture(autouse=True)
def bars_off_afterwards(monkeypatch):
    monkeypatch.setattr(progress, "REFRESH", 0.0)  # draw every update
    yield
    progress.enable(False)


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


def lines(text: str) -> list[str]:
    """What a terminal shows: each line's last redraw after a carriage return."""
    return [line.split("\r")[-1].rstrip() for line in text.replace("\r\n", "\n").split("\n")]


def test_a_terminal_bar_redraws_one_line_and_ends_it():
    out = io.StringIO()
    with progress.Bar("ingest", total=4, show=True, stream=out) as bar:
        for k in range(1, 4):
            bar.update(k)
    shown = lines(out.getvalue())
    assert shown[0].startswith("ingest [##############################] 100% 4/4") and shown[1:] == [""]
    assert out.getvalue().count("\r") == 4 and "3/4" in out.getvalue()  # drawn at 0..3 then closed at 4/4
    out = io.StringIO()
    with pytest.raises(ValueError), progress.Bar("fit", show=True, stream=out) as bar:
        bar.update(fraction=0.25, text="iteration 3")
        raise ValueError
    assert lines(out.getvalue())[0].startswith("fit [#######                       ]  25% iteration 3")
    assert lines(out.getvalue())[0].endswith("(stopped)")  # a failed stage does not claim 100 %


def test_bars_are_off_unless_asked_for_and_never_drawn_into_a_file():
    out = Terminal()
    with progress.Bar("scores", total=3, stream=out) as bar:
        bar.update(2)
    assert out.getvalue() == ""
    progress.enable(stream=out)
    with progress.Bar("scores", total=3) as bar:
        bar.update(2)
    assert "100% 3/3" in out.getvalue()
    log_file = io.StringIO()  # not a terminal: a script's output redirected to a file
    progress.enable(stream=log_file)
    with progress.Bar("scores", total=3) as bar:
        bar.update(2)
    assert log_file.getvalue() == ""


def test_local_dask_work_is_followed_task_by_task():
    out = Terminal()
    progress.enable(stream=out)
    x = da.ones((100, 3), chunks=(10, 3))
    total, = progress.compute(x.sum(), label="sum")
    assert total == 300
    err = out.getvalue()
    final = lines(err)[0]
    n = int(final.split("/")[-1].split()[0])
    assert final.startswith("sum [##############################] 100%") and n > 10  # every task counted
    assert f"{n // 2}/{n}" in err or any(f"{k}/{n}" in err for k in range(1, n))  # and drawn on the way


def test_cluster_work_is_followed_by_the_schedulers_task_count(client):
    out = Terminal()
    progress.enable(stream=out)
    x = da.ones((100, 3), chunks=(10, 3))
    total, parts = progress.compute(x.sum(), {"first": x[:, 0]}, label="on the cluster")
    assert total == 300 and parts["first"].shape == (100,)  # nested collections come back in place
    final = lines(out.getvalue())[0]
    n = int(final.split("/")[-1].split()[0])
    assert final.startswith("on the cluster [##############################] 100%")
    assert n > 20  # every task of the graph (ones, sums, slices), not the 2 output futures


def test_group_estimates_on_a_cluster_with_bars(client):
    """The stages that compute dicts of collections, on a distributed client."""
    out = Terminal()
    pr = make_problem(300, 4, seed=1)
    progress.enable(stream=out)
    result = rifscale.attribute(corpus_of(pr, 64), lam=0.5, test_subset="all", client=client)
    est = rifscale.group_effects(result, {"small": range(3), "large": range(150)}, client=client)
    assert set(est) == {"small", "large"}
    shown = lines(out.getvalue())
    assert any(line.startswith("set statistics [") and "100%" in line for line in shown)


def test_in_jupyter_one_html_bar_is_updated_in_place(monkeypatch):
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(obj.data)

    class ZMQInteractiveShell:  # what a Jupyter kernel's get_ipython() returns
        pass

    display_mod = types.SimpleNamespace(HTML=lambda s: types.SimpleNamespace(data=s),
                                        display=lambda obj, display_id: Handle())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=ZMQInteractiveShell))
    monkeypatch.setitem(sys.modules, "IPython.display", display_mod)
    assert progress.in_notebook()
    with progress.Bar("exact retrains", total=2, show=True) as bar:
        bar.update(1)
    assert len(shown) == 2 and "<progress value='0.5000'" in shown[0]
    assert "<progress value='1.0000'" in shown[1] and "2/2" in shown[1] and "exact retrains" in shown[1]


def test_log_lines_do_not_break_a_bar():
    out = io.StringIO()
    log = logging.getLogger("rifscale.test_progress")
    handler = progress.LogHandler(out)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with progress.Bar("fit", show=True, stream=out) as bar:
            bar.update(fraction=0.5)
            log.info("newton iter 3")
    finally:
        log.removeHandler(handler)
    assert lines(out.getvalue())[:2] == ["newton iter 3", lines(out.getvalue())[1]]
    assert lines(out.getvalue())[1].startswith("fit [##############################] 100%")


def test_show_progress_turns_on_the_bars_of_fit_groups_and_retrains():
    pr = make_problem(300, 4, seed=1)
    out = Terminal()
    rifscale.show_progress(logging.WARNING, stream=out)
    try:
        result = rifscale.attribute(corpus_of(pr, 64), lam=0.5, test_subset="all")
        rifscale.group_effects(result, {"a": range(10), "b": range(200)})
        rifscale.retrain(result, {"a": range(10)})
    finally:
        rifscale.show_progress(logging.WARNING, bars=False)
    shown = [line for line in lines(out.getvalue()) if line]
    for label in ("fit [", "set statistics [", "group estimates [", "exact retrains ["):
        assert any(line.startswith(label) and "100%" in line for line in shown), (label, shown)


def _run_on_a_terminal(args, cwd):
    """Run the CLI with stderr on a pseudo-terminal, as a user at a shell would."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([RIFSCALE, *args], cwd=cwd, stderr=slave, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    with proc.stdout:
        out = proc.stdout.read().decode()
    proc.wait(timeout=120)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(), out


def test_the_cli_draws_bars_on_a_terminal_only(tmp_path):
    pr = make_problem(400, 5, n_test=50, seed=2)
    np.save(tmp_path / "X.npy", pr.X)
    np.save(tmp_path / "y.npy", pr.y)
    rc, err, out = _run_on_a_terminal(["ingest", "c.zarr", "--train-X", "X.npy", "--train-y", "y.npy",
                                       "--test-fraction", "0.2", "--chunk-rows", "50"], tmp_path)
    assert rc == 0 and "wrote corpus" in out
    assert any(line.startswith("ingest [##############################] 100%") for line in lines(err))
    rc, err, out = _run_on_a_terminal(["run", "c.zarr", "--out", "run", "--lam", "0.5"], tmp_path)
    assert rc == 0 and "wrote run" in out and "\r" not in out  # stdout stays clean for pipes
    shown = lines(err)
    assert any(line.startswith("fit [##############################] 100% Newton iteration") for line in shown)
    assert any(line.startswith("scores [##############################] 100%") for line in shown)
    assert any("fit converged" in line and "[" not in line for line in shown)  # log lines on lines of their own
    rc, err, _ = _run_on_a_terminal(["--quiet", "run", "c.zarr", "--out", "run2", "--lam", "0.5"], tmp_path)
    assert rc == 0 and "[#" not in err
    piped = subprocess.run([RIFSCALE, "run", "c.zarr", "--out", "run3", "--lam", "0.5"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "\r" not in piped.stderr and "[#" not in piped.stderr  # logs: no bars
