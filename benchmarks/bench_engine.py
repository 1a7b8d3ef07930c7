#!/usr/bin/env python
"""End-to-end engine benchmark of rifscale on a local 2-process Dask cluster.

Runs on ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
dashboard_address=None)``. Measures, for synthetic corpora of n rows x d = 100 features
(float32, 50 000-row chunks):

* ingest wall time (``rifscale.ingest`` from in-memory arrays) and rows/s;
* ``attribute(...)`` + ``Attribution.to_zarr(...)`` wall time, split into the stages the
  engine records (``fit``, ``factor``, ``metrics``, ``scores``) plus ``open`` (open and
  validate the corpus) and ``other`` (the remainder: graph building, broadcast, manifest);
* throughput of one Newton pass (L, grad, H at the fitted theta) and of the scores pass
  (as run by ``to_zarr``, and compute-only without the Zarr store);
* the driver's peak Python allocation (tracemalloc) and peak RSS growth during
  attribute + to_zarr, in a separate run so tracing does not slow the timed ones;
* a side-by-side check at n = 50 000 of the engine against the dense NumPy reference
  ``rifscale.testing.Reference`` (time, and max relative difference of leverage and of the
  IF/RIF scores for ``test_loss`` over all test rows). The reference runs in a child
  process, once with 1 BLAS thread and once with the BLAS threads the benchmark was
  started with (OpenBLAS default: all cores), interleaved with the engine runs.

Every timing is repeated (3 times by default) and reported as median, min and max.
Before each timed run the script waits (at most 90 s) for other processes to leave the
CPUs alone, and records the CPU share they used during the run ("other load").

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_engine.py            # full run, 4-5 minutes on 2 quiet cores
    .venv/bin/python benchmarks/bench_engine.py --quick    # smoke run, n in {20k, 80k}, 1 repeat

Writes ``benchmarks/results/engine-<date>.json`` (``engine-<date>-quick.json`` with
``--quick``) and a Markdown summary with the same name and suffix ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FULL_SIZES = (50_000, 200_000, 800_000)
QUICK_SIZES = (20_000, 80_000)
D = 100
CHUNK_ROWS = 50_000
N_TEST = 5_000
LAM = 1.0
N_WORKERS = 2
COMPARE_N = 50_000
QUICK_COMPARE_N = 20_000
ENV_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_VERBOSE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "MALLOC_TRIM_THRESHOLD_",
)


def _env() -> dict:
    return {k: os.environ.get(k) for k in ENV_VARS}


#: The driver's BLAS/thread variables as started. A LocalCluster's nanny writes its
#: pre-spawn-environ (OPENBLAS_NUM_THREADS=1, ...) into this process's os.environ, so
#: they are read here, before any cluster exists.
START_ENV = _env()


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summary(values) -> dict:
    values = [float(v) for v in values]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _blas() -> dict:
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return {k: cfg.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception as exc:  # older numpy: no mode="dicts"
        return {"error": repr(exc)}


def source_info() -> dict:
    """The commit the benchmarked code is at, and whether rifscale/ had local changes."""
    import subprocess

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    changed = git("status", "--porcelain", "--", "rifscale")
    return {"commit": git("rev-parse", "HEAD"), "rifscale_locally_modified": bool(changed) if changed is not None else None}


def machine_info(client) -> dict:
    import dask
    import distributed
    import psutil
    import scipy
    import zarr

    import rifscale

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    workers = client.run(_env)
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_in_affinity": affinity,
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {
            "rifscale": rifscale.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "dask": dask.__version__,
            "distributed": distributed.__version__,
            "zarr": zarr.__version__,
            "psutil": psutil.__version__,
        },
        "blas": _blas(),
        "env_driver": START_ENV,
        # distributed's nanny sets these in each worker process (pre-spawn-environ)
        "env_workers": next(iter(workers.values())) if workers else None,
    }


# --------------------------------------------------------------------------- memory


class RssPeak:
    """Peak resident set size of this process above its value at entry (sampled)."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.base = self.peak = 0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.base = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.base


