"""Batch jobs that never lose or silently corrupt data (issue 7), with real processes.

Each test stands for a way a scheduled job goes wrong on a shared cluster: a kill at each
stage, Ctrl-C, SIGTERM, two jobs on one output, damaged or missing chunks, workers that
all die, and bad inputs. The messages are asserted, not only the exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import rifscale
from rifscale import outputs
from rifscale.cli import main
from rifscale.errors import OutputExistsError

CLI = [sys.executable, "-m", "rifscale.cli"]


def _data(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal(d) / 3
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ w)))).astype(np.int8)
    Xt = rng.standard_normal((300, d), dtype=np.float32)
    yt = (rng.random(300) < 0.5).astype(np.int8)
    return X, y, Xt, yt


def _ingested(path: Path, n: int, d: int, *, chunk_rows: int | None = None) -> Path:
    """A corpus of :func:`_data` ingested at ``path``."""
    X, y, Xt, yt = _data(n, d)
    rifscale.ingest(path, train_X=X, train_y=y, test_X=Xt, test_y=yt, chunk_rows=chunk_rows)
    return path


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A corpus whose fit (~1 s) and scores pass (~0.5 s) are long enough to be killed in."""
    root = tmp_path_factory.mktemp("big")
    X, y, Xt, yt = _data(400_000, 24)
    rifscale.ingest(root / "c.zarr", train_X=X, train_y=y, test_X=Xt, test_y=yt)
    ref = root / "ref"
    subprocess.run(CLI + ["run", str(root / "c.zarr"), "--out", str(ref), "--workers", "1"], check=True,
                   capture_output=True)
    return root / "c.zarr", ref


@pytest.fixture
def small(tmp_path):
    X, y, Xt, yt = _data(600, 5, seed=1)
    rifscale.ingest(tmp_path / "c.zarr", train_X=X, train_y=y, test_X=Xt, test_y=yt, chunk_rows=100)
    return tmp_path / "c.zarr"


def _arrays(run: Path) -> dict[str, bytes]:
    """Every stored array of a run, as raw bytes (bitwise comparison)."""
    out = {}
    for stage in ("model", "scores"):
        def visit(group, prefix):
            for name, arr in group.arrays():
                out[f"{prefix}/{name}"] = np.ascontiguousarray(arr[...]).tobytes()
            for name, sub in group.groups():
                visit(sub, f"{prefix}/{name}")
        visit(zarr.open_group(str(run / stage), mode="r"), stage)
    return out


def _sigint_default():
    # a child of a background job inherits SIGINT as ignored (and Python then keeps it so):
    # give the child the disposition a terminal's Ctrl-C meets
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args, **kw):
    return subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default, **kw)


#: ``python -c`` program: the CLI, with a signal sent to itself at an exact point
#: (argv: "module:function" or "module:Class.method", signal name, call number, "before" or
#: "after", then the command line).
_PLANTED = """\
import importlib, os, signal, sys
where, sig, call, when, *argv = sys.argv[1:]
module, _, attr = where.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
real, calls = getattr(owner, name), []
def planted(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(call) and when == "before":
        os.kill(os.getpid(), getattr(signal, sig))
    out = real(*args, **kwargs)
    if len(calls) == int(call) and when == "after":
        os.kill(os.getpid(), getattr(signal, sig))
    return out
setattr(owner, name, planted)
sys.argv = ["rifscale", *argv]
from rifscale.cli import console_main
console_main()
"""


def _planted(where: str, sig: str, args, *, call: int = 1, before: bool = False) -> subprocess.CompletedProcess:
    """Run the CLI with ``sig`` sent to itself just before or after the ``call``-th call of
    ``where`` (e.g. "rifscale.outputs:publish"): a kill at an exact point, no race."""
    return subprocess.run([sys.executable, "-c", _PLANTED, where, sig, str(call), "before" if before else "after",
                           *map(str, args)], capture_output=True, text=True, preexec_fn=_sigint_default, timeout=120)


