#!/usr/bin/env python
"""rifscale at scale: the `rifscale run` CLI against an in-memory BLAS floor and against
the tools a user would otherwise reach for.

Two tables from one run, every timing repeated (3 times by default) with the sides
interleaved in each repeat; tables show medians, min-max and ratios of medians. A third,
beyond RAM, only when asked for (``--beyond-ram NxD``).

* **floor ratio**, for (n, d) in {2e5, 1e6} x {384, 768} and (2e5, 1024): wall time of
  ``rifscale run CORPUS --out RUN --lam 1`` in a subprocess (imports, any cluster
  start-up, fit, factor, scores, store: what a user waits for) against the float64
  floor: in a child process with all cores, ONE Hessian GEMM ``(Z * alpha[:, None]).T @ Z``
  plus ONE leverage GEMM ``Z @ Linv.T`` on the training data held in memory
  (Z = [X, 1], n x (d+1)); the floor is the sum of those two timings only.
* **peers** at n = 1e5, d = 256, on the same corpus: rifscale (lam = 1 and lam = 0, both
  with ``--test-subset all --metrics test_loss``); scikit-learn ``LogisticRegression``
  (newton-cholesky, tol 1e-10) + dense NumPy H, Cholesky, leverage and IF/RIF scores;
  statsmodels ``GLM(Binomial)`` + ``get_influence()`` (hat diagonal and ``d_params``) at
  lam = 0; dask-ml ``LogisticRegression`` (its default solver and ``newton``) on the
  corpus's dask arrays. Each peer: wall time (child process, imports included), peak RSS
  of its process tree, achieved ||grad L(theta)|| / ||grad L(0)|| (float64, computed here
  chunk by chunk) and ||theta - theta_rifscale|| / ||theta_rifscale||.
* **beyond RAM** (``--beyond-ram 1.5e7x512``: about 31 GB): ``rifscale run CORPUS --out RUN
  --lam 1`` (default options: ``--persist auto`` streams data over half the free memory) to
  completion, against a reference run at n = 1e6 (``--beyond-ref-n``), same d and same
  stored chunk rows, with ``--persist never``: wall time, peak RSS (whose ratio big / ref
  should stay within 1.3), bytes read, the manifest's layout and fit record. 1 repeat
  unless ``--repeats`` says otherwise; free disk is checked before generating.

Corpora are generated chunk by chunk (``_synth.py``) straight into Zarr with
``rifscale.ingest`` (default chunking). Every measured command runs under a small
wrapper process that times it and reads its own ``/proc/self/io`` afterwards: the
command's process tree, once reaped, is accounted there (bytes read). This process
samples the RSS of the tree every 50 ms. Before each timed run it waits (at most 90 s)
for other processes to leave the CPUs alone and records the CPU share they used.

    .venv/bin/python benchmarks/bench_scale.py --quick         # smoke run, about 1.5 minutes
    .venv/bin/python benchmarks/bench_scale.py                 # full run (needs ~13 GiB free RAM)
    .venv/bin/python benchmarks/bench_scale.py --cases 2e5x384,2e5x768 --peer-case none
    .venv/bin/python benchmarks/bench_scale.py --cases none --peer-case none --beyond-ram 1.5e7x512

Writes ``benchmarks/results/scale-<date>[-quick].json`` and a Markdown summary beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import bench_engine  # a sibling: the script's folder is on sys.path
import numpy as np
from _synth import N_TEST, write_corpus
from bench_engine import (
    START_ENV,
    OtherLoad,
    _errors,
    dir_bytes,
    machine_info,
    say,
    source_info,
    summary,
    wait_quiet,
)

THIS = Path(__file__).resolve()
HERE = THIS.parent
FULL_CASES = ((200_000, 384), (200_000, 768), (1_000_000, 384), (1_000_000, 768), (200_000, 1024))
QUICK_CASES = ((20_000, 64), (50_000, 128))
PEER_CASE, QUICK_PEER_CASE = (100_000, 256), (20_000, 32)
LAM = 1.0
SEED = 2026
SAMPLE_INTERVAL = 0.05
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SKLEARN_SOLVER = "newton-cholesky"  # scikit-learn's advice for n_samples >> n_features
SKLEARN_MAX_ITER = 10_000
#: rifscale in the peers table does the same work as the NumPy peer: scores for the
#: loss over the whole test set
PEER_RUN_ARGS = ("--test-subset", "all", "--metrics", "test_loss")
#: dask-ml solvers that drop C (dask_ml/linear_model/glm.py: ``fit_kwargs.pop("lamduh")``)
#: and so solve the unpenalised problem; the others penalise every coefficient, the
#: intercept included (dask_glm's L2 regulariser on the whole beta)
DASKML_UNPENALISED = ("newton", "gradient_descent")
#: beyond RAM: the reference n, the limit on peak RSS big / ref, the free-disk margin, and
#: a generous estimate of a run's per-row outputs (a dozen float64 score columns)
BEYOND_REF_N, BEYOND_RSS_LIMIT, DISK_MARGIN, RUN_BYTES_PER_ROW = 1_000_000, 1.3, 1.10, 128

#: The peers, in the order each repeat runs them. ``ref``: the rifscale run its time,
#: memory and theta are compared with.
PEERS = {
    "rifscale": {"kind": "rifscale", "lam": LAM},
    "sklearn": {"kind": "sklearn", "lam": LAM, "solver": SKLEARN_SOLVER, "ref": "rifscale"},
    # dask-ml takes minutes at the peers' size: one run, in the last repeat
    "dask-ml-default": {"kind": "daskml", "lam": LAM, "solver": None, "ref": "rifscale", "once": True},
    "dask-ml-newton": {"kind": "daskml", "lam": LAM, "solver": "newton", "ref": "rifscale", "once": True},
    "rifscale-lam0": {"kind": "rifscale", "lam": 0.0},
    "statsmodels": {"kind": "statsmodels", "lam": 0.0, "ref": "rifscale-lam0"},
}


#: The ``rifscale`` console script the runs use (``--rifscale``); by default the one of this
#: interpreter's environment. ``make bench-scale`` points it at the project's own .venv
#: while this script and the peers run in .venv-peers, so that the peers' packages
#: (dask-ml pulls in sparse and numba, which dask.array then imports) do not slow
#: rifscale's start-up.
RIFSCALE: str | None = None


def rifscale_bin() -> str:
    """The `rifscale` console script the runs use."""
    if RIFSCALE:
        return RIFSCALE
    local = Path(sys.executable).parent / "rifscale"
    return str(local) if local.exists() else (shutil.which("rifscale") or "rifscale")


def all_cores_env() -> dict:
    """This process's environment without the BLAS/OpenMP thread limits: children use
    every core (OpenBLAS default), as on a user's machine without those variables."""
    return {k: v for k, v in os.environ.items() if k not in THREAD_VARS}


# --------------------------------------------------------------------------- corpus access


