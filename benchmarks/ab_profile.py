#!/usr/bin/env python
"""Interleaved A/B of the per-stage profile (``profile_cluster.py``) of two source trees.

For each repeat and each mode, ``profile_cluster.py CORPUS`` runs once with the base
tree's ``rifscale`` first on ``PYTHONPATH`` (its workers inherit it) and once with this
tree's, alternating; each child runs the job twice on its cluster and keeps the second
(warm) run. The table gives medians per stage: total, warm start, the main fit's Newton
passes (sum), factor, test subset + metrics, scores pass + store, and the client's bytes
in per Hessian pass.

    git worktree add ../base <commit>
    .venv/bin/python benchmarks/ab_profile.py CORPUS --base ../base --modes threads external \\
        --repeats 3 --out benchmarks/results/profile-cluster-<date>

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child(tree: Path, corpus: str, mode: str, workers: int, out: Path, tmp: Path, interval: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(HERE / "profile_cluster.py"), corpus, "--mode", mode, "--workers", str(workers),
           "--repeats", "2", "--tmp", str(tmp), "--out", str(out)]
    if interval and mode != "threads":
        cmd += ["--profile-interval", interval]
    # the script's own directory heads the child's sys.path, then PYTHONPATH: the tree's rifscale
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = json.loads(Path(f"{out}.json").read_text())
    return result["runs"][-1]


def stages(run: dict) -> dict:
    top = {}
    for e in run["stages"]:
        if e["depth"] == 0:
            top[e["stage"]] = top.get(e["stage"], 0.0) + e["seconds"]
    fit_passes = [e for e in run["stages"] if e["stage"] == "pass" and e["depth"] == 1]
    warm = sum(e["seconds"] for e in run["stages"] if e["stage"] == "warm start")
    hessian_in = [e["received"] for e in fit_passes if e["received"] > 100_000]
    return {
        "total": run["seconds"], "warm start": warm, "fit passes": sum(e["seconds"] for e in fit_passes),
        "passes": len(fit_passes), "fit": top.get("fit", 0.0), "factor": top.get("factor", 0.0),
        "test subset + metrics": top.get("test subset", 0.0) + top.get("metrics", 0.0),
        "scores pass + store": top.get("scores pass + store", 0.0),
        "client MB in per Hessian pass": (statistics.median(hessian_in) / 1e6) if hessian_in else 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus")
    ap.add_argument("--base", type=Path, required=True, help="the base source tree (e.g. a git worktree)")
    ap.add_argument("--modes", nargs="+", default=["threads", "external"], choices=("threads", "processes", "external"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--interval", default="100ms", help="the head side's workers' profile interval (the base side "
                    "keeps dask's default, as its recipes did)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sides = {"base": args.base.resolve(), "head": ROOT}
    results = {m: {s: [] for s in sides} for m in args.modes}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(args.repeats):
            for mode in args.modes:
                for side, tree in (sides.items() if r % 2 == 0 else reversed(list(sides.items()))):
                    run = child(tree, args.corpus, mode, args.workers, tmp / f"{side}-{mode}-{r}", tmp,
                                args.interval if side == "head" else None)
                    results[mode][side].append(stages(run))
                    print(f"repeat {r} {mode:9s} {side}: {run['seconds']:.2f} s", flush=True)
    keys = list(next(iter(results.values()))["base"][0])
    lines = [f"# Per-stage profile, {args.corpus}: base {args.base.name} vs head", "",
             f"{args.repeats} interleaved repeats per mode; medians of the warm (second) run of each child; "
             f"external = `dask scheduler` + {args.workers} x `dask worker --nthreads 1` (head: stack sampler every "
             f"{args.interval}; base: dask's default 10 ms).", ""]
    for mode in args.modes:
        lines += [f"## {mode}", "", "| stage | base | head | head / base |", "|---|---:|---:|---:|"]
        for k in keys:
            b = statistics.median(x[k] for x in results[mode]["base"])
            h = statistics.median(x[k] for x in results[mode]["head"])
            lines.append(f"| {k} | {b:.3g} | {h:.3g} | {h / b:.2f} |" if b else f"| {k} | {b:.3g} | {h:.3g} | |")
        lines.append("")
    Path(f"{args.out}.json").write_text(json.dumps({"corpus": args.corpus, "base": str(args.base), "results": results},
                                                   indent=1))
    Path(f"{args.out}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
