"""The benchmark scripts stay runnable: each is run on tiny sizes (timings not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_with_the_numpy_standin(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--numpy-standin", "--n", "6000", "--d", "16",
         "--block-rows", "2000", "--gemm-size", "256", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["all_ok"] and len(res["checks"]) >= 15
    assert res["speed"]["hessian_float64_s"] > 0 and res["speed"]["leverage_pass_s"] > 0


def test_gpu_check_without_a_device_says_so():
    from rifscale.engine.factor import gpu_available

    if gpu_available():
        return
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


@pytest.mark.cluster
def test_worker_memory_benchmark_runs_on_tiny_corpora(tmp_path):
    """benchmarks/bench_worker_memory.py --quick: a peak per worker above its idle RSS,
    the engine's block rows from the manifest, and the Markdown table."""
    out = tmp_path / "mem.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_worker_memory.py"), "--quick",
                           "--out", str(out), "--tmpdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert [r["persisted"] for r in res["records"]] == [False, True]
    for r in res["records"]:
        assert r["block_rows"] == 2000 and len(r["worker_peak_bytes"]) == 2
        assert min(r["worker_peak_bytes"]) > max(r["worker_idle_bytes"]) > 0
    text = out.with_suffix(".md").read_text()
    assert "| 6,000 | 16 | 2 | 17 | float32 | 2,000 | 2,000 | streamed |" in text and str(tmp_path) not in text
    # --softmax: four classes (P = 4 · 17 − 1), predicted from the committed binary fit with P for p
    soft = tmp_path / "soft.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_worker_memory.py"), "--softmax", "--quick",
                           "--out", str(soft), "--tmpdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (r,) = json.loads(soft.read_text())["records"]
    assert r["model"] == "softmax" and r["classes"] == 4 and r["p"] == 67
    assert "| 6,000 | 16 | 4 | 67 | float32 |" in soft.with_suffix(".md").read_text()


def test_cluster_benchmark_refuses_more_workers_than_cores_naming_them(tmp_path):
    """Timing 3 single-threaded workers on 2 cores would report contention as scale-out."""
    import os

    cores = len(os.sched_getaffinity(0))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cluster.py"), "--cases", "none",
                           "--workers", f"1,{cores + 1}", "--out", str(tmp_path / "c.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and not (tmp_path / "c.json").exists()
    assert f"asks for {cores + 1} single-threaded workers on a machine with {cores} cores" in proc.stderr
    assert "--oversubscribe" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # about 80 s: it starts three clusters and a LocalCluster per mode
def test_cluster_benchmark_runs_every_table_on_tiny_sizes(tmp_path):
    out = tmp_path / "cluster.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cluster.py"), "--cases", "3000x8",
                           "--workers", "1", "--rows-per-worker", "3000", "--weak-d", "8", "--repeats", "1",
                           "--no-wait", "--tmpdir", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["modes"][0]["wall_s"]) == {"threads", "processes", "external"}
    assert res["strong"][0]["speedup"] == 1.0 and res["weak"][0]["efficiency"] == 1.0
    assert res["session"]["chunk_files_spoiled"] > 0  # and the session's second call still ran
    # the client's traffic per pass stays within 4 W p² 8 bytes, plus small messages (task
    # reports, the workers' list): at p = 9 those are most of it
    for row in res["strong"] + res["weak"]:
        assert row["traffic"]["received_max"] <= row["bound_bytes"] + 64 * 1024
    assert "## Strong scaling" in out.with_suffix(".md").read_text()


def test_cpu_by_process_runs_and_accounts_every_process(tmp_path):
    """The per-process CPU profile on a tiny corpus: every process and the client's threads
    accounted (a worker missing, or the client's BLAS threads not split out, would hide
    where a cluster's CPU goes)."""
    import rifscale
    from rifscale.testing import make_problem

    pr = make_problem(2000, 6, n_test=100, seed=2)
    rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test,
                    chunk_rows=500)
    out = tmp_path / "cpu"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_by_process.py"), str(tmp_path / "c.zarr"),
                           "--workers", "2", "--repeats", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.with_suffix(".json").read_text())
    assert len(res["runs"]) == 2 and res["median_warm"]["wall_s"] > 0
    run = res["runs"][-1]
    assert {"client_cpu_s", "scheduler_cpu_s", "worker 0_cpu_s", "worker 1_cpu_s"} <= set(run)
    assert run["worker 0_cpu_s"] > 0 and run["worker 1_cpu_s"] > 0 and "MainThread" in run["client_threads_cpu_s"]
    assert "| repeat | wall | client CPU |" in out.with_suffix(".md").read_text()


@pytest.mark.slow  # about 30 s: two tunes, a run and scikit-learn's 5-fold CV, each in a child process
def test_tune_benchmark_runs_on_tiny_sizes(tmp_path):
    out = tmp_path / "tune.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_tune.py"), "--n", "3000", "--d", "8",
                           "--exact-loo", "5", "--no-wait", "--quick", "--tmpdir", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["repeats"]
    assert len(row["tune"]["lams"]) == 13 and row["tune"]["lams"] == row["tune_no_exact"]["lams"]
    lams = row["tune"]["lams"]
    assert row["tune"]["lam"] in lams and min(abs(row["sklearn"]["lam"] / lam - 1) for lam in lams) < 1e-12
    assert row["ratios"]["sklearn_over_tune"] > 0 and row["ratios"]["tune_over_run"] > 0
    assert row["ratios"]["sklearn_defaults_over_tune"] > 0 and row["sklearn_defaults"]["fit_s"] > 0
    assert "| 0 |" in out.with_suffix(".md").read_text() and str(tmp_path) not in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_bench_softmax_runs_on_tiny_sizes(tmp_path):
    """benchmarks/bench_softmax.py with its dense NumPy peer: writes its JSON and Markdown, and
    the peer's RIF agrees with rifscale's to scikit-learn's tolerance."""
    out = tmp_path / "softmax.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_softmax.py"), "--n", "1500", "--d", "6",
                           "--K", "3", "--chunk-rows", "500", "--block-rows", "500", "--peer-scores", "--out",
                           str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["softmax"]["certified"] and res["hessian_block"]["stacked_vs_grams_rel"] < 1e-12
    assert res["peer_scores"]["rif_rel_to_rifscale"] < 1e-4 and res["sklearn"]["rel_W"] < 1e-4
    assert out.with_suffix(".md").read_text().startswith("# bench_softmax")


def test_ab_run_children_import_the_tree_they_are_meant_to_run(tmp_path, monkeypatch):
    """`python -c` puts the working directory before PYTHONPATH: started from a checkout's
    root, both sides of an A/B imported that checkout. Each side's child imports its tree."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import ab_run

    tree = tmp_path / "tree"
    (tree / "rifscale").mkdir(parents=True)
    (tree / "rifscale" / "__init__.py").write_text("")
    monkeypatch.chdir(ROOT)  # a checkout's root, with its own rifscale/
    ab_run.check_tree(tree)
    with pytest.raises(SystemExit, match="imports rifscale from"):
        ab_run.check_tree(tmp_path)  # no rifscale there: the installed one is not the tree's