def _wait_for_line(proc, needle: str, timeout: float = 60) -> list[str]:
    """Read the child's stderr until a line holds ``needle``; returns the lines read."""
    lines, t0 = [], time.monotonic()
    for line in proc.stderr:
        lines.append(line)
        if needle in line:
            return lines
        assert time.monotonic() - t0 < timeout, f"no {needle!r} within {timeout} s: {lines}"
    raise AssertionError(f"the child ended before {needle!r}: {lines}")


def _wait_for_path(path: Path, proc, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"the child ended before {path} appeared"
        assert time.monotonic() - t0 < timeout
        time.sleep(0.002)


def _run_until(corpus, out: Path, line: str):
    """Start ``rifscale run CORPUS --out OUT`` and wait until it logs ``line``."""
    args = ["run", str(corpus), "--out", str(out), "--workers", "1"]
    proc = _start(args)
    _wait_for_line(proc, line)
    return args, proc


# ---------------------------------------------------------------------------- resume


def test_kill_during_the_fit_then_the_same_command_finishes_bit_for_bit(big, tmp_path):
    corpus, ref = big
    out = tmp_path / "r"
    args, proc = _run_until(corpus, out, "newton iter  1")
    proc.kill()
    proc.communicate()  # reaps it and closes the pipes
    assert not out.exists()  # never mistaken for a finished run
    state = json.loads((tmp_path / ".r.partial" / "manifest.json").read_text())
    assert state["status"] == "partial" and state["stages"] == {}
    done = subprocess.run(CLI + args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "wrote run" in done.stdout and "resumed" not in done.stdout
    assert _arrays(out) == _arrays(ref)
    assert not (tmp_path / ".r.partial").exists() and not (tmp_path / ".r.lock").exists()


def test_kill_during_the_scores_write_resumes_from_the_fit_bit_for_bit(big, tmp_path):
    corpus, ref = big
    out = tmp_path / "r"
    args = ["run", str(corpus), "--out", str(out), "--workers", "1"]
    proc = _start(args)
    _wait_for_path(tmp_path / ".r.partial" / "scores", proc)
    proc.kill()
    proc.communicate()  # reaps it and closes the pipes
    assert not out.exists()
    state = json.loads((tmp_path / ".r.partial" / "manifest.json").read_text())
    assert list(state["stages"]) == ["model"]
    done = subprocess.run(CLI + args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed from the finished fit" in done.stdout
    assert "newton iter" not in done.stderr  # the fit was not redone
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed"] == "model" and manifest["status"] == "complete"
    assert _arrays(out) == _arrays(ref)


def test_a_rerun_of_a_complete_run_does_nothing_and_a_changed_one_is_refused(big, tmp_path):
    corpus, ref = big
    out = tmp_path / "r"
    args = ["run", str(corpus), "--out", str(out), "--workers", "1"]
    assert subprocess.run(CLI + args, capture_output=True).returncode == 0
    before = (out / "manifest.json").stat().st_mtime_ns
    again = subprocess.run(CLI + args, capture_output=True, text=True)
    assert again.returncode == 0
    assert "already complete (same config and corpus); nothing to do" in again.stdout
    assert "newton" not in again.stderr and "running on" not in again.stderr  # no pass, no scheduler
    assert (out / "manifest.json").stat().st_mtime_ns == before
    changed = subprocess.run(CLI + args + ["--lam", "2"], capture_output=True, text=True)
    assert changed.returncode == 2
    assert "is a complete run, but it was made by a different job (config.lam: 1.0 -> 2.0)" in changed.stderr
    assert _arrays(out) == _arrays(ref)


def test_ctrl_c_exits_130_in_one_line_and_the_run_resumes(big, tmp_path):
    corpus, ref = big
    out = tmp_path / "r"
    args, proc = _run_until(corpus, out, "newton iter  1")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "rifscale run: interrupted. Run the same command again to resume it."
    assert "Traceback" not in err
    assert not out.exists()
    assert subprocess.run(CLI + args, capture_output=True).returncode == 0
    assert _arrays(out) == _arrays(ref)


def test_sigterm_exits_143_and_an_interrupted_ingest_leaves_nothing(tmp_path):
    X, y, Xt, yt = _data(2_000_000, 16)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    proc = _start(["ingest", str(tmp_path / "c.zarr"), "--train-X", str(tmp_path / "X.npy"),
                   "--train-y", str(tmp_path / "y.npy"), "--chunk-rows", "20000"])
    partial = None
    t0 = time.monotonic()
    while partial is None:  # wait until the temporary corpus exists, then pre-empt the job
        found = list(tmp_path.glob(".c.zarr.partial-*"))
        partial = found[0] if found else None
        assert proc.poll() is None and time.monotonic() - t0 < 60
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "rifscale ingest: terminated (SIGTERM). Nothing was written; run the same command again." in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.npy", "y.npy"]


# ---------------------------------------------------------------------------- races


def test_two_jobs_on_one_output_the_second_fails_and_the_first_is_intact(big, tmp_path):
    corpus, ref = big
    out = tmp_path / "r"
    _, first = _run_until(corpus, out, "newton iter  0")  # it holds the lock by now
    first.send_signal(signal.SIGSTOP)  # keep it mid-fit (deterministically) while the second starts
    try:
        second = subprocess.run(CLI + ["run", str(corpus), "--out", str(out), "--lam", "100"],
                                capture_output=True, text=True, timeout=60)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert f"Another rifscale job is writing '{out}' (pid {first.pid} on" in second.stderr
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["lam"] == 1.0
    assert _arrays(out) == _arrays(ref)


def test_an_output_that_appears_while_the_job_runs_is_left_alone(small, tmp_path, monkeypatch):
    """The final move never replaces what it did not check: a newcomer wins, this job fails."""
    out = tmp_path / "r"
    real = outputs.publish

    def someone_else_writes_first(tmp, target, *, overwrite):
        target.mkdir()
        (target / "theirs.txt").write_text("keep")
        return real(tmp, target, overwrite=overwrite)

    monkeypatch.setattr("rifscale.jobs.publish", someone_else_writes_first)
    with pytest.raises(OutputExistsError, match="appeared while this job ran"):
        rifscale.run_job(small, out)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    monkeypatch.setattr(outputs.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(39, "Directory not empty")))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with pytest.raises(OutputExistsError, match="appeared while this job ran"):  # even between check and move
        real(tmp, out, overwrite=False)


# ---------------------------------------------------------------------------- inputs


def test_an_output_over_its_input_is_refused_and_the_input_kept(small, tmp_path, capsys):
    fingerprint = rifscale.open_corpus(small).fingerprint
    cases = [(small, "is"), (small / "train" / "run", "lies inside"), (tmp_path, "contains")]
    for out, how in cases:
        assert main(["run", str(small), "--out", str(out), "--overwrite"]) == 2
        assert f"The output '{out}' {how} the input '{small}'" in capsys.readouterr().err
    np.save(tmp_path / "X.npy", np.ones((10, 2), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.arange(10) % 2)
    assert main(["ingest", str(tmp_path), "--train-X", str(tmp_path / "X.npy"), "--train-y",
                 str(tmp_path / "y.npy"), "--overwrite"]) == 2
    assert "contains the input" in capsys.readouterr().err
    assert rifscale.open_corpus(small).fingerprint == fingerprint
    assert main(["run", str(small), "--out", "."]) == 2  # the working directory is nobody's output
    assert "The output '.' is an existing directory by its very name" in capsys.readouterr().err


@pytest.mark.parametrize("array", ["X", "y"])
def test_a_missing_chunk_is_an_error_naming_it_not_zeros(small, capsys, array):
    os.remove(small / "train" / array / "c" / ("2/0" if array == "X" else "2"))
    assert main(["run", str(small), "--out", str(small.parent / "r")]) == 2
    err = capsys.readouterr().err
    assert f"train/{array} is missing 1 of its 6 chunk file(s) (first: row chunk 2, rows 200-299" in err
    assert "zarr would read them as zeros" in err
    assert not (small.parent / "r").exists()


def test_an_all_zero_chunk_is_written_and_not_mistaken_for_a_missing_one(tmp_path):
    X, y, Xt, yt = _data(300, 3)
    y[100:200] = 0  # a whole label chunk of zeros: zarr would skip writing it by default
    X[200:300] = 0
    c = rifscale.ingest(tmp_path / "c.zarr", train_X=X, train_y=y, test_X=Xt, test_y=yt, chunk_rows=100)
    assert (tmp_path / "c.zarr" / "train" / "y" / "c" / "1").is_file()
    assert np.array_equal(c.train.y.compute(), y)


def test_damaged_chunks_are_named_by_run_and_by_verify(small, capsys):
    assert main(["verify", str(small)]) == 0
    assert "9 chunk(s) of train/X, train/y, train/ids, test/X, test/y, test/ids match" in capsys.readouterr().out
    chunk = small / "train" / "X" / "c" / "3" / "0"
    data = bytearray(chunk.read_bytes())
    data[41] ^= 0x10  # one bit flipped: a valid float, silently wrong
    chunk.write_bytes(bytes(data))
    assert main(["verify", str(small)]) == 2
    assert "1 chunk(s) differ from what ingest wrote: train row chunk 3 (rows 300-399)" in capsys.readouterr().err
    assert main(["run", str(small), "--out", str(small.parent / "r"), "--verify"]) == 2
    assert "train row chunk 3 (rows 300-399)" in capsys.readouterr().err
    chunk.write_bytes(bytes(data[:50]))  # truncated
    assert main(["run", str(small), "--out", str(small.parent / "r")]) == 2
    err = capsys.readouterr().err
    assert "cannot read train/X row chunk 3" in err and "The chunk file is damaged" in err
    assert "Traceback" not in err and not (small.parent / "r").exists()


def test_random_bytes_in_a_compressed_chunk_are_named(tmp_path, capsys):
    X, y, Xt, yt = _data(300, 3)
    rifscale.ingest(tmp_path / "c.zarr", train_X=X, train_y=y, test_X=Xt, test_y=yt, chunk_rows=100,
                    compressor="zstd")
    (tmp_path / "c.zarr" / "train" / "X" / "c" / "1" / "0").write_bytes(os.urandom(300))
    assert main(["run", str(tmp_path / "c.zarr"), "--out", str(tmp_path / "r")]) == 2
    assert "cannot read train/X row chunk 1" in capsys.readouterr().err


def test_one_class_and_overflowing_features_are_refused_with_the_fix(tmp_path, capsys):
    X, y, Xt, yt = _data(300, 3)
    rifscale.ingest(tmp_path / "one.zarr", train_X=X, train_y=np.ones(300, np.int8), test_X=Xt, test_y=yt)
    assert main(["run", str(tmp_path / "one.zarr"), "--out", str(tmp_path / "r")]) == 2
    assert "Every training label is 1: with the unpenalised intercept the loss has no finite minimum" in \
        capsys.readouterr().err
    assert main(["run", str(tmp_path / "one.zarr"), "--out", str(tmp_path / "r"), "--no-intercept"]) == 0  # λ > 0
    capsys.readouterr()
    rifscale.ingest(tmp_path / "huge.zarr", train_X=X.astype(np.float64) * 1e200, train_y=y, test_X=Xt, test_y=yt)
    assert main(["run", str(tmp_path / "huge.zarr"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "overflows float64 at the starting point" in err and "Rescale X" in err


def test_bad_inputs_fail_before_any_work_with_exit_2(small, tmp_path, capsys):
    bad_subset = tmp_path / "subset.txt"
    bad_subset.write_text("1\nthree\n")
    t0 = time.perf_counter()
    assert main(["run", str(small), "--out", str(tmp_path / "r"), "--test-subset", str(bad_subset)]) == 2
    assert f"Cannot read the test subset file '{bad_subset}'" in capsys.readouterr().err
    assert main(["run", str(small), "--out", str(tmp_path / "r"), "--workers", "-1"]) == 2
    assert "--workers must be a positive integer; got -1" in capsys.readouterr().err
    assert main(["run", str(small), "--out", str(tmp_path / "r"), "--scheduler", str(tmp_path / "typo.json")]) == 2
    assert f"The scheduler file '{tmp_path / 'typo.json'}' does not exist" in capsys.readouterr().err
    assert main(["run", str(small), "--out", str(tmp_path / "r"), "--scheduler", "tcp://127.0.0.1:1",
                 "--timeout", "2"]) == 2
    assert "Cannot reach the dask scheduler at 'tcp://127.0.0.1:1' within 2 s" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 30  # none of these hangs
    assert not (tmp_path / "r").exists()

    assert main(["run", str(small), "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    for content, message in [("5", "Removal sets must be a mapping"),
                             ('{"a": [1, 2], "a": [3]}', "names the set 'a' more than once")]:
        (tmp_path / "sets.json").write_text(content)
        assert main(["groups", str(tmp_path / "r"), "--sets", str(tmp_path / "sets.json")]) == 2
        assert message in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "r"), "--experiments", "poisoning", "--poison-points", "0"]) == 2
    assert "--poison-points must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "r" / "groups").exists() and not (tmp_path / "r" / "report").exists()


def test_ingest_inputs_object_dtype_duplicate_ids_colons_and_fortran_npz(tmp_path, capsys):
    X, y, Xt, yt = _data(200, 4)
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]] * 200, dtype=object))
    np.save(tmp_path / "y.npy", y)
    assert main(["ingest", str(tmp_path / "o.zarr"), "--train-X", str(tmp_path / "obj.npy"),
                 "--train-y", str(tmp_path / "y.npy")]) == 2
    assert "cannot read" in capsys.readouterr().err
    ids = np.arange(200)
    ids[150] = 7
    with pytest.raises(rifscale.CorpusError, match=r"train/ids holds 1 duplicated value\(s\) \(e.g. 7 at rows 7 and 150\)"):
        rifscale.ingest(tmp_path / "d.zarr", train_X=X, train_y=y, train_ids=ids)
    assert not (tmp_path / "d.zarr").exists()
    odd = tmp_path / "a:b"
    odd.mkdir()
    np.savez(odd / "data.npz", train_X=np.asfortranarray(X), train_y=y)  # stored, Fortran order
    np.savez_compressed(odd / "z.npz", train_X=np.asfortranarray(X), train_y=y)
    for name in ("data.npz", "z.npz"):
        assert main(["ingest", str(tmp_path / f"{name}.zarr"), "--npz", str(odd / name)]) == 0
        assert np.array_equal(rifscale.open_corpus(tmp_path / f"{name}.zarr").train.X.compute(), X)
    assert main(["ingest", str(tmp_path / "t.zarr"), "--train-X", f"{odd / 'data.npz'}:train_X",
                 "--train-y", f"{odd / 'data.npz'}:train_y", "--test-X", f"{odd / 'data.npz'}:train_X",
                 "--test-y", str(tmp_path / "y.npy")]) == 0


