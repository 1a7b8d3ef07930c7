#!/usr/bin/env python
"""Where does each second of a distributed rifscale run go? A per-stage, per-pass profile.

Runs ``rifscale.attribute`` + ``write_run`` (what ``rifscale run`` does) on a corpus, in one
of the execution modes users run, and records for every stage (persist, warm start, each
Newton pass, factor, metrics, scores pass) and every pass over the data:

* wall time on the client, split into graph building (client CPU), waiting for the
  result, and unpacking;
* the number of tasks in the graph submitted;
* bytes the client sent and received over its comms (counted at the TCP frame level in
  this process: graphs and scattered values out, results in);
* with ``--report``: dask's performance report (task stream, worker profiles, transfers).

Modes: ``threads`` (dask's threaded scheduler, no client), ``processes`` (a LocalCluster
of single-threaded worker processes), ``external`` (``dask scheduler`` + ``dask worker``
processes started by this script on 127.0.0.1, one thread each; or ``--scheduler ADDR``
to use a running one).

    .venv/bin/python benchmarks/profile_cluster.py CORPUS --mode external --workers 2 \
        --out benchmarks/results/profile-cluster-<date>
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class Traffic:
    """Bytes in and out of this process's TCP comms (distributed's frame layer)."""

    def __init__(self):
        self.sent = 0
        self.received = 0
        self.messages_in = 0
        self.messages_out = 0

    def install(self):
        import distributed.comm.tcp as tcp

        to_frames, from_frames = tcp.to_frames, tcp.from_frames

        async def counted_to(msg, *args, **kwargs):
            frames = await to_frames(msg, *args, **kwargs)
            self.sent += sum(memoryview(f).nbytes for f in frames)
            self.messages_out += 1
            return frames

        async def counted_from(frames, *args, **kwargs):
            self.received += sum(memoryview(f).nbytes for f in frames)
            self.messages_in += 1
            return await from_frames(frames, *args, **kwargs)

        tcp.to_frames, tcp.from_frames = counted_to, counted_from

    def snapshot(self) -> tuple[int, int]:
        return self.sent, self.received


@contextlib.contextmanager
def external_cluster(workers: int, threads: int, tmp: Path, memory_limit: str, profile_interval: str | None = None):
    """``dask scheduler`` + ``workers`` × ``dask worker`` processes on 127.0.0.1 (their stack
    sampler every ``profile_interval``, or dask's default)."""
    bindir = Path(sys.executable).parent
    sched_file = tmp / f"scheduler-{workers}.json"
    sched_file.unlink(missing_ok=True)
    env = dict(os.environ)
    if profile_interval:
        env["DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL"] = profile_interval
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        for _ in range(workers):
            procs.append(subprocess.Popen(
                [str(bindir / "dask"), "worker", "--scheduler-file", str(sched_file), "--nthreads", str(threads),
                 "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--memory-limit", memory_limit],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        yield str(sched_file)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


class Recorder:
    """Wrap the engine's stage functions to time them and count the client's traffic."""

    def __init__(self, traffic: Traffic | None):
        self.traffic = traffic
        self.events: list[dict] = []
        self.depth = 0

    def wrap(self, module, name: str, label: str):
        original = getattr(module, name)

        def timed(*args, **kwargs):
            sent, recv = self.traffic.snapshot() if self.traffic else (0, 0)
            t0 = time.perf_counter()
            self.depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self.depth -= 1
                s2, r2 = self.traffic.snapshot() if self.traffic else (0, 0)
                self.events.append({"stage": label, "depth": self.depth, "seconds": time.perf_counter() - t0,
                                    "sent": s2 - sent, "received": r2 - recv, "end": time.perf_counter()})

        setattr(module, name, timed)


def run(args) -> dict:
    import dask

    import rifscale
    import rifscale.engine.factor
    import rifscale.engine.fit
    import rifscale.engine.hessian
    import rifscale.estimates.metrics
    import rifscale.pipeline
    import rifscale.runs.format

    traffic = Traffic() if args.mode != "threads" else None
    if traffic:
        traffic.install()
    rec = Recorder(traffic)
    rec.wrap(rifscale.engine.fit, "objectives", "pass")
    rec.wrap(rifscale.engine.fit, "subsample_start", "warm start")
    rec.wrap(rifscale.pipeline, "prepare_split", "prepare split")
    rec.wrap(rifscale.pipeline, "fit", "fit")
    rec.wrap(rifscale.pipeline, "factor_hessian", "factor")
    rec.wrap(rifscale.pipeline, "metric_at", "metrics")
    rec.wrap(rifscale.pipeline, "select_test_subset", "test subset")
    rec.wrap(rifscale.runs.format, "write_scores", "scores pass + store")

    result = {"mode": args.mode, "workers": args.workers, "threads": args.threads, "runs": []}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        client = None
        if args.mode != "threads":
            from distributed import Client, LocalCluster

            if args.mode == "processes":
                cluster = stack.enter_context(LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                                                           processes=True, host="127.0.0.1",
                                                           dashboard_address=":0"))
                address = cluster.scheduler_address
            else:
                address = args.scheduler or stack.enter_context(
                    external_cluster(args.workers, args.threads, tmp, args.memory_limit, args.profile_interval))
            client = stack.enter_context(Client(address) if not str(address).endswith(".json")
                                         else Client(scheduler_file=address))
            client.wait_for_workers(args.workers, timeout=120)
        else:
            stack.enter_context(dask.config.set(scheduler="threads", num_workers=args.workers * args.threads))
        from threadpoolctl import threadpool_limits

        stack.enter_context(threadpool_limits(1, user_api="blas"))
        for r in range(args.repeats):
            rec.events.clear()
            sent0, recv0 = traffic.snapshot() if traffic else (0, 0)
            last = r == args.repeats - 1
            with _report(client, args.out if args.report and last else None):
                t0 = time.perf_counter()
                res = rifscale.attribute(args.corpus, lam=args.lam, client=client)
                manifest = rifscale.runs.format.write_run(res, tmp / f"run{r}")
                total = time.perf_counter() - t0
            s1, r1 = traffic.snapshot() if traffic else (0, 0)
            passes = [e for e in rec.events if e["stage"] == "pass"]
            result["runs"].append({
                "seconds": total, "sent": s1 - sent0, "received": r1 - recv0,
                "stages": [{k: v for k, v in e.items() if k != "end"} for e in rec.events],
                "passes": len(passes), "fit": manifest["fit"]["seconds"],
                "timings": manifest.get("timings"), "layout": manifest.get("layout"),
                "theta_norm": float(np.linalg.norm(res.theta)),
            })
            print(f"[{args.mode}] repeat {r}: {total:.2f} s; "
                  + ", ".join(f"{e['stage']} {e['seconds']:.2f}" for e in rec.events if e["depth"] == 0),
                  flush=True)
    return result


def _report(client, out):
    """dask's performance report of the block, written to OUT-report.html (or nothing)."""
    if client is None or out is None:
        return contextlib.nullcontext()
    from distributed import performance_report

    return performance_report(filename=f"{out}-report.html")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("--mode", choices=("threads", "processes", "external"), default="external")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker")
    ap.add_argument("--scheduler", help="use a running scheduler (address or scheduler file) for --mode external")
    ap.add_argument("--memory-limit", default="auto")
    ap.add_argument("--profile-interval", help="the started workers' distributed.worker.profile.interval "
                    "(default: dask's, 10ms)")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2, help="repeats on the same (warm) cluster")
    ap.add_argument("--report", action="store_true", help="dask performance report of the last repeat")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--out", help="write OUT.json (and OUT-report.html with --report)")
    args = ap.parse_args()
    result = run(args)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "node": "local"}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
