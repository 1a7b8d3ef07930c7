"""Peak memory of each dask worker during `rifscale run`, for the sizing guide in
deploy/README.md.

    make .venv-run/.installed   # rifscale as users install it (no test extras; see below)
    .venv-run/bin/python benchmarks/bench_worker_memory.py           # the full grid, 10-15 minutes on 2 cores
    .venv-run/bin/python benchmarks/bench_worker_memory.py --quick   # a smoke run on tiny corpora
    .venv-run/bin/python benchmarks/bench_worker_memory.py --out somewhere/mem.json   # the .md goes beside it

For every case (n, d, stored chunk rows, storage dtype, --persist) a synthetic corpus
(benchmarks/_synth.py, seed 2026) is ingested, a fresh LocalCluster of ``--workers``
single-threaded worker processes is started on 127.0.0.1, and ``rifscale run CORPUS
--out RUN --scheduler ADDRESS --persist MODE`` runs as a child process against it. The
peak resident set size of each worker process is read from the kernel (``VmHWM`` in
/proc/PID/status, exact; elsewhere the maximum of psutil samples every 20 ms), and the
worker's RSS just before the run is recorded as its idle baseline. The rows per block
the engine used (it splits stored chunks that are too coarse, see rifscale/partition.py)
come from the run's manifest.

A least-squares fit over the streamed cases gives

    peak per worker ≈ c + a · block_rows · d · itemsize + a64 · block_rows · d · 8 B + b · d² · 8 B

(copies of a block as stored, float64 working copies of it, p × p matrices), and for the
persisted cases the training rows the busiest worker keeps (⌈blocks / workers⌉ ·
block_rows · d · itemsize) are added to the prediction. The JSON keeps every
measurement; the Markdown summary has the table and the fit (``--render JSON`` writes
the summary of an earlier JSON again).

The workers run this interpreter: run it from an environment with rifscale's own
dependencies only. The test extras (xarray) make dask.array import pandas in every worker,
which adds about 200 MiB per worker to the baseline (recorded in the results).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _synth import N_TEST, synthetic_split
from bench_engine import machine_info, say, source_info  # a sibling: the script's folder is on sys.path

HERE = Path(__file__).resolve().parent
SEED = 2026
N_WORKERS = 2
MiB = 2**20

#: (n, d, stored chunk rows, dtype, persist)
FULL_CASES = (
    (200_000, 64, 8_192, "float32", "never"),
    (200_000, 64, 32_768, "float32", "never"),
    (200_000, 256, 8_192, "float32", "never"),
    (200_000, 256, 32_768, "float32", "never"),
    (200_000, 256, 32_768, "float64", "never"),
    (50_000, 1024, 4_096, "float32", "never"),
    (50_000, 1024, 8_192, "float32", "never"),
    (20_000, 2048, 4_096, "float32", "never"),
    (200_000, 64, 32_768, "float32", "always"),
    (200_000, 256, 32_768, "float32", "always"),
    (200_000, 256, 32_768, "float64", "always"),
    (50_000, 1024, 8_192, "float32", "always"),
)
QUICK_CASES = (
    (6_000, 16, 2_000, "float32", "never"),
    (6_000, 16, 2_000, "float32", "always"),
)
#: ``--softmax``: (n, d, stored chunk rows, dtype, persist, classes), rows streamed. The
#: prediction is the binary fit's (``--coefficients``) with p² → P² (P = K(d + 1) − 1: the
#: factor and the Hessian sums) plus the scores' V_k products of a sub-block (≤ 32 MiB).
SOFTMAX_CASES = (
    (50_000, 64, 8_192, "float32", "never", 10),
    (50_000, 128, 8_192, "float32", "never", 10),
    (20_000, 256, 4_096, "float32", "never", 10),
)
QUICK_SOFTMAX_CASES = ((6_000, 16, 2_000, "float32", "never", 4),)
#: Most bytes of the V_k products per sub-block of the softmax scores kernel.
SOFTMAX_SUBBLOCK_BYTES = 32 * MiB
#: The sizing guide's P² coefficient for softmax workers (deploy/README.md): set from the
#: --softmax cases of 2026-12-07 so that it bounds all three from above (the worker that
#: factors H holds H, L and L⁻¹ besides the Hessian sums: 479 MiB at P = 2 569).
SOFTMAX_P2_FACTOR = 6.5


def rifscale_bin() -> str:
    exe = Path(sys.executable).parent / "rifscale"
    return str(exe) if exe.exists() else (shutil.which("rifscale") or "rifscale")


def vm_hwm(pid: int) -> int | None:
    """Peak resident set size of a process (Linux: VmHWM), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_hwm(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark of a process (Linux: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Sampler:
    """RSS of some processes every ``interval`` s in a thread: the maximum of each."""

    def __init__(self, pids: dict, interval: float = 0.02):
        import psutil

        self.procs = {k: psutil.Process(p) for k, p in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self.interval, self._stop = interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for k, p in self.procs.items():
                try:
                    self.peak[k] = max(self.peak[k], p.memory_info().rss)
                except Exception:  # the process has exited
                    pass
            self._stop.wait(self.interval)

    def add(self, key, pid: int):
        import psutil

        self.procs[key] = psutil.Process(pid)
        self.peak[key] = 0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_corpus(path: Path, n: int, d: int, chunk: int, dtype: str, classes: int = 2) -> None:
    import rifscale

    X, y = synthetic_split(n, d, seed=SEED, split="train", classes=classes)
    Xt, yt = synthetic_split(N_TEST, d, seed=SEED, split="test", classes=classes)
    rifscale.ingest(path, train_X=X, train_y=y, test_X=Xt, test_y=yt, chunk_rows=chunk, dtype=dtype)


def run_case(case: tuple, corpus: Path, tmp: Path, workers: int) -> dict:
    from distributed import Client, LocalCluster

    n, d, chunk, dtype, persist, *more = case
    classes = more[0] if more else 2
    out = tmp / "run"
    shutil.rmtree(out, ignore_errors=True)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        memory_limit = min(w["memory_limit"] for w in client.scheduler_info()["workers"].values())
        time.sleep(0.5)
        import psutil

        idle = {a: psutil.Process(p).memory_info().rss for a, p in pids.items()}
        exact = all(reset_hwm(p) for p in pids.values())
        cmd = [rifscale_bin(), "-q", "run", str(corpus), "--out", str(out), "--scheduler", cluster.scheduler_address,
               "--persist", persist]
        t0 = time.perf_counter()
        with Sampler(pids) as sampler:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            sampler.add("driver", proc.pid)
            _, stderr = proc.communicate(timeout=3600)
            worker_hwm = {a: vm_hwm(p) for a, p in pids.items()}
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"rifscale run failed ({proc.returncode}): {stderr[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    layout = manifest.get("layout", {}).get("train", manifest.get("layout", {}))
    peaks = {a: (worker_hwm[a] if exact and worker_hwm[a] else sampler.peak[a]) for a in pids}
    rows_each = n / workers
    return {
        "n": n, "d": d, "chunk_rows": chunk, "dtype": dtype, "persist": persist, "workers": workers,
        "classes": classes, "p": manifest["p"], "model": (manifest.get("model") or {}).get("family", "binary"),
        "block_rows": layout.get("block_rows"), "blocks": layout.get("blocks"), "persisted": layout.get("persisted"),
        "fit_iterations": manifest["fit"]["n_iter"], "wall_s": round(wall, 2),
        "peak_source": "VmHWM" if exact else "psutil samples every 20 ms",
        "worker_peak_bytes": sorted(peaks.values()),
        "worker_peak_sampled_bytes": sorted(sampler.peak[a] for a in pids),
        "worker_idle_bytes": sorted(idle.values()),
        "worker_memory_limit_bytes": memory_limit,
        "driver_peak_bytes": sampler.peak["driver"],
        "train_bytes_per_worker": int(rows_each * d * np.dtype(dtype).itemsize),
    }


def _terms(r: dict) -> list[float]:
    """1, B·d·itemsize, B·d·8, d²·8 in MiB (B = block rows)."""
    block = r["block_rows"] * r["d"]
    return [1.0, block * np.dtype(r["dtype"]).itemsize / MiB, block * 8 / MiB, r["d"] ** 2 * 8 / MiB]


def kept_bytes(r: dict) -> int:
    """Training rows the busiest worker keeps when they are persisted: ⌈blocks / workers⌉ blocks."""
    if not r["persisted"]:
        return 0
    return -(-r["blocks"] // r["workers"]) * r["block_rows"] * r["d"] * np.dtype(r["dtype"]).itemsize


def fit_formula(records: list[dict]) -> dict | None:
    """Least squares over the streamed cases of the largest worker peak (MiB) against
    c + a·(B·d·itemsize) + a64·(B·d·8 B) + b·(d²·8 B)."""
    rows = [r for r in records if not r["persisted"] and r.get("model", "binary") == "binary"]
    if len(rows) < 5 or len({r["dtype"] for r in rows}) < 2:
        return None
    A = np.array([_terms(r) for r in rows])
    y = np.array([max(r["worker_peak_bytes"]) / MiB for r in rows])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    pred = A @ coef
    return {"c_mib": float(coef[0]), "a": float(coef[1]), "a64": float(coef[2]), "b": float(coef[3]),
            "max_abs_err_mib": float(np.max(np.abs(pred - y))), "max_rel_err": float(np.max(np.abs(pred - y) / y))}


def predict_mib(fit: dict, r: dict, *, p2_factor: float | None = None) -> float:
    """The fitted formula's peak (MiB); softmax: the p × p terms at P (with ``p2_factor``
    for their coefficient if given) plus the scores' V_k sub-block."""
    c = [fit["c_mib"], fit["a"], fit["a64"], fit["b"] if p2_factor is None else p2_factor]
    if r.get("model", "binary") == "softmax":
        terms = _terms(r)
        terms[3] = r["p"] ** 2 * 8 / MiB
        v = min(SOFTMAX_SUBBLOCK_BYTES, 8 * r["classes"] * r["p"] * r["block_rows"]) / MiB
        return float(np.dot(c, terms)) + v + kept_bytes(r) / MiB
    return float(np.dot(c, _terms(r))) + kept_bytes(r) / MiB


def markdown(result: dict) -> str:
    m, fit = result["machine"], result["fit"]
    lines = [
        f"# Peak memory per dask worker during `rifscale run`, {result['date']}",
        "",
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['ram_gib']} GiB RAM, {m['os']}; "
        f"Python {m['python']}, NumPy {m['versions']['numpy']}, Dask {m['versions']['dask']}, distributed "
        f"{m['versions']['distributed']}, Zarr {m['versions']['zarr']}. Code: commit "
        f"{(result['source']['commit'] or '?')[:10]}{' with local changes in rifscale/' if result['source']['rifscale_locally_modified'] else ''}.",
        f"Cluster: a fresh `LocalCluster` of {result['workers']} single-threaded worker processes on 127.0.0.1 per "
        "case; the run: `rifscale -q run CORPUS --out RUN --scheduler ADDRESS --persist MODE` in a child process "
        f"(defaults otherwise: lam 1, the 'paper' test subset, both metrics). Corpora: `benchmarks/_synth.py`, seed "
        f"{SEED}, {N_TEST:,} test rows, uncompressed. Peak per worker: {result['records'][0]['peak_source'] if result['records'] else ''} "
        "(the kernel's high-water mark of resident memory, reset just before the run); idle: the worker's RSS "
        "just before the run (Python, dask, NumPy). 'block rows' is what the engine used: stored chunks are split "
        "so that every thread gets at least 3 blocks per pass (rifscale/partition.py).",
        "Environment: " + ("rifscale's own dependencies only (`pip install rifscale`, as users install it)."
                           if not result["extra_packages_installed"] else
                           f"with {', '.join(result['extra_packages_installed'])} installed (xarray makes dask.array "
                           "import pandas in every worker: about +200 MiB each; run it from an environment with "
                           "rifscale's own dependencies only)."),
        "",
        "| n | d | K | P | dtype | chunk rows (stored) | block rows | persist | worker peak MiB (each) | idle MiB | "
        "peak − idle MiB | rows kept by the busiest worker MiB | predicted peak MiB | driver peak MiB | wall s |",
        "|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    softmax = bool(result.get("fit_from"))
    if softmax:
        lines[-2] = lines[-2].replace("predicted peak MiB |", f"predicted peak MiB (binary fit at P; sizing guide, "
                                      f"{SOFTMAX_P2_FACTOR} · P² · 8 B) |")
    for r in result["records"]:
        peak = max(r["worker_peak_bytes"]) / MiB
        idle = max(r["worker_idle_bytes"]) / MiB
        each = " / ".join(f"{b / MiB:.0f}" for b in r["worker_peak_bytes"])
        pred = f"{predict_mib(fit, r):.0f}" if fit else "–"
        if softmax:
            pred += f"; {predict_mib(fit, r, p2_factor=SOFTMAX_P2_FACTOR):.0f}"
        held = f"{kept_bytes(r) / MiB:.0f}" if r["persisted"] else "–"
        lines.append(
            f"| {r['n']:,} | {r['d']} | {r.get('classes', 2)} | {r.get('p', r['d'] + 1):,} | {r['dtype']} | "
            f"{r['chunk_rows']:,} | {r['block_rows']:,} | "
            f"{'kept' if r['persisted'] else 'streamed'} | {each} | {idle:.0f} | {peak - idle:.0f} | {held} | {pred} | "
            f"{r['driver_peak_bytes'] / MiB:.0f} | {r['wall_s']:.1f} |")
    if fit and result.get("fit_from"):
        lines += [
            "",
            f"Predicted from the binary fit of `{result['fit_from']}`: peak per worker ≈ "
            f"{fit['c_mib']:.0f} MiB + {fit['a']:.2f} · block_rows · d · itemsize + {fit['a64']:.2f} · block_rows · "
            f"d · 8 B + {fit['b']:.2f} · **P²** · 8 B + min(32 MiB, 8 · K · P · block_rows) (the scores' V_k of a "
            "sub-block): the binary formula with the p × p matrices (the broadcast L⁻¹, the Hessian sums) at "
            "P = K(d + 1) − 1. It falls short where P² dominates (P = 2 569: one worker peaked at 479 MiB against "
            "416 predicted; that worker factored H, holding H, L and L⁻¹ besides the sums), so the sizing guide "
            f"(deploy/README.md) takes **{SOFTMAX_P2_FACTOR} · P² · 8 B** for that term: set from these cases to bound "
            "all of them from above (a fitted bound, not an independent prediction).",
        ]
    elif fit:
        lines += [
            "",
            "Least-squares fit over the streamed cases (largest worker, MiB): peak per worker ≈ "
            f"**{fit['c_mib']:.0f} MiB + {fit['a']:.2f} · block_rows · d · itemsize + {fit['a64']:.2f} · "
            f"block_rows · d · 8 B + {fit['b']:.2f} · d² · 8 B**; largest error {fit['max_abs_err_mib']:.0f} MiB "
            f"({fit['max_rel_err']:.0%}). Only one streamed case is stored as float64, so the split between the "
            "itemsize and the float64 terms rests on it. Kept (persisted) cases: predicted = the same + the rows "
            "the busiest worker keeps (⌈blocks / workers⌉ · block_rows · d · itemsize); the prediction is an "
            "upper bound there, as a kept block is not read again.",
        ]
    lines += ["", f"The whole benchmark took {result['seconds']:.0f} s. Wall times are for orientation only: other "
              "processes shared the machine's cores during some runs (memory peaks are per process and unaffected).",
              ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny corpora, a smoke run")
    ap.add_argument("--workers", type=int, default=N_WORKERS)
    ap.add_argument("--out", type=Path, help="JSON result (default benchmarks/results/worker-memory-<date>.json)")
    ap.add_argument("--tmpdir", type=Path, help="where corpora and runs go (deleted afterwards)")
    ap.add_argument("--softmax", action="store_true", help="only the softmax cases (K = 10 classes), predicted "
                    "from the binary fit of --coefficients with P for p")
    ap.add_argument("--coefficients", type=Path, default=HERE / "results" / "worker-memory-2026-11-30.json",
                    help="an earlier full result whose fit predicts the --softmax cases")
    ap.add_argument("--render", type=Path, metavar="JSON", help="only write the Markdown summary of an earlier "
                    "result again (the fit recomputed from its records), beside it")
    args = ap.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        if result.get("fit_from"):  # a --softmax result: the binary fit it was predicted from
            result["fit"] = json.loads((HERE.parent / result["fit_from"]).read_text())["fit"]
        else:
            result["fit"] = fit_formula(result["records"])
        args.render.write_text(json.dumps(result, indent=2) + "\n")
        args.render.with_suffix(".md").write_text(markdown(result))
        say(f"wrote {args.render.with_suffix('.md')}")
        return 0
    date = _dt.date.today().isoformat()
    out = args.out or HERE / "results" / f"worker-memory-{date}{'-quick' if args.quick else ''}.json"
    if args.softmax:
        cases = QUICK_SOFTMAX_CASES if args.quick else SOFTMAX_CASES
        out = args.out or HERE / "results" / f"worker-memory-softmax-{date}{'-quick' if args.quick else ''}.json"
    else:
        cases = QUICK_CASES if args.quick else FULL_CASES
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="rifscale-mem-", dir=args.tmpdir))
    records = []
    try:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                          host="127.0.0.1") as cluster, Client(cluster) as client:
            machine = machine_info(client)
        corpora = {}
        for case in cases:
            n, d, chunk, dtype, persist, *more = case
            classes = more[0] if more else 2
            key = (n, d, chunk, dtype, classes)
            if key not in corpora:
                for old in corpora.values():
                    shutil.rmtree(old, ignore_errors=True)
                corpora = {key: tmp / f"corpus-{n}-{d}-{chunk}-{dtype}-{classes}.zarr"}
                say(f"ingest n={n:,} d={d} chunk={chunk:,} {dtype}" + (f" K={classes}" if classes > 2 else ""))
                make_corpus(corpora[key], n, d, chunk, dtype, classes)
            say(f"run n={n:,} d={d} chunk={chunk:,} {dtype} persist={persist}")
            rec = run_case(case, corpora[key], tmp, args.workers)
            say(f"  block rows {rec['block_rows']}, worker peaks "
                f"{', '.join(f'{b / MiB:.0f}' for b in rec['worker_peak_bytes'])} MiB, {rec['wall_s']} s")
            records.append(rec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import importlib.util

    # test and benchmark extras change the baseline: with xarray installed, dask.array
    # imports it (and pandas) in every worker, about +200 MiB each
    extras = [m for m in ("xarray", "statsmodels", "sklearn", "dask_ml") if importlib.util.find_spec(m)]
    result = {"date": date, "workers": args.workers, "machine": machine, "source": source_info(),
              "extra_packages_installed": extras,
              "platform": platform.platform(terse=True), "records": records,
              "fit": json.loads(args.coefficients.read_text())["fit"] if args.softmax else fit_formula(records),
              "fit_from": str(args.coefficients.relative_to(HERE.parent)) if args.softmax else None,
              "seconds": time.perf_counter() - t0}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    say(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