def test_train_and_test_of_different_width_leave_nothing_behind(tmp_path, capsys):
    X, y, Xt, yt = _data(100, 4)
    np.savez(tmp_path / "s.npz", train_X=X, train_y=y, test_X=Xt[:, :3], test_y=yt)
    assert main(["ingest", str(tmp_path / "c.zarr"), "--npz", str(tmp_path / "s.npz")]) == 2
    assert "test/X has d = 3 features but train/X has d = 4" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]
    np.savez(tmp_path / "s.npz", train_X=X, train_y=y, test_X=Xt, test_y=yt)
    assert main(["ingest", str(tmp_path / "c.zarr"), "--npz", str(tmp_path / "s.npz")]) == 0  # the retry works


# ---------------------------------------------------------------------------- workers


def test_all_workers_killed_mid_run_is_an_error_within_the_timeout(big, tmp_path, dask_procs):
    corpus, _ = big
    _, sched_file = dask_procs.scheduler()
    worker = dask_procs.worker(sched_file)
    proc = _start(["run", str(corpus), "--out", str(tmp_path / "r"), "--scheduler", str(sched_file),
                   "--timeout", "3", "--persist", "never"])
    try:
        _wait_for_line(proc, "newton iter  0", timeout=120)
        worker.kill()
        t_kill = time.monotonic()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err
    assert "Every worker of" in err and "has been gone for" in err and "run the same command again" in err
    assert time.monotonic() - t_kill < 30
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- scheduled runs


