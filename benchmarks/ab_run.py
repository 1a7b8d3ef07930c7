#!/usr/bin/env python
"""Interleaved A/B of ``rifscale run`` between two source trees (a refactor's "no slowdown").

Each repeat runs ``rifscale run CORPUS --out RUN --lam LAM`` once with the base tree's
``rifscale`` first on ``PYTHONPATH`` and once with this tree's, alternating which goes
first; the same interpreter and packages serve both. Reported per tree: the median wall
time of the whole command (process start to exit) and the medians of the run's own stage
timings from its manifest, with the ratio head / base measured side by side.

    git worktree add ../base <commit>
    .venv/bin/python benchmarks/ab_run.py --base ../base --n 200000 --d 384 --repeats 5 \\
        --out benchmarks/results/ab-layout-<date>

``--extra=--processes`` (any further ``rifscale run`` options, for both sides) times another
execution mode; worker processes inherit ``PYTHONPATH``, so they run the same tree.

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def tree_env(tree: Path) -> dict:
    """The environment and working directory that make a child Python import ``tree``'s
    rifscale: its ``PYTHONPATH`` (worker processes inherit it), and the tree as the working
    directory, because ``python -c`` puts the working directory before ``PYTHONPATH`` (run
    from another checkout's root, both sides would import that checkout)."""
    return {"env": {**os.environ, "PYTHONPATH": str(tree)}, "cwd": str(tree)}


def check_tree(tree: Path) -> None:
    """Fail unless a child started as :func:`one_run` starts it imports ``tree``'s rifscale."""
    where = subprocess.run([sys.executable, "-c", "import rifscale; print(rifscale.__file__)"], check=True,
                           capture_output=True, text=True, **tree_env(tree)).stdout.strip()
    if Path(where).resolve().parent.parent != tree.resolve():
        raise SystemExit(f"ab_run: a child meant to run {tree} imports rifscale from {where}")


def one_run(tree: Path, corpus: Path, out: Path, lam: float, extra=()) -> dict:
    cmd = [sys.executable, "-c", "from rifscale.cli import console_main; console_main()",
           "run", str(corpus), "--out", str(out), "--lam", str(lam), "-q", *extra]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **tree_env(tree))
    wall = time.perf_counter() - t
    manifest = json.loads((out / "manifest.json").read_text())
    timings = manifest.get("timings", {})
    shutil.rmtree(out)
    return {"wall": wall, **{k: v for k, v in timings.items() if isinstance(v, (int, float))}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="source tree of the base (a git worktree)")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--extra", default="", help="further `rifscale run` options for both sides, e.g. '--processes'")
    ap.add_argument("--tmp", type=Path, default=None, help="where the corpus and runs go (default: system tmp)")
    ap.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md are written")
    args = ap.parse_args(argv)
    trees = {"base": args.base.resolve(), "head": ROOT}
    for name, tree in trees.items():
        if not (tree / "rifscale" / "__init__.py").exists():
            ap.error(f"{name} tree {str(tree)!r} has no rifscale package")
        check_tree(tree)
    from _synth import write_corpus

    rows = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.zarr"
        write_corpus(corpus, args.n, args.d, seed=1)
        for r in range(args.repeats):
            order = list(trees) if r % 2 == 0 else list(trees)[::-1]
            for name in order:
                rows[name].append(one_run(trees[name], corpus, tmp / f"run-{name}", args.lam, args.extra.split()))
                print(f"repeat {r} {name}: {rows[name][-1]['wall']:.2f} s", flush=True)
    keys = sorted(set.intersection(*(set(k for row in rs for k in row) for rs in rows.values())),
                  key=lambda k: (k != "wall", k))
    med = {name: {k: statistics.median(row[k] for row in rs if k in row) for k in keys} for name, rs in rows.items()}
    result = {"n": args.n, "d": args.d, "lam": args.lam, "repeats": args.repeats, "extra": args.extra,
              "base": str(args.base), "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "runs": rows, "medians": med}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# `rifscale run{(' ' + args.extra) if args.extra else ''}` A/B: base vs head, {args.n} x {args.d}, lam {args.lam}, "
             f"{args.repeats} interleaved repeats (medians, seconds)", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs.", "",
             "| | base | head | head / base |", "|---|---:|---:|---:|"]
    for k in keys:
        b, h = med["base"][k], med["head"][k]
        lines.append(f"| {k} | {b:.2f} | {h:.2f} | {h / b:.3f} |" if b else f"| {k} | {b:.2f} | {h:.2f} | |")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
