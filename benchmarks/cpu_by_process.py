#!/usr/bin/env python
"""Who burns the CPU of a distributed run? CPU seconds per process and per client thread.

Starts ``dask scheduler`` + ``--workers`` × ``dask worker --nthreads 1`` on 127.0.0.1 (the
stack sampler every 100 ms, as deploy/ starts them), then runs ``rifscale.attribute`` and
``to_zarr`` on CORPUS ``--repeats`` times from this process, and records for each call its
wall time and the CPU seconds of the client (split by thread: the main thread, dask's IO
loop, and threads Python does not know, i.e. BLAS's own), the scheduler and each worker
(with its nanny). On a machine whose cores the workers use, every CPU second the client
and the scheduler spend is taken from the workers; an idle BLAS thread spinning after a
driver-side call shows up as the unnamed client thread.

    .venv-run/bin/python benchmarks/cpu_by_process.py CORPUS --workers 2 --repeats 3 \\
        --out benchmarks/results/cpu-by-process-<date>

Run it with ``PYTHONPATH=<another source tree>`` to measure that tree (the workers inherit
the variable).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_cluster  # noqa: E402


def tree_cpu(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process and its children."""
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def thread_cpu() -> dict:
    """This process's CPU seconds by thread, keyed by the thread's Python name, or
    "native" for threads Python did not start (BLAS's pool)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict = {}
    for t in psutil.Process().threads():
        key = names.get(t.id, "native")
        out[key] = out.get(key, 0.0) + t.user_time + t.system_time
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = ap.parse_args(argv)

    from distributed import Client

    import rifscale

    runs = []
    with tempfile.TemporaryDirectory() as tmp, \
            profile_cluster.external_cluster(args.workers, 1, Path(tmp), "auto", "100ms") as sched, \
            Client(scheduler_file=sched, timeout=60) as client:
        client.wait_for_workers(args.workers, timeout=120)
        scheduler_pid = client.run_on_scheduler(lambda: __import__("os").getpid())
        worker_pids = client.run(lambda: __import__("os").getpid())
        procs = {"scheduler": psutil.Process(scheduler_pid),
                 # the nanny, whose child is the worker
                 **{f"worker {k}": psutil.Process(pid).parent() for k, pid in enumerate(worker_pids.values())}}
        for k in range(args.repeats):
            before, threads0, t0 = {n: tree_cpu(p) for n, p in procs.items()}, thread_cpu(), time.perf_counter()
            result = rifscale.attribute(str(args.corpus), lam=args.lam, client=client)
            result.to_zarr(Path(tmp) / f"run-{k}")
            wall = time.perf_counter() - t0
            after, threads1 = {n: tree_cpu(p) for n, p in procs.items()}, thread_cpu()
            client_threads = {n: threads1[n] - threads0.get(n, 0.0) for n in threads1}
            runs.append({"repeat": k, "wall_s": wall,
                         "client_cpu_s": sum(client_threads.values()),
                         "client_threads_cpu_s": {n: round(v, 3) for n, v in client_threads.items() if v >= 0.005},
                         **{f"{n}_cpu_s": after[n] - before[n] for n in procs}})
            print(f"repeat {k}: wall {wall:.2f} s; client {runs[-1]['client_cpu_s']:.2f} s CPU "
                  f"({runs[-1]['client_threads_cpu_s']}), "
                  + ", ".join(f"{n} {after[n] - before[n]:.2f} s" for n in procs), flush=True)
    warm = runs[1:] or runs
    keys = [k for k in runs[0] if k.endswith("_cpu_s") and k != "client_threads_cpu_s"]
    summary = {"wall_s": statistics.median(r["wall_s"] for r in warm),
               **{k: statistics.median(r[k] for r in warm) for k in keys}}
    record = {"corpus": args.corpus.name, "workers": args.workers, "lam": args.lam, "runs": runs,
              "median_warm": summary,
              "machine": {"platform": platform.platform(), "cores": psutil.cpu_count(),
                          "python": platform.python_version()}}
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
        rows = "\n".join(f"| {r['repeat']} | {r['wall_s']:.2f} | {r['client_cpu_s']:.2f} | "
                         f"{r['client_threads_cpu_s'].get('native', 0.0):.2f} | {r['scheduler_cpu_s']:.2f} | "
                         + " | ".join(f"{r[k]:.2f}" for k in keys if k.startswith("worker")) + " |" for r in runs)
        workers = " | ".join(k[:-6] for k in keys if k.startswith("worker"))
        args.out.with_suffix(".md").write_text(
            f"# CPU seconds by process: `rifscale.attribute` + `to_zarr`, {args.corpus.name}, external cluster of "
            f"{args.workers} x 1 thread\n\n{platform.platform()}, {psutil.cpu_count()} cores; repeat 0 is cold "
            "(the workers' first use).\n\n"
            f"| repeat | wall | client CPU | of which BLAS threads | scheduler | {workers} |\n"
            f"|---:|---:|---:|---:|---:|{'---:|' * args.workers}\n{rows}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