def test_warm_start_from_yesterdays_run_and_the_runs_listing(tmp_path, capsys):
    X, y, Xt, yt = _data(3000, 6, seed=5)
    rifscale.ingest(tmp_path / "old.zarr", train_X=X[:2800], train_y=y[:2800], test_X=Xt, test_y=yt)
    rifscale.ingest(tmp_path / "new.zarr", train_X=X, train_y=y, test_X=Xt, test_y=yt)
    runs = tmp_path / "runs"
    assert main(["run", str(tmp_path / "old.zarr"), "--out", str(runs / "day1")]) == 0
    assert main(["run", str(tmp_path / "new.zarr"), "--out", str(runs / "day2-cold")]) == 0
    assert main(["run", str(tmp_path / "new.zarr"), "--out", str(runs / "day2"), "--warm-start", str(runs / "day1")]) == 0
    capsys.readouterr()
    cold = json.loads((runs / "day2-cold" / "manifest.json").read_text())
    warm = json.loads((runs / "day2" / "manifest.json").read_text())
    assert warm["warm_start"]["run"] == str(runs / "day1") and warm["fit"]["warm_start"] is None
    assert warm["fit"]["n_iter"] < cold["fit"]["n_iter"]  # it started near the optimum
    t_warm = rifscale.open_run(runs / "day2").model.theta
    t_cold = rifscale.open_run(runs / "day2-cold").model.theta
    assert np.max(np.abs(t_warm - t_cold)) / np.max(np.abs(t_cold)) < 1e-8  # the same optimum
    # a warm start from a run on other features is refused, naming the shapes
    rifscale.ingest(tmp_path / "wide.zarr", train_X=np.hstack([X, X[:, :1]]), train_y=y, test_X=np.hstack([Xt, Xt[:, :1]]),
                    test_y=yt)
    assert main(["run", str(tmp_path / "wide.zarr"), "--out", str(runs / "w"), "--warm-start", str(runs / "day1")]) == 2
    assert "has theta of shape (7,)" in capsys.readouterr().err
    # an interrupted run is listed as partial next to the complete ones
    os.rename(runs / "day2-cold", runs / ".day3.partial")
    state = json.loads((runs / ".day3.partial" / "manifest.json").read_text())
    (runs / ".day3.partial" / "manifest.json").write_text(json.dumps({**state, "status": "partial"}))
    assert main(["runs", str(runs), "--json"]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"day1", "day2", ".day3.partial"}
    assert rows["day1"]["status"] == "complete" and rows[".day3.partial"]["status"] == "partial"
    assert rows["day2"]["n"] == 3000 and rows["day1"]["n"] == 2800 and rows["day2"]["lam"] == 1.0