class OtherLoad:
    """How busy the machine was with *other* processes during a section: machine-wide
    busy CPU time minus the CPU time of this benchmark's process tree (driver, workers,
    reference children), as a share of wall time x CPUs. Near 0 on a quiet machine; the
    timings of a section with a large share are inflated by contention."""

    def __init__(self):
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()

    def _busy(self) -> float:
        t = self._psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def _own(self) -> float:
        total = 0.0
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
            except self._psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def __enter__(self):
        self._t, self._busy0, self._own0 = time.perf_counter(), self._busy(), self._own()
        self.load_start = os.getloadavg()[0]
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._t
        other = (self._busy() - self._busy0) - (self._own() - self._own0)
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.share = max(other, 0.0) / (wall * ncpu)
        self.load_end = os.getloadavg()[0]

    def record(self) -> dict:
        return {
            "other_processes_cpu_share": round(self.share, 3),
            "loadavg_1min_start": self.load_start,
            "loadavg_1min_end": self.load_end,
        }


# --------------------------------------------------------------------------- stages


#: Before each timed repeat, wait (at most QUIET_MAX_WAIT s) until other processes use
#: under QUIET_SHARE of the CPUs over a QUIET_WINDOW-second window (see --no-wait).
QUIET_SHARE, QUIET_WINDOW, QUIET_MAX_WAIT = 0.10, 2.0, 90.0
WAIT_FOR_QUIET = True


def wait_quiet() -> float:
    """Seconds spent waiting for the machine to be quiet (0 when it already was)."""
    if not WAIT_FOR_QUIET:
        return 0.0
    t = time.perf_counter()
    while time.perf_counter() - t < QUIET_MAX_WAIT:
        with OtherLoad() as load:
            time.sleep(QUIET_WINDOW)
        if load.share < QUIET_SHARE:
            break
    waited = time.perf_counter() - t - QUIET_WINDOW
    if waited > 1:
        say(f"waited {waited:.0f} s for other processes to quieten down")
    return max(waited, 0.0)


def run_engine(path: Path, out: Path, client, **config) -> dict:
    """open + attribute + to_zarr once; wall times of every stage."""
    import rifscale

    gc.collect()
    waited = wait_quiet()
    with OtherLoad() as load:
        t0 = time.perf_counter()
        corpus = rifscale.open_corpus(path)
        t1 = time.perf_counter()
        res = rifscale.attribute(corpus, client=client, lam=LAM, **config)
        t2 = time.perf_counter()
        res.to_zarr(out)
        t3 = time.perf_counter()
    stages = {"open": t1 - t0}
    stages.update({k: float(res.timings[k]) for k in ("fit", "factor", "metrics", "scores")})
    stages["other"] = (t3 - t1) - sum(res.timings[k] for k in ("fit", "factor", "metrics", "scores"))
    return {
        "total": t3 - t0,
        "attribute": t2 - t1,
        "to_zarr": t3 - t2,
        "stages": stages,
        "n_iter": res.fit.n_iter,
        "n_passes": res.fit.n_passes,
        "stopped_at": res.fit.stopped_at,
        "fit_seconds_per_pass": res.fit.seconds / res.fit.n_passes,
        "other_load": round(load.share, 3),
        "waited_for_quiet_seconds": round(waited, 1),
        "result": res,
    }


