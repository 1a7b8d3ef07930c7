"""Command-line interface: a thin layer that parses arguments into the same typed config
the Python API takes, and calls the library.

    rifscale ingest OUT --npz data.npz [--chunk-rows N]
    rifscale run CORPUS --out RUN [--lam λ] [--no-intercept] [--test-subset paper|all|FILE] [--scheduler ADDR]
    rifscale groups RUN --sets sets.json
    rifscale demo [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
import zipfile
from pathlib import Path

from . import __version__
from .config import METRICS, RunConfig
from .errors import CorpusError, RifscaleError

log = logging.getLogger("rifscale")


def _ingest(args) -> int:
    from .io import ingest

    sources = {k: getattr(args, k) for k in ("train_X", "train_y", "train_ids", "test_X", "test_y", "test_ids")}
    if args.npz:
        try:
            with zipfile.ZipFile(args.npz) as zf:
                members = {n.removesuffix(".npy") for n in zf.namelist()}
        except (OSError, zipfile.BadZipFile) as exc:
            raise CorpusError(f"Cannot read --npz {args.npz!r} as an .npz archive ({exc}).") from None
        for key in sources:
            if sources[key] is None and key in members:
                sources[key] = f"{args.npz}:{key}"
    if sources["train_X"] is None or sources["train_y"] is None:
        raise RifscaleError("ingest needs --train-X and --train-y (or --npz FILE holding train_X and train_y).")
    corpus = ingest(args.out, chunk_rows=args.chunk_rows, dtype=args.dtype, compressor=args.compressor,
                    overwrite=args.overwrite, **sources)
    test = f", test {corpus.test.n} x {corpus.test.d}" if corpus.test else ""
    print(f"wrote corpus {args.out}: train {corpus.n} x {corpus.d}{test}, {corpus.train.X.numblocks[0]} row chunk(s)")
    return 0


def config_from_args(args) -> RunConfig:
    return RunConfig(
        lam=args.lam,
        fit_intercept=not args.no_intercept,
        tol=args.tol,
        max_iter=args.max_iter,
        test_subset=args.test_subset,
        metrics=tuple(args.metrics),
        leverage_threshold=args.leverage_threshold,
        seed=args.seed,
        persist=args.persist,
        device=args.device,
    )


def _run(args) -> int:
    from .cluster import connect
    from .outputs import check_output
    from .pipeline import attribute, write_run

    config = config_from_args(args)
    check_output(Path(args.out), overwrite=args.overwrite)  # fail before any work
    with connect(args.scheduler, n_workers=args.workers, processes=args.processes,
                 dashboard=args.dashboard) as client:
        result = attribute(args.corpus, config, client=client)
        manifest = write_run(result, args.out, overwrite=args.overwrite, progress=not args.quiet and sys.stdout.isatty())
    print(
        f"wrote run {args.out}: n = {manifest['n']}, p = {manifest['p']}, fit converged in "
        f"{manifest['fit']['n_iter']} iterations (rel grad {manifest['fit']['rel_grad_norm']:.1e}), "
        f"{manifest['counts']['flagged_low_margin']} flagged sample(s)"
    )
    return 0


def _groups(args) -> int:
    from .cluster import connect
    from .groups import format_table, group_effects, normalise_sets, write_groups
    from .outputs import check_output
    from .pipeline import open_run

    run = open_run(args.run, corpus=args.corpus)
    sets = normalise_sets(args.sets, run.corpus.n)
    out = run.path / "groups"
    check_output(out, overwrite=args.overwrite)  # before any work
    with connect(args.scheduler, n_workers=args.workers, processes=args.processes,
                 dashboard=args.dashboard) as client:
        estimates = group_effects(run, sets, client=client)
    write_groups(run.path, estimates, overwrite=args.overwrite)
    for metric in run.model.metrics:
        print(format_table(estimates, metric, "plugin"))
    print(f"wrote {out}")
    return 0


def _validate(args) -> int:
    from .cluster import connect
    from .validate import run_validation

    with connect(args.scheduler, n_workers=args.workers, processes=args.processes,
                 dashboard=args.dashboard) as client:
        page = run_validation(
            args.run, experiments=tuple(args.experiments), strategies=tuple(args.strategies), n_sizes=args.n_sizes,
            seed=args.seed, poison_points=args.poison_points, top_metric=args.top_metric,
            top_sign=1 if args.top_sign == "+" else -1, overwrite=args.overwrite, corpus=args.corpus, client=client,
        )
    print(f"wrote {page.parent} (open {page} in a browser) and {page.parent.parent / 'validation'}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, scheduler=args.scheduler, overwrite=args.overwrite, n_workers=args.workers,
             processes=args.processes, dashboard=args.dashboard)
    return 0


def _add_cluster(p) -> None:
    p.add_argument("--scheduler", metavar="ADDRESS", help="address of a running dask scheduler (default: this machine's cores, on dask's threaded scheduler)")
    p.add_argument("--workers", type=int, help="without --scheduler: threads (or worker processes with "
                   "--processes) on this machine (default: one per core)")
    p.add_argument("--processes", action="store_true", help="without --scheduler: start a LocalCluster of worker "
                   "processes instead of running on threads (slower to start; isolates workers)")
    p.add_argument("--dashboard", action="store_true", help="without --scheduler: run the threads as an in-process "
                   "LocalCluster and log its dashboard address")


def build_parser() -> argparse.ArgumentParser:
    defaults = RunConfig()
    ap = argparse.ArgumentParser(prog="rifscale", description="Rescaled influence functions (RIF) at scale.")
    ap.add_argument("--version", action="version", version=f"rifscale {__version__}")
    ap.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="build a Zarr corpus from .npy/.npz files or Zarr arrays")
    p.add_argument("out", help="path of the corpus to create (e.g. corpus.zarr)")
    p.add_argument("--npz", help="an .npz holding train_X, train_y [, train_ids, test_X, test_y, test_ids]")
    for key in ("train_X", "train_y", "train_ids", "test_X", "test_y", "test_ids"):
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, metavar="SRC", help="file.npy, file.npz:key, or a Zarr array path")
    p.add_argument("--chunk-rows", type=int, help="rows per stored chunk (default: about 32 MiB of X per chunk, "
                   "rows split evenly)")
    p.add_argument("--compressor", choices=("none", "zstd"), default="none",
                   help="compression of the stored arrays (default none: embeddings barely compress and zstd "
                   "makes every read about 3x slower)")
    p.add_argument("--dtype", choices=("float32", "float64"), help="storage dtype of X (default: the source's, float32 for non-floats)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_ingest)

    p = sub.add_parser("run", help="fit, factor and score every training sample")
    p.add_argument("corpus", help="path of a Zarr corpus")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--lam", type=float, default=defaults.lam, help=f"L2 penalty λ (default {defaults.lam})")
    p.add_argument("--no-intercept", action="store_true", help="fit without an (unpenalised) intercept")
    p.add_argument("--tol", type=float, default=defaults.tol, help=f"Newton tolerance on the relative gradient norm (default {defaults.tol})")
    p.add_argument("--max-iter", type=int, default=defaults.max_iter)
    p.add_argument("--test-subset", default=defaults.test_subset, metavar="paper|all|FILE")
    p.add_argument("--metrics", nargs="+", default=list(defaults.metrics), choices=METRICS)
    p.add_argument("--leverage-threshold", type=float, default=defaults.leverage_threshold)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--persist", choices=("auto", "always", "never"), default=defaults.persist,
                   help="keep the training rows in worker memory for all passes (auto: when they take at most "
                   "half of it; default auto)")
    p.add_argument("--device", choices=("cpu", "gpu"), default=defaults.device,
                   help="run the row-chunk kernels on the CPU or, with CuPy, on the workers' GPUs (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace the run directory if it exists")
    _add_cluster(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("groups", help="IF / RIF / NS estimates for named removal sets")
    p.add_argument("run", help="a run directory made by `rifscale run`")
    p.add_argument("--sets", required=True, help='JSON file {"name": [row indices...]}')
    p.add_argument("--corpus", help="corpus path, if it moved since the run")
    p.add_argument("--overwrite", action="store_true", help="replace RUN/groups if it exists")
    _add_cluster(p)
    p.set_defaults(func=_groups)

    from .removal import STRATEGIES
    from .validate import EXPERIMENTS

    p = sub.add_parser("validate", help="estimates vs exact retrains: accuracy, sweeps, poisoning; figures and HTML")
    p.add_argument("run", help="a run directory made by `rifscale run`")
    p.add_argument("--experiments", nargs="+", default=["accuracy"], choices=EXPERIMENTS)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--n-sizes", type=int, default=40, help="removal-set sizes from 0.1%% to 5%% of n (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--poison-points", type=int, default=100, help="test points of the poisoning experiment")
    p.add_argument("--top-metric", default="test_loss", choices=METRICS, help="metric ranked by top_influence")
    p.add_argument("--top-sign", default="+", choices=("+", "-"), help="rank by +s_IF or -s_IF")
    p.add_argument("--corpus", help="corpus path, if it moved since the run")
    p.add_argument("--overwrite", action="store_true", help="replace RUN/validation and RUN/report")
    _add_cluster(p)
    p.set_defaults(func=_validate)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded Fashion-MNIST data")
    p.add_argument("--out", default="rifscale-demo", help="output directory (default ./rifscale-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace the output directory if it exists")
    _add_cluster(p)
    p.set_defaults(func=_demo)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        return args.func(args)
    except RifscaleError as exc:
        print(f"rifscale {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