def test_kill_during_validate_resumes_after_the_finished_batches_bit_for_bit(big, tmp_path):
    import shutil

    corpus, ref = big
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(ref, a)
    shutil.copytree(ref, b)
    args = ["--experiments", "accuracy", "--n-sizes", "6", "--batch-sets", "6", "--workers", "1"]
    done = subprocess.run(CLI + ["validate", str(a)] + args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    proc = _start(["validate", str(b)] + args)
    _wait_for_path(b / ".validation.partial" / "accuracy-00001.npz", proc)
    proc.kill()
    proc.communicate()
    assert not (b / "validation").exists() and not (b / "report").exists()
    again = subprocess.run(CLI + ["validate", str(b)] + args, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    reused = again.stderr.count("reusing finished accuracy batch")
    assert 2 <= reused < 5  # the finished batches, not the unfinished ones
    assert "reusing finished accuracy batch 0 (6 retrains)" in again.stderr
    assert not (b / ".validation.partial").exists()  # served, then removed

    def arrays(run):
        g = zarr.open_group(str(run / "validation"), mode="r")
        return {k: np.asarray(g[k][...]).tobytes() for k in ("sets/indices", "sets/offsets", "exact/delta_theta")}

    assert arrays(a) == arrays(b)
    attrs = zarr.open_group(str(b / "validation"), mode="r").attrs.asdict()
    assert attrs["records"]["checkpoint_batches_reused"] == reused