def bench_size(n: int, client, tmp: Path, repeats: int) -> dict:
    import rifscale
    from rifscale.engine.hessian import objective
    from rifscale.testing import make_problem

    say(f"n = {n:,}: generating")
    pr = make_problem(n, D, n_test=N_TEST, seed=n, dtype=np.float32)

    ingest_times, path, prev = [], None, None
    for k in range(repeats):
        path = tmp / f"corpus-{n}-{k}.zarr"
        gc.collect()
        t = time.perf_counter()
        rifscale.ingest(
            path,
            train_X=pr.X,
            train_y=pr.y,
            test_X=pr.X_test,
            test_y=pr.y_test,
            chunk_rows=CHUNK_ROWS,
            dtype="float32",
        )
        ingest_times.append(time.perf_counter() - t)
        if prev is not None:
            shutil.rmtree(prev)
        prev = path
    say(f"n = {n:,}: ingest {statistics.median(ingest_times):.2f} s")
    raw_X_bytes = pr.X.nbytes + pr.X_test.nbytes
    del pr
    gc.collect()
    corpus_bytes = dir_bytes(path)

    runs = []
    for k in range(repeats):
        out = tmp / f"run-{n}-{k}"
        r = run_engine(path, out, client)
        if k == repeats - 1:
            run_bytes = dir_bytes(out)
        shutil.rmtree(out)
        runs.append(r)
        say(
            f"n = {n:,}: repeat {k + 1}/{repeats}: total {r['total']:.2f} s  "
            + "  ".join(f"{s} {v:.2f}" for s, v in r["stages"].items())
            + f"  ({r['n_passes']} passes; other load {r['other_load']:.0%})"
        )
    res = runs[-1]["result"]
    corpus = res.corpus

    # one Newton pass (L, grad, H) at the fitted theta, on its own
    newton, loads = [], []
    for _ in range(repeats):
        gc.collect()
        wait_quiet()
        with OtherLoad() as load:
            t = time.perf_counter()
            objective(corpus.train.X, corpus.train.y, res.theta, lam=LAM, fit_intercept=True)
            newton.append(time.perf_counter() - t)
        loads.append(load.share)

    # the scores pass without writing anything: every block computed, summed to one row
    compute_only = []
    for _ in range(repeats):
        gc.collect()
        wait_quiet()
        with OtherLoad() as load:
            t = time.perf_counter()
            res.scores.table.sum(axis=0).compute()
            compute_only.append(time.perf_counter() - t)
        loads.append(load.share)
    del runs[-1]["result"], res, corpus
    for r in runs:
        r.pop("result", None)

    # driver memory, in a run of its own (tracemalloc slows allocation-heavy code)
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    with RssPeak() as rss:
        mem_run = run_engine(path, tmp / f"run-{n}-mem", client)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mem_run.pop("result")
    shutil.rmtree(tmp / f"run-{n}-mem")
    shutil.rmtree(path)
    say(f"n = {n:,}: driver peak tracemalloc {traced_peak / 2**20:.1f} MiB, RSS growth {rss.growth / 2**20:.1f} MiB")

    stage_names = runs[0]["stages"].keys()
    scores = summary([r["stages"]["scores"] for r in runs])
    newton_s = summary(newton)
    ingest_s = summary(ingest_times)
    return {
        "n": n,
        "d": D,
        "chunks": -(-n // CHUNK_ROWS),
        "raw_X_bytes": raw_X_bytes,
        "corpus_bytes_on_disk": corpus_bytes,
        "run_bytes_on_disk": run_bytes,
        "ingest_seconds": ingest_s,
        "ingest_rows_per_s": (n + N_TEST) / ingest_s["median"],
        "ingest_MB_per_s": raw_X_bytes / 1e6 / ingest_s["median"],
        "total_seconds": summary([r["total"] for r in runs]),
        "attribute_seconds": summary([r["attribute"] for r in runs]),
        "to_zarr_seconds": summary([r["to_zarr"] for r in runs]),
        "stage_seconds": {s: summary([r["stages"][s] for r in runs]) for s in stage_names},
        "n_iter": [r["n_iter"] for r in runs],
        "n_passes": [r["n_passes"] for r in runs],
        "stopped_at": [r["stopped_at"] for r in runs],
        "fit_seconds_per_pass": summary([r["fit_seconds_per_pass"] for r in runs]),
        "newton_pass_seconds": newton_s,
        "newton_pass_rows_per_s": n / newton_s["median"],
        "scores_pass_rows_per_s": n / scores["median"],
        "scores_compute_only_seconds": summary(compute_only),
        "scores_compute_only_rows_per_s": n / statistics.median(compute_only),
        # CPU share of other processes during each timed end-to-end repeat, and the worst
        # one over every timed measurement of this size (end to end, Newton, compute-only)
        "other_load_per_repeat": [r["other_load"] for r in runs],
        "other_load_max": round(max([r["other_load"] for r in runs] + loads), 3),
        "waited_for_quiet_seconds": [r["waited_for_quiet_seconds"] for r in runs],
        "driver_peak_tracemalloc_bytes": traced_peak,
        "driver_rss_growth_bytes": rss.growth,
        "memory_run_total_seconds": mem_run["total"],
    }


def warm_up(client, tmp: Path) -> float:
    """One small unrecorded run, so imports and first-call costs on the workers (SciPy for
    the factor task, Zarr codecs) do not land in the first measured repeat."""
    import rifscale
    from rifscale.testing import make_problem

    t = time.perf_counter()
    pr = make_problem(10_000, D, n_test=1_000, seed=1, dtype=np.float32)
    path = tmp / "warmup.zarr"
    rifscale.ingest(path, train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=CHUNK_ROWS // 10)
    run_engine(path, tmp / "warmup-run", client)
    shutil.rmtree(tmp / "warmup-run")
    shutil.rmtree(path)
    return time.perf_counter() - t


def _errors(engine: np.ndarray, ref: np.ndarray) -> dict:
    engine, ref = np.asarray(engine, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    diff = np.abs(engine - ref)
    nz = ref != 0
    return {
        # max |a - b| / max |b|: the scale-aware error the test suite uses
        "max_abs_over_max_ref": float(diff.max() / np.abs(ref).max()),
        # max over entries of |a - b| / |b|: inflated by entries near zero
        "max_elementwise_rel": float(np.max(diff[nz] / np.abs(ref[nz]))),
        "median_elementwise_rel": float(np.median(diff[nz] / np.abs(ref[nz]))),
        "nan_engine": int(np.isnan(engine).sum()),
    }


def reference_worker(spec_file: str) -> int:
    """Child process: time the dense reference on make_problem(n, seed) and save its results.

    The reference runs in a child so that its BLAS thread count can be set per run
    (OpenBLAS reads OPENBLAS_NUM_THREADS once, at import)."""
    from rifscale.testing import Reference, make_problem

    spec = json.loads(Path(spec_file).read_text())
    pr = make_problem(spec["n"], D, n_test=N_TEST, seed=spec["seed"], dtype=np.float32)
    gc.collect()
    t0 = time.perf_counter()
    ref = Reference(pr.X, pr.y, lam=LAM)  # Newton fit, H^-1, leverage, per-sample gradients
    t1 = time.perf_counter()
    s_if, s_rif = ref.scores("test_loss", pr.X_test, pr.y_test)
    t2 = time.perf_counter()
    out = {"fit_and_leverage": t1 - t0, "scores": t2 - t1, "total": t2 - t0}
    if spec.get("arrays"):
        np.savez(spec["arrays"], theta=ref.theta, h=ref.h, s_if=s_if, s_rif=s_rif)
    if spec.get("memory"):
        del ref, s_if, s_rif
        gc.collect()
        tracemalloc.start()
        tracemalloc.reset_peak()
        ref = Reference(pr.X, pr.y, lam=LAM)
        ref.scores("test_loss", pr.X_test, pr.y_test)
        out["peak_tracemalloc_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    Path(spec["out"]).write_text(json.dumps(out))
    return 0


def _run_reference(tmp: Path, n: int, seed: int, threads: str | None, *, arrays=None, memory=False) -> dict:
    import subprocess

    spec = {"n": n, "seed": seed, "out": str(tmp / "ref-out.json"), "arrays": arrays, "memory": memory}
    (tmp / "ref-spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update({k: v for k, v in START_ENV.items() if v is not None})  # undo the nanny's changes
    if threads is not None:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--reference-worker", str(tmp / "ref-spec.json")],
                   env=env, check=True)
    return json.loads((tmp / "ref-out.json").read_text())


def compare_reference(n: int, client, tmp: Path, repeats: int) -> dict:
    """Dense NumPy reference vs the engine, on the same float32 data, side by side: each
    repeat runs the reference with 1 BLAS thread, with the driver's BLAS setting (OpenBLAS
    default: all cores), then the engine."""
    import zarr

    import rifscale
    from rifscale.testing import make_problem

    say(f"comparison at n = {n:,}")
    seed = 12345
    pr = make_problem(n, D, n_test=N_TEST, seed=seed, dtype=np.float32)
    path = tmp / f"compare-{n}.zarr"
    rifscale.ingest(path, train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test, chunk_rows=CHUNK_ROWS)
    del pr
    config = {"test_subset": "all", "metrics": ("test_loss",)}
    default_threads = START_ENV.get("OPENBLAS_NUM_THREADS")
    ref_runs = {"1": [], "default": []}
    eng_total, eng_stages, eng_loads = [], [], []
    out = tmp / f"compare-run-{n}"
    arrays = tmp / "ref-arrays.npz"
    ref_loads = []
    for k in range(repeats):
        last = k == repeats - 1
        for threads, key in (("1", "1"), (None, "default")):
            wait_quiet()
            with OtherLoad() as load:
                ref_runs[key].append(
                    _run_reference(tmp, n, seed, threads, arrays=str(arrays) if last and threads else None,
                                   memory=bool(last and threads))
                )
            ref_loads.append(load.share)
        if out.exists():
            shutil.rmtree(out)
        r = run_engine(path, out, client, **config)
        r.pop("result")
        eng_total.append(r["total"])
        eng_stages.append(r["stages"])
        eng_loads.append(r["other_load"])
        say(
            f"comparison repeat {k + 1}/{repeats}: reference {ref_runs['1'][-1]['total']:.2f} s (1 BLAS thread), "
            f"{ref_runs['default'][-1]['total']:.2f} s (OPENBLAS_NUM_THREADS={default_threads}); "
            f"engine {r['total']:.2f} s"
        )

    ref = np.load(arrays)
    run = zarr.open_group(str(out / "scores"), mode="r")
    theta = np.asarray(zarr.open_group(str(out / "model"), mode="r")["theta"][...])
    errors = {
        "theta": _errors(theta, ref["theta"]),
        "leverage": _errors(run["leverage"][...], ref["h"]),
        "if_test_loss": _errors(run["if/test_loss"][...], ref["s_if"]),
        "rif_test_loss": _errors(run["rif/test_loss"][...], ref["s_rif"]),
    }
    h_max = float(ref["h"].max())
    shutil.rmtree(out)
    shutil.rmtree(path)

    def ref_summary(runs):
        return {key: summary([r[key] for r in runs]) for key in ("fit_and_leverage", "scores", "total")}

    return {
        "n": n,
        "d": D,
        "n_test": N_TEST,
        "lam": LAM,
        "engine_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "data": "make_problem(seed=12345) stored as float32; the reference gets the same float32 values (as float64)",
        "reference_1_thread_seconds": ref_summary(ref_runs["1"]),
        "reference_default_threads_seconds": ref_summary(ref_runs["default"]),
        "reference_default_threads_env": default_threads,
        "engine_total_seconds": summary(eng_total),
        "engine_stage_seconds": {s: summary([st[s] for st in eng_stages]) for s in eng_stages[0]},
        "engine_over_reference_1_thread": statistics.median(
            e / r["total"] for e, r in zip(eng_total, ref_runs["1"])
        ),
        "engine_over_reference_default_threads": statistics.median(
            e / r["total"] for e, r in zip(eng_total, ref_runs["default"])
        ),
        "reference_peak_tracemalloc_bytes": ref_runs["1"][-1]["peak_tracemalloc_bytes"],
        "other_load_engine_per_repeat": eng_loads,
        "other_load_reference_per_run": [round(x, 3) for x in ref_loads],
        "other_load_max": round(max(eng_loads + ref_loads), 3),
        "max_leverage": h_max,
        "errors": errors,
    }


# --------------------------------------------------------------------------- report


def _fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.0f} k"


def markdown(result: dict) -> str:
    m = result["machine"]
    cfg = result["config"]
    lines = [
        f"# rifscale engine benchmark, {result['date']}{' (quick)' if result['quick'] else ''}",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus_in_affinity']} CPUs, {m['ram_gib']} GiB RAM; "
        f"Python {m['python']}, NumPy {m['versions']['numpy']} ({m['blas'].get('name')}), "
        f"Dask {m['versions']['dask']}, Zarr {m['versions']['zarr']}.",
        f"Code: commit {(result.get('source') or {}).get('commit', '?')[:10]}"
        f"{' + local changes in rifscale/' if (result.get('source') or {}).get('rifscale_locally_modified') else ''}.",
        f"LocalCluster: {cfg['workers']} worker processes x {cfg['threads_per_worker']} thread, no dashboard "
        f"(worker env OPENBLAS_NUM_THREADS={(m['env_workers'] or {}).get('OPENBLAS_NUM_THREADS')}). "
        f"d = {cfg['d']}, float32, {cfg['chunk_rows']:,}-row chunks, {cfg['n_test']:,} test rows, "
        f"lam = {cfg['lam']}, default RunConfig (test_subset \"paper\", both metrics).",
        f"Median of {cfg['repeats']} repeat(s), seconds. Full numbers (min/max, every repeat) in the JSON.",
        "",
        "| n | chunks | ingest | open | fit (passes) | factor | metrics | scores | other | **total** "
        "| Newton pass | scores pass | driver peak (tracemalloc / RSS growth) | other load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["sizes"]:
        st = {k: v["median"] for k, v in s["stage_seconds"].items()}
        passes = sorted(set(s["n_passes"]))
        lines.append(
            f"| {s['n']:,} | {s['chunks']} | {s['ingest_seconds']['median']:.2f} "
            f"| {st['open']:.2f} | {st['fit']:.2f} ({'/'.join(map(str, passes))}) | {st['factor']:.2f} "
            f"| {st['metrics']:.2f} | {st['scores']:.2f} | {st['other']:.2f} "
            f"| **{s['total_seconds']['median']:.2f}** "
            f"| {s['newton_pass_seconds']['median']:.2f} ({_fmt_rate(s['newton_pass_rows_per_s'])} rows/s) "
            f"| {_fmt_rate(s['scores_pass_rows_per_s'])} rows/s "
            f"| {s['driver_peak_tracemalloc_bytes'] / 2**20:.1f} / {s['driver_rss_growth_bytes'] / 2**20:.0f} MiB "
            f"| {s['other_load_max']:.0%} |"
        )
    lines += [
        "",
        "Ingest rows/s (train + test rows): "
        + ", ".join(f"n = {s['n']:,}: {_fmt_rate(s['ingest_rows_per_s'])}" for s in result["sizes"])
        + ". Scores pass compute-only (no Zarr store): "
        + ", ".join(
            f"n = {s['n']:,}: {_fmt_rate(s['scores_compute_only_rows_per_s'])} rows/s" for s in result["sizes"]
        )
        + ".",
        "\"other load\": the largest CPU share used by processes outside the benchmark during any timed "
        "measurement of that row (0% = quiet machine).",
    ]
    c = result.get("comparison")
    if c:
        e = c["errors"]
        lines += [
            "",
            f"## Engine vs dense NumPy reference, n = {c['n']:,}, d = {c['d']}, test_subset \"all\", metric test_loss",
            "",
            "| | median s (min-max) |",
            "|---|---:|",
        ]
        for label, key in (("1 BLAS thread", "reference_1_thread_seconds"),
                           (f"OPENBLAS_NUM_THREADS={c['reference_default_threads_env']}" if c["reference_default_threads_env"]
                            else "OpenBLAS default threads",
                            "reference_default_threads_seconds")):
            r = c[key]
            lines += [
                f"| reference ({label}): fit + H^-1 + leverage | {r['fit_and_leverage']['median']:.2f} |",
                f"| reference ({label}): scores | {r['scores']['median']:.3f} |",
                f"| **reference total ({label})** | **{r['total']['median']:.2f}** "
                f"({r['total']['min']:.2f}-{r['total']['max']:.2f}) |",
            ]
        et = c["engine_total_seconds"]
        lines += [
            f"| **engine total** (open + attribute + to_zarr, 2 workers x 1 thread) | **{et['median']:.2f}** "
            f"({et['min']:.2f}-{et['max']:.2f}) |",
            "",
            "Engine / reference wall time, median of per-repeat ratios: "
            f"{c['engine_over_reference_1_thread']:.2f} (reference on 1 BLAS thread), "
            f"{c['engine_over_reference_default_threads']:.2f} (reference on the default BLAS threads). "
            f"Reference driver peak (tracemalloc): {c['reference_peak_tracemalloc_bytes'] / 2**20:.0f} MiB. "
            f"Other load (max over the timed runs): {c['other_load_max']:.0%}.",
            "",
            "| quantity | max abs diff / max abs ref | max elementwise rel | median elementwise rel |",
            "|---|---:|---:|---:|",
        ]
        for name, v in e.items():
            lines.append(
                f"| {name} | {v['max_abs_over_max_ref']:.1e} | {v['max_elementwise_rel']:.1e} "
                f"| {v['median_elementwise_rel']:.1e} |"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n in {20k, 80k}, 1 repeat, comparison at n = 20k")
    ap.add_argument("--out", type=Path, help="result JSON path (the .md summary goes beside it)")
    ap.add_argument("--repeats", type=int, help="repeats per timing (default 3; 1 with --quick)")
    ap.add_argument("--sizes", type=lambda s: tuple(int(float(x)) for x in s.split(",")), help="comma-separated n values")
    ap.add_argument("--compare-n", type=int, help="n of the reference comparison (0 skips it)")
    ap.add_argument("--tmpdir", type=Path, help="where corpora and runs are written (default: system temp)")
    ap.add_argument("--no-wait", action="store_true",
                    help="do not wait for other processes to quieten down before each timed run")
    ap.add_argument("--reference-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global WAIT_FOR_QUIET
    WAIT_FOR_QUIET = not args.no_wait
    if args.reference_worker:
        return reference_worker(args.reference_worker)

    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    repeats = args.repeats or (1 if args.quick else 3)
    compare_n = args.compare_n if args.compare_n is not None else (QUICK_COMPARE_N if args.quick else COMPARE_N)
    date = _dt.date.today().isoformat()
    out = args.out or HERE / "results" / f"engine-{date}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    from distributed import Client, LocalCluster

    started = time.perf_counter()
    result = {
        "benchmark": "rifscale engine",
        "date": date,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": args.quick,
        "config": {
            "sizes": list(sizes),
            "d": D,
            "dtype": "float32",
            "chunk_rows": CHUNK_ROWS,
            "n_test": N_TEST,
            "lam": LAM,
            "run_config": "RunConfig defaults (test_subset 'paper', metrics test_loss + test_prediction, tol 1e-10)",
            "workers": N_WORKERS,
            "threads_per_worker": 1,
            "repeats": repeats,
            "compare_n": compare_n,
            "wait_for_quiet": {"enabled": not args.no_wait, "max_other_share": QUIET_SHARE,
                               "window_s": QUIET_WINDOW, "max_wait_s": QUIET_MAX_WAIT},
        },
    }
    with tempfile.TemporaryDirectory(prefix="rifscale-bench-", dir=args.tmpdir) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        with LocalCluster(
            n_workers=N_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster, Client(cluster) as client:
            result["cluster_start_seconds"] = time.perf_counter() - t
            nthreads = client.nthreads()
            assert len(nthreads) == N_WORKERS and set(nthreads.values()) == {1}, nthreads
            result["machine"] = machine_info(client)
            result["source"] = source_info()
            say(f"cluster up in {result['cluster_start_seconds']:.1f} s: {nthreads}")
            result["warm_up_seconds"] = warm_up(client, tmp)
            result["sizes"] = []
            for n in sizes:
                with OtherLoad() as load:
                    entry = bench_size(n, client, tmp, repeats)
                entry["contention"] = load.record()
                say(f"n = {n:,}: other processes used {load.share:.0%} of the CPUs meanwhile")
                result["sizes"].append(entry)
            if compare_n:
                with OtherLoad() as load:
                    result["comparison"] = compare_reference(compare_n, client, tmp, repeats)
                result["comparison"]["contention"] = load.record()
                say(f"comparison: other processes used {load.share:.0%} of the CPUs meanwhile")
    result["benchmark_wall_seconds"] = time.perf_counter() - started

    out.write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md)
    say(f"wrote {out.name} and {out.with_suffix('.md').name} in {out.parent} "
        f"({result['benchmark_wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