def iter_chunks(path: Path, split: str = "train"):
    """(start, X float32 chunk, y chunk) over the stored row chunks of a corpus split."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    X, y = group[f"{split}/X"], group[f"{split}/y"]
    step = X.chunks[0]
    for start in range(0, X.shape[0], step):
        yield start, X[start : start + step], y[start : start + step]


def load_dense(path: Path, split: str = "train", *, ones: bool):
    """A split as float64 in memory: X (n x d), or Z = [X, 1] with ``ones``; and y."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    n, d = group[f"{split}/X"].shape
    Z = np.empty((n, d + 1 if ones else d))
    y = np.empty(n)
    for start, X_c, y_c in iter_chunks(path, split):
        stop = start + len(X_c)
        Z[start:stop, :d] = X_c
        y[start:stop] = y_c
    if ones:
        Z[:, d] = 1.0
    return Z, y


def _with_ones(X: np.ndarray) -> np.ndarray:
    return np.hstack([np.asarray(X, dtype=np.float64), np.ones((len(X), 1))])


def _sigmoid(eta: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(eta)


def _penalty(p: int, lam: float, penalise_intercept: bool) -> np.ndarray:
    """lam * diag(D) of the objective: the intercept (last) is free unless penalised."""
    D = np.full(p, lam)
    if not penalise_intercept:
        D[-1] = 0.0
    return D


def objective_pass(path: Path, theta: np.ndarray, lam: float, *, penalise_intercept: bool = False,
                   hessian: bool = False):
    """One float64 pass over the training chunks: (grad L(theta), ||grad L(0)||, H(theta) or
    None) for the sum-form objective with an intercept (the last entry of theta)."""
    theta = np.asarray(theta, dtype=np.float64)
    D = _penalty(len(theta), lam, penalise_intercept)
    grad, grad0 = D * theta, np.zeros_like(theta)
    H = np.diag(D) if hessian else None
    for _, X, y in iter_chunks(path):
        Z = _with_ones(X)
        prob = _sigmoid(Z @ theta)
        grad += Z.T @ (prob - y)
        grad0 += Z.T @ (0.5 - y)
        if hessian:
            H += (Z * (prob * (1 - prob))[:, None]).T @ Z
    return grad, float(np.linalg.norm(grad0)), H


def rel_grad_norm(path: Path, theta, lam: float, **objective) -> float:
    """||grad L(theta)|| / ||grad L(0)|| in float64."""
    grad, grad0, _ = objective_pass(path, theta, lam, **objective)
    return float(np.linalg.norm(grad) / grad0)


def exact_optimum(path: Path, theta0, lam: float, *, steps: int = 2, **objective) -> np.ndarray:
    """Newton steps in float64 from a nearby optimum (rifscale's theta-hat of a slightly
    different objective): two steps land on this objective's optimum to rounding."""
    theta = np.asarray(theta0, dtype=np.float64)
    for _ in range(steps):
        grad, _, H = objective_pass(path, theta, lam, hessian=True, **objective)
        theta = theta - np.linalg.solve(H, grad)
    return theta


def rel_diff(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------- measured processes


def _read_proc_io() -> dict | None:
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return None
    return {k: int(v) for k, v in (line.split(": ") for line in lines)}


def wrap_main(spec_path: str) -> int:
    """The wrapper process: run one command, time it, and record the I/O of its whole
    process tree (Linux adds a reaped child's /proc io counters, and those it reaped,
    to the parent's) and the largest RSS among the reaped descendants."""
    import resource

    spec = json.loads(Path(spec_path).read_text())
    io0 = _read_proc_io()
    with open(spec["log"], "w") as log:
        t = time.perf_counter()
        rc = subprocess.run(spec["cmd"], stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        wall = time.perf_counter() - t
    io1 = _read_proc_io()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {
        "rc": rc,
        "wall_s": wall,
        "io": {k: io1[k] - io0[k] for k in io1} if io0 and io1 else None,
        "ru_maxrss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
    }
    Path(spec["out"]).write_text(json.dumps(out))
    return 0


@contextlib.contextmanager
def every(interval: float, fn):
    """Call ``fn()`` every ``interval`` seconds in a background thread while the block runs."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            fn()
            stop.wait(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class TreeRss:
    """Peak RSS of a wrapper's descendants, one sample per ``tick()``: the whole tree, the
    driver (the wrapper's child: the measured command) and the driver's own children
    (Dask workers, ...) together, plus each process's own peak. RSS counts shared pages
    in every process that maps them. The tree is rescanned every ``rescan_every`` ticks."""

    def __init__(self, wrapper_pid: int, rescan_every: int = 5):
        import psutil

        self._psutil = psutil
        self._wrapper = psutil.Process(wrapper_pid)
        self.rescan_every = rescan_every
        self.tree = self.driver = self.children = self.samples = 0
        self.per_process: dict[int, int] = {}
        self._procs: list = []
        self._driver_pid = None

    def _rescan(self):
        try:
            top = self._wrapper.children()
            if top:
                self._driver_pid = top[0].pid
                self._procs = [top[0], *top[0].children(recursive=True)]
        except self._psutil.Error:
            pass

    def _sample(self):
        driver = rest = 0
        for proc in self._procs:
            try:
                rss = proc.memory_info().rss
            except self._psutil.Error:
                continue
            self.per_process[proc.pid] = max(self.per_process.get(proc.pid, 0), rss)
            if proc.pid == self._driver_pid:
                driver = rss
            else:
                rest += rss
        self.tree, self.driver = max(self.tree, driver + rest), max(self.driver, driver)
        self.children = max(self.children, rest)
        self.samples += 1

    def tick(self):
        if self.samples % self.rescan_every == 0 or not self._procs:
            self._rescan()
        self._sample()

    def record(self) -> dict:
        others = sorted((v for pid, v in self.per_process.items() if pid != self._driver_pid), reverse=True)
        return {
            "peak_tree_bytes": self.tree,
            "peak_driver_bytes": self.driver,
            "peak_children_bytes": self.children,
            "children_seen": len(others),
            "per_child_peak_bytes": others[:16],
            "samples": self.samples,
            "interval_s": SAMPLE_INTERVAL,
        }


class ChildFailed(RuntimeError):
    pass


def measure(cmd: list[str], tmp: Path, label: str) -> dict:
    """Run ``cmd`` under the wrapper with every core available, after waiting for a quiet
    machine: wall time, RSS peaks, bytes read, CPU share of other processes."""
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    spec = {"cmd": [str(c) for c in cmd], "log": str(logs / f"{label}.log"), "out": str(logs / f"{label}.wrap.json")}
    spec_path = logs / f"{label}.wrap-spec.json"
    spec_path.write_text(json.dumps(spec))
    waited = wait_quiet()
    with OtherLoad() as load:
        wrapper = subprocess.Popen([sys.executable, str(THIS), "--wrap", str(spec_path)], env=all_cores_env())
        rss = TreeRss(wrapper.pid)
        with every(SAMPLE_INTERVAL, rss.tick):
            wrapper.wait()
    result = json.loads(Path(spec["out"]).read_text())
    if result["rc"] != 0:
        tail = Path(spec["log"]).read_text()[-3000:]
        raise ChildFailed(f"{label}: {' '.join(spec['cmd'])} exited with {result['rc']}:\n{tail}")
    result.update(rss=rss.record(), other_load=round(load.share, 3), waited_for_quiet_s=round(waited, 1))
    return result


def run_child(kind: str, spec: dict, tmp: Path, label: str) -> dict:
    """One measured child of this script (``--child KIND``); its own report under "child"."""
    spec = {**spec, "out": str(tmp / f"{label}.child.json")}
    spec_path = tmp / f"{label}.child-spec.json"
    spec_path.write_text(json.dumps(spec))
    record = measure([sys.executable, THIS, "--child", kind, spec_path], tmp, label)
    record["child"] = json.loads(Path(spec["out"]).read_text())
    return record


def run_rifscale(corpus: Path, out: Path, lam: float, tmp: Path, label: str, extra=(), keep=False) -> dict:
    """``rifscale run`` as a user types it; the manifest's fit record and timings, and the
    bytes it read."""
    cmd = [rifscale_bin(), "run", corpus, "--out", out, "--lam", repr(float(lam)), *extra]
    shutil.rmtree(out, ignore_errors=True)  # left over by a failed repeat
    record = measure(cmd, tmp, label)
    manifest = json.loads((out / "manifest.json").read_text())
    fit = manifest["fit"]
    record["manifest"] = {
        "n": manifest.get("n"), "d": manifest.get("d"), "p": manifest.get("p"),
        "fit": {k: fit.get(k) for k in ("n_passes", "n_iter", "rel_grad_norm", "grad_norm", "converged", "stopped_at",
                                        "certified", "rel_error_bound", "hessian_passes", "warm_start")},
        "layout": manifest.get("layout"),
        "timings": manifest.get("timings"),
    }
    record["command"] = " ".join(map(str, cmd))
    record["bytes_read"] = bytes_read(record, dir_bytes(corpus))
    record["out_bytes"] = dir_bytes(out)
    if not keep:
        shutil.rmtree(out)
    return record


def bytes_read(record: dict, corpus_bytes: int) -> dict:
    """Bytes the run read: /proc io of its reaped tree, else corpus size x passes."""
    passes = record["manifest"]["fit"]["n_passes"]
    io = record.get("io")
    if io:
        return {"method": "/proc/<wrapper>/io delta (whole reaped tree, imports included)",
                "rchar": io["rchar"], "read_bytes": io["read_bytes"], "rchar_over_corpus": io["rchar"] / corpus_bytes,
                "read_bytes_over_corpus": io["read_bytes"] / corpus_bytes}
    return {"method": "estimate: corpus bytes on disk x fit passes", "rchar": corpus_bytes * passes,
            "read_bytes": None, "rchar_over_corpus": float(passes), "read_bytes_over_corpus": None}


# --------------------------------------------------------------------------- child processes


def _threadpools() -> list[dict]:
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "num_threads", "version", "architecture", "threading_layer")
    return [{k: lib.get(k) for k in keys} for lib in threadpool_info()]


def floor_child(spec: dict) -> dict:
    """The in-memory float64 floor: one Hessian GEMM and one leverage GEMM on Z = [X, 1]."""
    from scipy.linalg import solve_triangular

    t = time.perf_counter()
    Z, _ = load_dense(Path(spec["corpus"]), ones=True)
    load_s = time.perf_counter() - t
    n, p = Z.shape
    theta = np.random.default_rng(spec["seed"]).standard_normal(p) / np.sqrt(p)
    prob = _sigmoid(Z @ theta)
    alpha = prob * (1 - prob)

    t0 = time.perf_counter()
    S = Z * alpha[:, None]
    t1 = time.perf_counter()
    H = S.T @ Z
    t2 = time.perf_counter()
    del S
    Linv = solve_triangular(np.linalg.cholesky(H + np.eye(p)), np.eye(p), lower=True)
    t3 = time.perf_counter()
    W = Z @ Linv.T
    t4 = time.perf_counter()
    del W
    gemm_flops = 2.0 * n * p * p
    return {
        "n": n, "p": p, "load_s": load_s,
        "hessian_scale_s": t1 - t0, "hessian_gemm_s": t2 - t1, "hessian_s": t2 - t0,
        "leverage_gemm_s": t4 - t3, "floor_s": (t2 - t0) + (t4 - t3),
        "hessian_gemm_gflops": gemm_flops / (t2 - t1) / 1e9, "leverage_gemm_gflops": gemm_flops / (t4 - t3) / 1e9,
    }


def numpy_influence(Z, y, Z_test, y_test, theta, lam: float) -> tuple[dict, dict]:
    """Dense NumPy H (float64), Cholesky, leverage and IF/RIF scores for the loss over the
    whole test set, at ``theta``: (stage seconds, arrays)."""
    from scipy.linalg import cho_solve, solve_triangular

    t0 = time.perf_counter()
    prob = _sigmoid(Z @ theta)
    alpha, r = prob * (1 - prob), prob - y
    H = (Z * alpha[:, None]).T @ Z + np.diag(_penalty(len(theta), lam, False))
    L = np.linalg.cholesky(H)
    t1 = time.perf_counter()
    W = solve_triangular(L, Z.T, lower=True)  # L^-1 Z^T, p x n
    h = alpha * np.einsum("ij,ij->j", W, W)
    del W
    t2 = time.perf_counter()
    grad_f = Z_test.T @ (_sigmoid(Z_test @ theta) - y_test)
    s_if = r * (Z @ cho_solve((L, True), grad_f))
    s_rif = s_if / (1 - h)
    t3 = time.perf_counter()
    return {"hessian_cholesky_s": t1 - t0, "leverage_s": t2 - t1, "scores_s": t3 - t2}, {"h": h, "s_rif": s_rif}


def sklearn_child(spec: dict) -> tuple[dict, dict]:
    """scikit-learn fit, then the NumPy influence computation at its theta."""
    t = time.perf_counter()
    from sklearn.linear_model import LogisticRegression

    import_s = time.perf_counter() - t
    corpus, lam = Path(spec["corpus"]), spec["lam"]
    t = time.perf_counter()
    X, y = load_dense(corpus, ones=False)
    X_test, y_test = load_dense(corpus, "test", ones=False)
    load_s = time.perf_counter() - t
    clf = LogisticRegression(C=1.0 / lam, tol=1e-10, max_iter=SKLEARN_MAX_ITER, solver=spec["solver"])
    t = time.perf_counter()
    clf.fit(X, y)
    fit_s = time.perf_counter() - t
    theta = np.r_[clf.coef_.ravel(), clf.intercept_]
    stages, arrays = numpy_influence(_with_ones(X), y, _with_ones(X_test), y_test, theta, lam)
    report = {"import_s": import_s, "load_s": load_s, "fit_s": fit_s, **stages,
              "solver": spec["solver"], "n_iter": int(np.max(clf.n_iter_)),
              "params": {k: v for k, v in clf.get_params().items() if k in ("C", "tol", "max_iter", "solver")}}
    return report, {"theta": theta, **arrays}


def statsmodels_child(spec: dict) -> tuple[dict, dict]:
    """statsmodels GLM(Binomial) fit (IRLS, no penalty) and get_influence(): hat diagonal
    and d_params (the one-step leave-one-out change, theta-hat minus theta_-i)."""
    t = time.perf_counter()
    import statsmodels.api as sm

    import_s = time.perf_counter() - t
    corpus = Path(spec["corpus"])
    t = time.perf_counter()
    Z, y = load_dense(corpus, ones=True)
    Z_test, y_test = load_dense(corpus, "test", ones=True)
    load_s = time.perf_counter() - t
    t0 = time.perf_counter()
    res = sm.GLM(y, Z, family=sm.families.Binomial()).fit()
    t1 = time.perf_counter()
    influence = res.get_influence()
    h = influence.hat_matrix_diag
    t2 = time.perf_counter()
    d_params = influence.d_params
    t3 = time.perf_counter()
    theta = res.params
    grad_f = Z_test.T @ (_sigmoid(Z_test @ theta) - y_test)
    report = {"import_s": import_s, "load_s": load_s, "fit_s": t1 - t0, "hat_diag_s": t2 - t1,
              "d_params_s": t3 - t2, "n_iter": int(res.fit_history["iteration"]), "method": res.method}
    return report, {"theta": theta, "h": h, "s_rif": -(d_params @ grad_f)}


def daskml_child(spec: dict) -> tuple[dict, dict]:
    """dask-ml LogisticRegression on the corpus's dask arrays, on the LocalCluster a user
    gets from ``Client()`` (distributed's default workers and threads; no dashboard)."""
    t = time.perf_counter()
    import dask.array as da
    from dask_ml.linear_model import LogisticRegression
    from distributed import Client, LocalCluster

    import_s = time.perf_counter() - t
    corpus, lam = str(spec["corpus"]), spec["lam"]
    t = time.perf_counter()
    with LocalCluster(dashboard_address=None) as cluster, Client(cluster) as client:
        cluster_s = time.perf_counter() - t
        workers = sorted(client.nthreads().values())
        X = da.from_zarr(corpus, component="train/X")
        y = da.from_zarr(corpus, component="train/y")
        kwargs = {"solver": spec["solver"]} if spec["solver"] else {}
        clf = LogisticRegression(C=1.0 / lam, **kwargs)
        t = time.perf_counter()
        clf.fit(X, y)
        fit_s = time.perf_counter() - t
    theta = np.r_[np.asarray(clf.coef_).ravel(), clf.intercept_]
    unpenalised = clf.solver in DASKML_UNPENALISED
    report = {"import_s": import_s, "cluster_start_s": cluster_s, "fit_s": fit_s, "worker_threads": workers,
              "solver": clf.solver, "params": {k: clf.get_params()[k] for k in ("C", "tol", "max_iter", "solver")},
              "objective": {"lam": 0.0 if unpenalised else lam, "penalise_intercept": not unpenalised}}
    return report, {"theta": theta}


def synth_child(spec: dict) -> dict:
    """Generate and ingest one corpus (``_synth.write_corpus``, chunk by chunk)."""
    t = time.perf_counter()
    write_corpus(Path(spec["corpus"]), spec["n"], spec["d"], seed=spec["seed"], chunk_rows=spec["chunk_rows"])
    return {"ingest_s": time.perf_counter() - t}


CHILDREN = {"synth": synth_child, "floor": floor_child, "sklearn": sklearn_child, "statsmodels": statsmodels_child,
            "daskml": daskml_child}


def child_main(kind: str, spec_path: str) -> int:
    """Entry point of ``--child KIND SPEC``: run one child, write its report (and arrays)."""
    spec = json.loads(Path(spec_path).read_text())
    env = {k: os.environ.get(k) for k in THREAD_VARS}  # before a LocalCluster rewrites them
    out = CHILDREN[kind](spec)
    report, arrays = out if isinstance(out, tuple) else (out, None)
    if arrays is not None and spec.get("arrays"):
        np.savez(spec["arrays"], **arrays)
    report["threadpools"] = _threadpools()
    report["env_at_start"] = env
    Path(spec["out"]).write_text(json.dumps(report))
    return 0


# --------------------------------------------------------------------------- table 1: floor ratio


def ratios(numerators, denominators) -> dict:
    """Ratio of the medians, and the per-repeat ratios (side by side runs)."""
    per_repeat = [a / b for a, b in zip(numerators, denominators)]
    return {"of_medians": statistics.median(numerators) / statistics.median(denominators),
            "per_repeat": per_repeat, "min": min(per_repeat), "max": max(per_repeat)}


def make_corpus(n: int, d: int, tmp: Path, chunk_rows: int | None, measured: bool = False) -> tuple[Path, dict]:
    """Generate and ingest one corpus; its size, chunking and ingest time. ``measured``:
    in a measured child (RSS peaks and I/O of the generation under "generate")."""
    import zarr

    path = tmp / f"corpus-{n}x{d}.zarr"
    say(f"{n:,} x {d}: generating the corpus")
    generate = None
    if measured:
        spec = {"corpus": str(path), "n": n, "d": d, "seed": SEED, "chunk_rows": chunk_rows}
        generate = run_child("synth", spec, tmp, f"synth-{n}x{d}")
        ingest_s = generate["child"]["ingest_s"]
    else:
        t = time.perf_counter()
        write_corpus(path, n, d, seed=SEED, chunk_rows=chunk_rows)
        ingest_s = time.perf_counter() - t
    X = zarr.open_group(str(path), mode="r")["train/X"]
    info = {"n": n, "d": d, "p": d + 1, "n_test": N_TEST, "chunk_rows": X.chunks[0],
            "chunks": -(-n // X.chunks[0]), "corpus_bytes": dir_bytes(path), "ingest_s": ingest_s}
    info["ingest_gb_per_s"] = info["corpus_bytes"] / 1e9 / ingest_s
    if generate:
        info["generate"] = generate
    say(f"{n:,} x {d}: corpus {info['corpus_bytes'] / 1e6:,.0f} MB in {info['chunks']} chunks, {ingest_s:.1f} s "
        f"({info['ingest_gb_per_s']:.2f} GB/s)")
    return path, info


def bench_floor_case(n: int, d: int, tmp: Path, repeats: int, chunk_rows: int | None) -> dict:
    """rifscale run vs the in-memory floor on one corpus, side by side in each repeat."""
    corpus, entry = make_corpus(n, d, tmp, chunk_rows)
    runs, floors = [], []
    for k in range(repeats):
        run = run_rifscale(corpus, tmp / f"run-{n}x{d}", LAM, tmp, f"floor-rifscale-{n}x{d}-{k}")
        floor = run_child("floor", {"corpus": str(corpus), "seed": SEED}, tmp, f"floor-{n}x{d}-{k}")
        runs.append(run)
        floors.append(floor)
        say(f"{n:,} x {d}: repeat {k + 1}/{repeats}: rifscale run {run['wall_s']:.2f} s "
            f"({run['manifest']['fit']['n_passes']} passes), floor {floor['child']['floor_s']:.2f} s "
            f"(H {floor['child']['hessian_s']:.2f} + leverage {floor['child']['leverage_gemm_s']:.2f}); "
            f"other load {max(run['other_load'], floor['other_load']):.0%}")
    shutil.rmtree(corpus)
    rif_s = [r["wall_s"] for r in runs]
    floor_s = [f["child"]["floor_s"] for f in floors]
    entry.update({
        "rifscale_wall_s": summary(rif_s),
        "floor_s": summary(floor_s),
        "floor_hessian_s": summary([f["child"]["hessian_s"] for f in floors]),
        "floor_leverage_s": summary([f["child"]["leverage_gemm_s"] for f in floors]),
        "ratio": ratios(rif_s, floor_s),
        "rifscale_runs": runs,
        "floor_runs": floors,
    })
    return entry


# --------------------------------------------------------------------------- table 2: peers


def run_peer(name: str, corpus: Path, tmp: Path, k: int, keep: bool) -> dict:
    """One measured run of a peer; with ``keep`` its theta (and scores) stay for the checks."""
    spec = PEERS[name]
    label = f"peer-{name}-{k}"
    if spec["kind"] == "rifscale":
        return run_rifscale(corpus, tmp / f"run-{name}", spec["lam"], tmp, label, PEER_RUN_ARGS, keep=keep)
    child = {"corpus": str(corpus), "lam": spec["lam"], "solver": spec.get("solver"),
             "arrays": str(tmp / f"{name}.npz") if keep else None}
    return run_child(spec["kind"], child, tmp, label)


def peer_outputs(name: str, tmp: Path) -> dict:
    """theta (and leverage, RIF test-loss scores where the peer has them) of a kept run."""
    import zarr

    if PEERS[name]["kind"] == "rifscale":
        arrays = {"theta": "model/theta", "h": "scores/leverage", "s_rif": "scores/rif_test_loss"}
        return {k: zarr.open_array(str(tmp / f"run-{name}" / v), mode="r")[...] for k, v in arrays.items()}
    return dict(np.load(tmp / f"{name}.npz"))


def peer_accuracy(name: str, out: dict, refs: dict, corpus: Path, record: dict) -> dict:
    """Achieved relative gradient norm (rifscale's objective at the peer's lam), distance to
    the reference theta-hat, agreement of leverage/scores, and for dask-ml the same
    against the optimum of its own objective."""
    spec = PEERS[name]
    acc = {"rel_grad_norm": rel_grad_norm(corpus, out["theta"], spec["lam"])}
    ref = refs.get(spec.get("ref"))
    if ref is None:
        return acc
    acc["theta_rel_err"] = rel_diff(out["theta"], ref["theta"])
    for key in ("h", "s_rif"):
        if key in out:
            acc[f"{key}_vs_rifscale"] = _errors(out[key], ref[key])
    own = record.get("child", {}).get("objective")
    if own:  # dask-ml: where its objective differs from rifscale's
        optimum = exact_optimum(corpus, ref["theta"], own["lam"], penalise_intercept=own["penalise_intercept"])
        acc["own_objective"] = {
            **own,
            "rel_grad_norm": rel_grad_norm(corpus, out["theta"], own["lam"], penalise_intercept=own["penalise_intercept"]),
            "theta_rel_err": rel_diff(out["theta"], optimum),
            "optimum_vs_rifscale": rel_diff(optimum, ref["theta"]),
        }
    return acc


def _ok(runs: list[dict]) -> list[dict]:
    """The repeats that did not fail."""
    return [r for r in runs if "error" not in r]


def _peer_summary(runs: list[dict]) -> dict:
    ok = _ok(runs)
    if not ok:
        return {"error": runs[-1]["error"], "runs": runs}
    return {"wall_s": summary([r["wall_s"] for r in ok]),
            "peak_rss_bytes": summary([r["rss"]["peak_tree_bytes"] for r in ok]),
            "failed_repeats": len(runs) - len(ok), "runs": runs}


def bench_peers(n: int, d: int, names, tmp: Path, repeats: int, chunk_rows: int | None) -> dict:
    """Every peer on one corpus, interleaved in each repeat; accuracy from the last one."""
    corpus, entry = make_corpus(n, d, tmp, chunk_rows)
    runs = {name: [] for name in names}
    for k in range(repeats):
        for name in names:
            if PEERS[name].get("once") and k < repeats - 1:
                continue
            try:
                record = run_peer(name, corpus, tmp, k, keep=k == repeats - 1)
            except ChildFailed as exc:
                say(f"peers: {exc}")
                record = {"error": str(exc)}
            runs[name].append(record)
            if "error" not in record:
                say(f"peers {n:,} x {d}: repeat {k + 1}/{repeats}: {name} {record['wall_s']:.2f} s, "
                    f"peak RSS {record['rss']['peak_tree_bytes'] / 2**20:.0f} MiB")
    peers = {name: _peer_summary(r) for name, r in runs.items()}
    outputs = {name: peer_outputs(name, tmp) for name in names if "error" not in runs[name][-1]}
    rif = {name: outputs[name] for name in outputs if PEERS[name]["kind"] == "rifscale"}
    for name, out in outputs.items():
        peers[name]["accuracy"] = peer_accuracy(name, out, rif, corpus, runs[name][-1])
        ref = PEERS[name].get("ref")
        if ref in outputs and "wall_s" in peers[ref]:
            for key in ("wall_s", "peak_rss_bytes"):  # against the reference's runs of the same repeats
                mine = peers[name][key]["values"]
                peers[name][f"{key}_ratio"] = ratios(mine, peers[ref][key]["values"][-len(mine):])
    for name in names:
        shutil.rmtree(tmp / f"run-{name}", ignore_errors=True)
    shutil.rmtree(corpus)
    entry.update({"peers": peers, "rifscale_args": list(PEER_RUN_ARGS)})
    return entry


# --------------------------------------------------------------------------- table 3: beyond RAM


def corpus_bytes_estimate(n: int, d: int) -> int:
    """Bytes on disk of a float32 corpus (X, int8 y, int64 ids; train and test), before
    Zarr's few metadata bytes."""
    return (n + N_TEST) * (4 * d + 1 + 8)


def disk_need(n: int, d: int) -> int:
    """Disk one beyond-RAM case takes at once: its corpus and its run's outputs."""
    return corpus_bytes_estimate(n, d) + n * RUN_BYTES_PER_ROW


def check_disk(where: Path, n: int, d: int) -> dict:
    """Refuse (SystemExit) when the case would not fit in ``where`` with DISK_MARGIN."""
    need, free = disk_need(n, d), shutil.disk_usage(where).free
    if need * DISK_MARGIN > free:
        raise SystemExit(
            f"beyond RAM: the {n:,} x {d} corpus and its run need about {need / 1e9:.1f} GB "
            f"(+{DISK_MARGIN - 1:.0%} margin) in {where}, but only {free / 1e9:.1f} GB are free there; "
            "free some space, pass --tmpdir on a larger disk, or a smaller --beyond-ram.")
    return {"need_bytes": need, "free_bytes": free}


def beyond_case(n: int, d: int, chunk_rows: int, extra: tuple, tmp: Path, repeats: int, label: str) -> dict:
    """Generate one corpus (measured child), run ``rifscale run`` on it ``repeats`` times,
    delete it. A failed run is recorded (its error) rather than raised."""
    import psutil

    disk = check_disk(tmp, n, d)
    corpus, entry = make_corpus(n, d, tmp, chunk_rows, measured=True)
    ram = psutil.virtual_memory().total
    entry.update(label=label, options=list(extra), disk=disk, ram_bytes=ram,
                 corpus_over_ram=entry["corpus_bytes"] / ram)
    runs = []
    try:
        for k in range(repeats):
            try:
                run = run_rifscale(corpus, tmp / f"run-{label}", LAM, tmp, f"beyond-{label}-{k}", extra)
            except ChildFailed as exc:
                say(f"beyond RAM: {exc}")
                runs.append({"error": str(exc)})
                continue
            runs.append(run)
            m = run["manifest"]
            say(f"beyond RAM {label} {n:,} x {d}: repeat {k + 1}/{repeats}: {run['wall_s']:.1f} s, "
                f"{m['fit']['n_passes']} passes, {'persisted' if m['layout']['persisted'] else 'streamed'}, "
                f"peak RSS {run['rss']['peak_tree_bytes'] / 2**20:,.0f} MiB, "
                f"read {run['bytes_read']['rchar_over_corpus']:.1f}x the corpus")
    finally:
        shutil.rmtree(corpus)
    entry.update(_peer_summary(runs))
    return entry


def bench_beyond_ram(n: int, d: int, ref_n: int, tmp: Path, repeats: int) -> dict:
    """The reference case (``--persist never``) then the big one (default options), both
    with the stored chunk rows ingest would choose for the big corpus; the peak-RSS ratio."""
    import rifscale.corpus.ingest

    chunk_rows = rifscale.corpus.ingest.default_chunk_rows(n, d * 4)
    if ref_n < chunk_rows:
        say(f"beyond RAM: the reference corpus ({ref_n:,} rows) is one chunk, shorter than {chunk_rows:,} rows")
    cases = {"ref": beyond_case(ref_n, d, chunk_rows, ("--persist", "never"), tmp, repeats, "ref"),
             "big": beyond_case(n, d, chunk_rows, (), tmp, repeats, "big")}
    entry = {"d": d, "chunk_rows": chunk_rows, "repeats": repeats, "rss_limit": BEYOND_RSS_LIMIT, "cases": cases}
    if all("peak_rss_bytes" in c for c in cases.values()):
        for key in ("peak_tree_bytes", "peak_driver_bytes"):
            big, ref = ([r["rss"][key] for r in _ok(cases[c]["runs"])] for c in ("big", "ref"))
            entry[f"{key}_ratio"] = ratios(big, ref)
        entry["within_limit"] = entry["peak_tree_bytes_ratio"]["of_medians"] <= BEYOND_RSS_LIMIT
        say(f"beyond RAM: peak RSS big / ref = {entry['peak_tree_bytes_ratio']['of_medians']:.2f} "
            f"(limit {BEYOND_RSS_LIMIT}): {'within' if entry['within_limit'] else 'OVER'}")
    return entry


# --------------------------------------------------------------------------- report


def _span(s: dict, digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def _mib(x) -> str:
    return f"{x / 2**20:,.0f}"


def _blas_line(threadpools: list[dict]) -> str:
    """The BLAS libraries a process loaded (NumPy's and SciPy's may differ), sorted."""
    blas = sorted({f"{t['internal_api']} {t['version']} ({t['num_threads']} threads, {t['architecture']})"
                   for t in threadpools if t["user_api"] == "blas"})
    return " + ".join(blas) or "no BLAS found"


def _rss_cell(runs: list[dict]) -> str:
    """Median peak RSS of the tree / driver / driver's children (workers), MiB; '–' for
    workers when the command started no child processes (an in-process cluster)."""
    def med(key):
        return statistics.median(r["rss"][key] for r in runs)

    workers = _mib(med("peak_children_bytes")) if med("children_seen") else "–"
    return f"{_mib(med('peak_tree_bytes'))} / {_mib(med('peak_driver_bytes'))} / {workers}"


def floor_markdown(cases: list[dict], warm: dict) -> list[str]:
    lines = [
        "## rifscale run vs the in-memory float64 floor",
        "",
        (f"`rifscale run CORPUS --out RUN --lam {LAM:g}` (subprocess, wall time including imports and any "
        "cluster start-up) against one Hessian GEMM `(Z * alpha[:, None]).T @ Z` plus one leverage GEMM "
        "`Z @ Linv.T` on Z = [X, 1] in float64 held in memory, all cores (loading not counted). "
        "Median (min–max) of the repeats, seconds; ratio = rifscale median / floor median."),
        "",
        ("| n | d | corpus MB (chunks) | rifscale run | passes | floor: H + leverage | **ratio** "
        "| rifscale peak RSS MiB: tree / driver / workers | read (rchar) / corpus | other load |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        runs = c["rifscale_runs"]
        passes = sorted({r["manifest"]["fit"]["n_passes"] for r in runs})
        read = statistics.median(r["bytes_read"]["rchar_over_corpus"] for r in runs)
        load = max(r["other_load"] for r in runs + c["floor_runs"])
        lines.append(
            f"| {c['n']:,} | {c['d']} | {c['corpus_bytes'] / 1e6:,.0f} ({c['chunks']}) | {_span(c['rifscale_wall_s'])} "
            f"| {'/'.join(map(str, passes))} | {_span(c['floor_s'])} = {c['floor_hessian_s']['median']:.2f} + "
            f"{c['floor_leverage_s']['median']:.2f} | **{c['ratio']['of_medians']:.1f}** "
            f"({c['ratio']['min']:.1f}–{c['ratio']['max']:.1f}) | {_rss_cell(runs)} | {read:.1f} | {load:.0%} |"
        )
    floor = cases[-1]["floor_runs"][-1]["child"]
    lines += ["", (f"Floor child BLAS: {_blas_line(floor['threadpools'])}; GEMM rates in the last case: "
              f"H {floor['hessian_gemm_gflops']:.0f} GFLOP/s, leverage {floor['leverage_gemm_gflops']:.0f} GFLOP/s "
              f"(the H timing includes forming Z * alpha: {floor['hessian_scale_s']:.2f} s of "
              f"{floor['hessian_s']:.2f} s). Bytes read: {cases[-1]['rifscale_runs'][-1]['bytes_read']['method']}; "
              f"the unrecorded warm-up run on a {warm['corpus_bytes'] / 1e6:.1f} MB corpus read "
              f"{warm['rifscale_bytes_read']['rchar'] / 1e6:.0f} MB (imports, start-up) "
              f"in {warm['rifscale_wall_s']:.1f} s.")]
    return lines


def _peer_details(name: str, p: dict) -> str:
    run = _ok(p["runs"])[-1]
    if PEERS[name]["kind"] == "rifscale":
        m = run["manifest"]
        return (f"{m['fit']['n_iter']} Newton iterations, {m['fit']['n_passes']} passes; stages "
                + ", ".join(f"{k} {v:.2f}" for k, v in (m.get("timings") or {}).items())
                + f" s; RSS MiB tree / driver / workers {_rss_cell(_ok(p['runs']))}; "
                f"read {run['bytes_read']['rchar_over_corpus']:.1f}x the corpus")
    c = run["child"]
    stages = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in c.items() if k.endswith("_s") and k != "import_s")
    solver = c.get("solver") or c.get("method", "")
    iters = f", {c['n_iter']} iterations" if "n_iter" in c else ""
    workers = c.get("worker_threads")
    cluster = f"; LocalCluster {len(workers)} worker(s) x {workers[0]} thread(s)" if workers else ""
    return f"{solver}{iters}{cluster}; {stages} s; {_blas_line(c['threadpools'])}"


def _ratio_cell(p: dict, key: str) -> str:
    r = p.get(f"{key}_ratio")
    return f"{r['of_medians']:.2f}" if r else "–"


def peers_markdown(entry: dict) -> list[str]:
    lines = [
        f"## Peers at n = {entry['n']:,}, d = {entry['d']} (same corpus)",
        "",
        (f"rifscale runs add `{' '.join(entry['rifscale_args'])}` (the work of the NumPy peer). Wall time of the "
        "child process (imports included), median (min–max) s; peak RSS of its process tree (driver + workers); "
        "× = ratio of medians to the rifscale run at the same lam. rel ‖∇L‖ = ‖∇L(θ)‖ / ‖∇L(0)‖ of rifscale's "
        "objective (intercept unpenalised) in float64; θ err = ‖θ − θ̂‖ / ‖θ̂‖ against that rifscale run."),
        "",
        "| peer | lam | wall s | × | peak RSS MiB | × | rel ‖∇L‖ | θ err | other load | details |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    notes = []
    for name, p in entry["peers"].items():
        if "error" in p:
            lines.append(f"| {name} | {PEERS[name]['lam']:g} | failed | | | | | | | {p['error'].splitlines()[0]} |")
            continue
        acc = p.get("accuracy", {})
        err = f"{acc['theta_rel_err']:.1e}" if "theta_rel_err" in acc else "–"
        lines.append(
            f"| {name} | {PEERS[name]['lam']:g} | {_span(p['wall_s'])} | {_ratio_cell(p, 'wall_s')} "
            f"| {_mib(p['peak_rss_bytes']['median'])} | {_ratio_cell(p, 'peak_rss_bytes')} "
            f"| {acc.get('rel_grad_norm', float('nan')):.1e} | {err} "
            f"| {max(r['other_load'] for r in _ok(p['runs'])):.0%} | {_peer_details(name, p)} |"
        )
        notes += _accuracy_notes(name, acc)
    return lines + [""] + notes


def _accuracy_notes(name: str, acc: dict) -> list[str]:
    notes = []
    for key, label in (("h", "leverage"), ("s_rif", "RIF test-loss scores")):
        e = acc.get(f"{key}_vs_rifscale")
        if e:
            notes.append(f"* {name}: {label} vs rifscale: max|a−b|/max|b| = {e['max_abs_over_max_ref']:.1e}, "
                         f"median elementwise rel. = {e['median_elementwise_rel']:.1e}.")
    own = acc.get("own_objective")
    if own:
        what = "penalised intercept" if own["penalise_intercept"] else "no penalty (C ignored)"
        notes.append(f"* {name} solves its own objective (lam = {own['lam']:g}, {what}); against that objective's "
                     f"exact optimum: rel ‖∇L‖ = {own['rel_grad_norm']:.1e}, θ err = {own['theta_rel_err']:.1e} "
                     f"(that optimum is {own['optimum_vs_rifscale']:.1e} from rifscale's θ̂).")
    return notes


def _hessian_passes(fit: dict) -> str:
    hp = fit.get("hessian_passes") or {}
    return f"{fit['n_passes']} ({hp.get('float32', '?')}/{hp.get('float64', '?')})"


def beyond_markdown(entry: dict) -> list[str]:
    lines = [
        "## Table 3: beyond RAM",
        "",
        (f"`rifscale run CORPUS --out RUN --lam {LAM:g}` to completion on a corpus larger than memory "
        "(\"big\", default options: `--persist auto` streams data larger than half the available memory) and "
        "on a reference corpus (\"ref\", `--persist never`), same d and the same stored chunks of "
        f"{entry['chunk_rows']:,} rows (ingest's default for the big corpus). "
        f"{entry['repeats']} repeat(s) per case, back to back, medians. "
        "Passes: fit passes over the data (Hessian passes float32/float64); data: streamed or persisted, the run's "
        "blocks x rows per block; × ref: peak RSS of the tree over the reference's (limit "
        f"{entry['rss_limit']}); read: rchar / corpus (from the disk: read_bytes / corpus)."),
        "",
        ("| case | n x d | corpus GB (× RAM) | generate s (GB/s) | rifscale run s | passes (H f32/f64) | data "
        "| peak RSS MiB: tree / driver / workers | × ref | read / corpus | other load |"),
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    ratio = entry.get("peak_tree_bytes_ratio")
    for name, c in entry["cases"].items():
        head = (f"| {name} `{' '.join(c['options']) or 'defaults'}` | {c['n']:,} x {c['d']} "
                f"| {c['corpus_bytes'] / 1e9:,.2f} ({c['corpus_over_ram']:.2f}) | {c['ingest_s']:,.0f} "
                f"({c['ingest_gb_per_s']:.2f})")
        if "error" in c:
            lines.append(f"{head} | failed | | | | | | {c['error'].splitlines()[0]} |")
            continue
        runs = _ok(c["runs"])
        m = runs[-1]["manifest"]
        layout = m["layout"] or {}
        data = (f"{'persisted' if layout.get('persisted') else 'streamed'}, {layout.get('blocks')} x "
                f"{layout.get('block_rows'):,}")
        read = statistics.median(r["bytes_read"]["rchar_over_corpus"] for r in runs)
        disk = [r["bytes_read"]["read_bytes_over_corpus"] for r in runs]
        disk_cell = f" ({statistics.median(disk):.1f})" if None not in disk else ""
        vs_ref = "–" if name == "ref" or not ratio else (
            f"**{ratio['of_medians']:.2f}** {'≤' if entry['within_limit'] else '>'} {entry['rss_limit']}")
        lines.append(
            f"{head} | {c['wall_s']['median']:,.1f} | {_hessian_passes(m['fit'])} | {data} | {_rss_cell(runs)} "
            f"| {vs_ref} | {read:.1f}{disk_cell} | {max(r['other_load'] for r in runs):.0%} |")
    lines.append("")
    for name, c in entry["cases"].items():
        if "error" in c:
            continue
        run, gen = _ok(c["runs"])[-1], c["generate"]
        fit = run["manifest"]["fit"]
        lines.append(
            f"* {name}: fit stopped at {fit['stopped_at']} (rel ‖∇L‖ {fit['rel_grad_norm']:.1e}, warm start "
            f"{'yes' if fit.get('warm_start') else 'no'}); stages "
            + ", ".join(f"{k} {v:,.1f}" for k, v in (run["manifest"]["timings"] or {}).items())
            + f" s; generation peak RSS {_mib(gen['rss']['peak_tree_bytes'])} MiB (tree).")
    if entry["cases"]["big"]["corpus_over_ram"] <= 1:
        lines.append("* The big corpus fits in RAM here: the table exercises the code, not a run beyond RAM.")
    return lines


def markdown(result: dict) -> str:
    m, src = result["machine"], result.get("source") or {}
    tables_1_2 = result.get("floor") or result.get("peers")
    repeats = f" {result['config']['repeats']} repeat(s), interleaved." if tables_1_2 else ""
    lines = [
        f"# rifscale at scale, {result['date']}{' (quick)' if result['quick'] else ''}",
        "",
        (f"Machine: {m['cpu_model']}, {m['cpus_in_affinity']} CPUs, {m['ram_gib']} GiB RAM; Python {m['python']}, "
        f"NumPy {m['versions']['numpy']} ({_blas_line(m['threadpools'])}), Dask {m['versions']['dask']}, "
        f"distributed {m['versions']['distributed']}, Zarr {m['versions']['zarr']}. "
        f"Code: commit {(src.get('commit') or '?')[:10]}"
        f"{' + local changes in rifscale/' if src.get('rifscale_locally_modified') else ''}."),
        (f"Data: `_synth.py` seed {SEED}, float32, {N_TEST:,} test rows, ingest chunking "
        f"{result['config']['chunk_rows'] or 'default'}.{repeats} "
        "Children run without OPENBLAS/OMP/MKL_NUM_THREADS (all cores). "
        "\"other load\": largest CPU share used by processes outside the benchmark during a timed run."),
        "",
    ]
    if result.get("floor"):
        lines += floor_markdown(result["floor"], result["warm_up"]) + [""]
    if result.get("peers"):
        lines += peers_markdown(result["peers"]) + [""]
    if result.get("beyond_ram"):
        lines += beyond_markdown(result["beyond_ram"])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


class _NoCluster:
    """``machine_info`` asks a Client for its workers' environment; the clusters here live
    inside the measured commands, so there is none to ask."""

    @staticmethod
    def run(fn):
        return {}


def machine() -> dict:
    import dask_ml
    import sklearn
    import statsmodels
    import threadpoolctl

    info = machine_info(_NoCluster())
    info.pop("env_workers")
    info["versions"].update({"scikit-learn": sklearn.__version__, "statsmodels": statsmodels.__version__,
                             "dask-ml": dask_ml.__version__, "threadpoolctl": threadpoolctl.__version__})
    info["threadpools"] = _threadpools()
    return info


def warm_up(tmp: Path) -> dict:
    """One small unrecorded rifscale run and floor child (file caches, first-call costs).
    The run's bytes read are the baseline of every run: imports and start-up."""
    t = time.perf_counter()
    corpus = tmp / "warmup.zarr"
    write_corpus(corpus, 5_000, 8, seed=SEED, n_test=500)
    run = run_rifscale(corpus, tmp / "warmup-run", LAM, tmp, "warmup-rifscale")
    run_child("floor", {"corpus": str(corpus), "seed": SEED}, tmp, "warmup-floor")
    info = {"corpus_bytes": dir_bytes(corpus), "rifscale_wall_s": run["wall_s"], "rifscale_bytes_read": run["bytes_read"]}
    shutil.rmtree(corpus)
    return {"seconds": time.perf_counter() - t, **info}


def _case(text: str) -> tuple[int, int]:
    n, d = text.lower().split("x")
    return int(float(n)), int(d)


def _cases(text: str) -> tuple:
    return () if text.lower() == "none" else tuple(_case(c) for c in text.split(","))


def _one_case(text: str) -> tuple[int, int] | None:
    return None if text.lower() == "none" else _case(text)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"small sizes ({QUICK_CASES}, peers at {QUICK_PEER_CASE}), 1 repeat")
    ap.add_argument("--cases", type=_cases, help="floor-ratio cases, e.g. 2e5x384,1e6x768 ('none' skips the table)")
    ap.add_argument("--peer-case", type=_cases, help="NxD of the peers table ('none' skips it)")
    ap.add_argument("--peers", type=lambda s: tuple(s.split(",")), default=tuple(PEERS),
                    help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument("--beyond-ram", type=_one_case, default=None, metavar="NxD",
                    help="NxD of the beyond-RAM table, e.g. 1.5e7x512 (about 31 GB; default none: skipped, "
                    "with --quick too)")
    ap.add_argument("--beyond-ref-n", type=lambda s: int(float(s)), default=BEYOND_REF_N, metavar="N",
                    help=f"n of the beyond-RAM reference case (default {BEYOND_REF_N:,})")
    ap.add_argument("--repeats", type=int,
                    help="repeats per timing (default 3; 1 with --quick and in the beyond-RAM table)")
    ap.add_argument("--chunk-rows", type=int, help="ingest chunk_rows (default: ingest's own default)")
    ap.add_argument("--tmpdir", type=Path, help="where corpora and runs go (default: system temp; deleted after)")
    ap.add_argument("--out", type=Path, help="result JSON path (the .md summary goes beside it)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine before each timed run")
    ap.add_argument("--rifscale", help="the rifscale console script to time (default: this environment's)")
    ap.add_argument("--wrap", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        ap.error(f"unknown peers {sorted(unknown)}; choose from {','.join(PEERS)}")
    if args.beyond_ref_n < 1:
        ap.error("--beyond-ref-n must be positive")
    return args


def settings(args) -> dict:
    """The sizes, repeats and options of this run (defaults filled in), as recorded."""
    peer_case = args.peer_case if args.peer_case is not None else ((QUICK_PEER_CASE if args.quick else PEER_CASE),)
    if len(peer_case) > 1:
        raise SystemExit("--peer-case takes one NxD")
    return {
        "cases": [list(c) for c in (args.cases if args.cases is not None else QUICK_CASES if args.quick else FULL_CASES)],
        "peer_case": list(peer_case[0]) if peer_case else None,
        "peers": list(args.peers), "repeats": args.repeats or (1 if args.quick else 3),
        "beyond_ram": list(args.beyond_ram) if args.beyond_ram else None, "beyond_ref_n": args.beyond_ref_n,
        "beyond_repeats": args.repeats or 1, "beyond_rss_limit": BEYOND_RSS_LIMIT,
        "lam": LAM, "seed": SEED, "n_test": N_TEST, "chunk_rows": args.chunk_rows, "rifscale": rifscale_bin(),
        "sklearn_solver": SKLEARN_SOLVER, "sklearn_max_iter": SKLEARN_MAX_ITER,
        "rss_sample_interval_s": SAMPLE_INTERVAL, "driver_env": START_ENV, "wait_for_quiet": not args.no_wait,
    }


def run_all(cfg: dict, tmpdir: Path | None) -> dict:
    """Warm-up, the floor, peers and beyond-RAM tables, in a temporary directory."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="rifscale-scale-", dir=tmpdir) as tmp:
        tmp = Path(tmp)
        if cfg["beyond_ram"]:  # refuse before anything else runs
            check_disk(tmp, *cfg["beyond_ram"])
        out["warm_up"] = warm_up(tmp)
        out["floor"] = [bench_floor_case(n, d, tmp, cfg["repeats"], cfg["chunk_rows"]) for n, d in cfg["cases"]]
        if cfg["peer_case"]:
            n, d = cfg["peer_case"]
            out["peers"] = bench_peers(n, d, cfg["peers"], tmp, cfg["repeats"], cfg["chunk_rows"])
        if cfg["beyond_ram"]:
            n, d = cfg["beyond_ram"]
            out["beyond_ram"] = bench_beyond_ram(n, d, cfg["beyond_ref_n"], tmp, cfg["beyond_repeats"])
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.wrap:
        return wrap_main(args.wrap)
    if args.child:
        return child_main(*args.child)
    bench_engine.WAIT_FOR_QUIET = not args.no_wait
    global RIFSCALE
    RIFSCALE = args.rifscale
    today = _dt.date.today().isoformat()
    path = args.out or HERE / "results" / f"scale-{today}{'-quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = settings(args)
    result = {"benchmark": "rifscale at scale", "date": today, "quick": args.quick, "command": " ".join(sys.argv),
              "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "config": cfg,
              "machine": machine(), "source": source_info(), **run_all(cfg, args.tmpdir)}
    result["benchmark_wall_s"] = time.perf_counter() - t0
    summary_md = markdown(result)
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    path.with_suffix(".md").write_text(summary_md)
    print(summary_md)
    say(f"wrote {path} and {path.with_suffix('.md').name} ({result['benchmark_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
