"""Command-line interface: a thin layer that parses arguments into the same typed config
the Python API takes, and calls the library.

    rifscale ingest OUT --npz data.npz [--chunk-rows N]
    rifscale ingest OUT --parquet s3://bucket/table/ [--x-column embedding --y-column label --id-column id]
    rifscale run CORPUS --out RUN [--lam λ] [--no-intercept] [--test-subset paper|all|FILE] [--scheduler ADDR]
    rifscale tune CORPUS --out TUNE [--lams 0.01 0.1 1 | --lams 1e-3:1e3:13] [--criterion logloss|error|brier]
    rifscale run CORPUS --out RUN --lam auto --tune TUNE
    rifscale groups RUN --sets sets.json
    rifscale validate RUN [--experiments accuracy sweeps poisoning]
    rifscale verify CORPUS
    rifscale runs DIR
    rifscale export RUN --out scores.parquet [--top K --by rif_test_loss]
    rifscale audit RUN --out AUDIT [--ids ID ...] [--least-robust N] [--accuracy-drop X]
    rifscale demo [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings

# only light modules here: NumPy, dask and zarr are imported inside main(), where Ctrl-C is
# one line (they take about a second)
from . import __version__
from . import outputs
from .cluster import DEFAULT_TIMEOUT
from .config import METRICS, RunConfig
from .commands import (cmd_audit, cmd_demo, cmd_export, cmd_groups, cmd_ingest, cmd_run, cmd_runs, cmd_tune, cmd_validate,
                       cmd_verify)
from .errors import NotConvergedError, NotPositiveDefiniteError, RifscaleError

log = logging.getLogger("rifscale")


def _lam_arg(value: str):
    """``--lam``: a number, or "auto" (the λ chosen by ``--tune TUNE``)."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


def _add_cluster(p) -> None:
    p.add_argument("--scheduler", metavar="ADDRESS", help="address of a running dask scheduler (default: this machine's cores, on dask's threaded scheduler)")
    p.add_argument("--workers", type=int, help="without --scheduler: threads (or worker processes with "
                   "--processes) on this machine (default: one per core)")
    p.add_argument("--processes", action="store_true", help="without --scheduler: start a LocalCluster of worker "
                   "processes instead of running on threads (slower to start; isolates workers)")
    p.add_argument("--dashboard", action="store_true", help="without --scheduler: run the threads as an in-process "
                   "LocalCluster (or, with --processes, the worker processes' LocalCluster) and log its dashboard "
                   "address")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="give up (exit 2) when the scheduler cannot be reached, no worker joins, the scheduler "
                   "stops answering, or every worker has been gone, for this long; also the worker-ttl of the "
                   f"--processes LocalCluster (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--tls-ca-file", metavar="PEM", help="with --scheduler tls://...: the CA that signed the cluster's "
                   "certificates (default: dask's distributed.comm.tls.ca-file)")
    p.add_argument("--tls-cert", metavar="PEM", help="with --scheduler tls://...: this client's certificate "
                   "(default: dask's distributed.comm.tls.client.cert)")
    p.add_argument("--tls-key", metavar="PEM", help="with --scheduler tls://...: this client's private key, unless it "
                   "is in the --tls-cert file (default: dask's distributed.comm.tls.client.key)")


def build_parser() -> argparse.ArgumentParser:
    defaults = RunConfig()
    ap = argparse.ArgumentParser(prog="rifscale", description="Rescaled influence functions (RIF) at scale.")
    ap.add_argument("--version", action="version", version=f"rifscale {__version__}")
    ap.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="build a Zarr corpus from a Parquet table, .npy/.npz files or Zarr arrays")
    p.add_argument("out", help="path of the corpus to create (e.g. corpus.zarr; a local path or file:// URL)")
    p.add_argument("--npz", help="an .npz holding train_X, train_y [, train_ids, test_X, test_y, test_ids]")
    for key in ("train_X", "train_y", "train_ids", "test_X", "test_y", "test_ids"):
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, metavar="SRC",
                       help="file.npy, file.npz:key, or a Zarr array path (paths or fsspec URLs)")
    p.add_argument("--parquet", metavar="SRC", help="a Parquet file, directory or glob (path or fsspec URL, e.g. "
                   "s3://bucket/embeddings/), read one row group per task")
    p.add_argument("--x-column", default="embedding", help="with --parquet: the embedding column, a list of numbers "
                   "per row (default: embedding)")
    p.add_argument("--x-columns", metavar="PATTERN", help="with --parquet: one column per dimension instead, named "
                   "by a glob such as 'f*' (in the table's column order)")
    p.add_argument("--y-column", default="label", help="with --parquet: the label column: integers 0..K-1 (0/1 for the binary model) or text, whose sorted "
                   "distinct values become the classes 0..K-1 (default: label)")
    p.add_argument("--id-column", help="with --parquet: an id column, integers or text (default: row numbers)")
    p.add_argument("--split-column", help="with --parquet: a column of 'train'/'test' values naming each row's split")
    p.add_argument("--chunk-rows", type=int, help="rows per stored chunk (default: about 32 MiB of X per chunk, "
                   "rows split evenly)")
    p.add_argument("--compressor", choices=("none", "zstd"), default="none",
                   help="compression of the stored arrays (default none: embeddings barely compress and zstd "
                   "makes every read about 3x slower)")
    p.add_argument("--dtype", choices=("float32", "float64"), help="storage dtype of X (default: the source's, float32 for non-floats)")
    p.add_argument("--test-fraction", type=float, metavar="F", help="without a test split: hold out this fraction "
                   "of the rows as the test split (seeded, recorded in the corpus attributes)")
    p.add_argument("--seed", type=int, default=0, help="seed of --test-fraction (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("run", help="fit, factor and score every training sample")
    p.add_argument("corpus", help="path of a Zarr corpus")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--lam", type=_lam_arg, default=None, help=f"L2 penalty λ (default {defaults.lam}), or 'auto': "
                   "the λ chosen by --tune")
    p.add_argument("--tune", metavar="TUNE", help="a tune directory made by `rifscale tune` on this corpus: run at "
                   "the λ it chose (same as --lam auto --tune TUNE)")
    p.add_argument("--no-intercept", action="store_true", help="fit without an (unpenalised) intercept")
    p.add_argument("--tol", type=float, default=defaults.tol,
                   help=f"Newton stops when a proven bound on the error of theta is <= TOL x |theta| "
                        f"(default {defaults.tol})")
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
    p.add_argument("--model", choices=("auto", "binary", "softmax", "multinomial"), default=defaults.model,
                   help="binary logistic regression (labels 0/1), or multinomial softmax regression over the "
                   "classes 0..K-1 of the labels (multinomial is the same; it forces softmax on binary labels); "
                   "default auto: softmax when the training labels have more than two classes, else binary")
    p.add_argument("--require-gpu", action="store_true", help="fail (exit 2) instead of factoring H with SciPy when "
                   "no worker that advertises the GPU resource has a usable CUDA device and CuPy (default: a warning)")
    p.add_argument("--warm-start", metavar="RUN", help="start the Newton fit from this previous run's theta "
                   "(e.g. yesterday's run on a corpus that grew a little; recorded in the manifest)")
    p.add_argument("--verify", action="store_true", help="check every chunk of the corpus against the sha256 "
                   "digests recorded at ingest before fitting (one extra read of the corpus)")
    p.add_argument("--overwrite", action="store_true", help="replace the run directory if it exists (only one "
                   "rifscale made); without it a rerun of the same command resumes or does nothing")
    _add_cluster(p)
    p.set_defaults(func=cmd_run)

    from .audits.loo import CRITERIA, EXACT_LOO

    p = sub.add_parser("tune", help="choose λ by approximate leave-one-out over a grid (fits along the path, one "
                       "leverage pass per λ), with exact LOO of a sample beside it")
    p.add_argument("corpus", help="path of a Zarr corpus")
    p.add_argument("--out", required=True, help="tune directory to create (manifest.json, table.parquet, tune.png)")
    p.add_argument("--lams", nargs="+", metavar="LAM", help="the λ grid: numbers > 0 (0.01 0.1 1 or 0.01,0.1,1), or "
                   "LO:HI:N for N values log-spaced from LO to HI (default: 13 values over 1e-3..1e3 x E|x|^2, the "
                   "mean squared row norm of the training features)")
    p.add_argument("--criterion", choices=CRITERIA, default="logloss", help="the approximate-LOO loss that picks λ "
                   "(default logloss)")
    p.add_argument("--exact-loo", type=int, default=EXACT_LOO, metavar="N", help="retrain a seeded sample of N "
                   "training rows exactly without each (certified), reported beside the estimate on the same rows "
                   f"(default {EXACT_LOO}; 0: none)")
    p.add_argument("--exact-loo-at", choices=("best", "all"), default="best", help="retrain them at the chosen λ "
                   "only (default), or at every λ (each row costs about one Hessian pass over the data)")
    p.add_argument("--no-intercept", action="store_true", help="fit without an (unpenalised) intercept")
    p.add_argument("--tol", type=float, default=defaults.tol, help=f"Newton tolerance (default {defaults.tol})")
    p.add_argument("--max-iter", type=int, default=defaults.max_iter)
    p.add_argument("--leverage-threshold", type=float, default=defaults.leverage_threshold)
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the exact-LOO sample (default 0)")
    p.add_argument("--persist", choices=("auto", "always", "never"), default=defaults.persist,
                   help="keep the training rows in worker memory for all passes (default auto)")
    p.add_argument("--device", choices=("cpu", "gpu"), default=defaults.device)
    p.add_argument("--overwrite", action="store_true", help="replace the tune directory if it exists (only one "
                   "rifscale made); without it a rerun of the same command resumes or does nothing")
    _add_cluster(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("verify", help="check a corpus against the sha256 digests recorded at ingest")
    p.add_argument("corpus", help="path of a Zarr corpus")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("export", help="write a run's per-sample scores to Parquet or CSV, indexed by the corpus ids")
    p.add_argument("run", help="a run directory made by `rifscale run`")
    p.add_argument("--out", required=True, help="file to write (.parquet or .csv)")
    p.add_argument("--format", choices=("parquet", "csv"), help="default: from the --out file name")
    p.add_argument("--top", type=int, metavar="K", help="only the K rows with the largest |--by| value")
    p.add_argument("--by", metavar="COLUMN", help="column ranking --top, e.g. rif_test_loss or leverage")
    p.add_argument("--columns", nargs="+", metavar="COLUMN", help="columns to write (default: all)")
    p.add_argument("--corpus", help="corpus path, if it moved since the run")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (only a file rifscale wrote)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("runs", help="list the runs under a directory (status, corpus, lam, n, d, timings)")
    p.add_argument("dir", help="directory to search (recursively)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("groups", help="IF / RIF / NS estimates for named removal sets")
    p.add_argument("run", help="a run directory made by `rifscale run`")
    p.add_argument("--sets", required=True, help='JSON file {"name": [row indices...]}, or {"ids": {"name": '
                   '[corpus ids...]}} to name rows by their ids')
    p.add_argument("--by-id", action="store_true", help="the lists in --sets are corpus ids, not row positions")
    p.add_argument("--corpus", help="corpus path, if it moved since the run")
    p.add_argument("--overwrite", action="store_true", help="replace RUN/groups if it exists")
    _add_cluster(p)
    p.set_defaults(func=cmd_groups)

    from .validation.removal import DEFAULT_STRATEGIES, N_CLUSTERS, STRATEGIES
    from .validation.experiments import BATCH_SETS, EXPERIMENTS

    p = sub.add_parser("validate", help="estimates vs exact retrains: accuracy, sweeps, poisoning; figures and HTML")
    p.add_argument("run", help="a run directory made by `rifscale run`")
    p.add_argument("--experiments", nargs="+", default=["accuracy"], choices=EXPERIMENTS)
    p.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES), choices=STRATEGIES,
                   help=f"removal-set strategies (default: {' '.join(DEFAULT_STRATEGIES)}; kmeans_cluster removes "
                   "the core of a k-means cluster of the embeddings and needs dask-ml)")
    p.add_argument("--n-clusters", type=int, default=N_CLUSTERS, help=f"clusters of kmeans_cluster (default {N_CLUSTERS})")
    p.add_argument("--n-sizes", type=int, default=40, help="removal-set sizes from 0.1%% to 5%% of n (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--poison-points", type=int, default=100, help="test points of the poisoning experiment")
    p.add_argument("--top-metric", default="test_loss", choices=METRICS, help="metric ranked by top_influence")
    p.add_argument("--top-sign", default="+", choices=("+", "-"), help="rank by +s_IF or -s_IF")
    p.add_argument("--batch-sets", type=int, default=BATCH_SETS, help="removal sets (or poisoned points) retrained "
                   "together; each finished batch is checkpointed, so a killed validate resumes after its last "
                   f"finished batch when run again (default {BATCH_SETS})")
    p.add_argument("--corpus", help="corpus path, if it moved since the run")
    p.add_argument("--overwrite", action="store_true", help="replace RUN/validation and RUN/report")
    _add_cluster(p)
    p.set_defaults(func=cmd_validate)

    from .audits.audit import AuditConfig

    audit_defaults = AuditConfig(least_robust=1)
    p = sub.add_parser("audit", help="smallest training sets found whose removal flips test predictions (or lowers "
                       "the test accuracy), each certified by an exact retrain, with a proven lower bound")
    p.add_argument("run", help="a run directory made by `rifscale run`")
    p.add_argument("--out", required=True, help="audit directory to create (points.parquet/.csv, manifest.json)")
    p.add_argument("--ids", nargs="+", metavar="ID", help="test ids of the points to audit (integers or text, as the corpus has them)")
    p.add_argument("--least-robust", type=int, default=0, metavar="N", help="also audit the N test points whose "
                   "flip the RIF estimate puts at the fewest removals")
    p.add_argument("--accuracy-drop", type=float, metavar="X", help="also find the fewest removals that lower the "
                   "test accuracy by at least X (a fraction: 0.01 = one percentage point)")
    p.add_argument("--max-size", type=int, default=audit_defaults.max_size, help="largest removal set searched "
                   f"(default {audit_defaults.max_size})")
    p.add_argument("--fanout", type=int, default=audit_defaults.fanout, help="set sizes checked per point and "
                   f"bisection round, all in one batched retrain (default {audit_defaults.fanout})")
    p.add_argument("--screen", type=int, default=audit_defaults.screen, help="--least-robust ranks this many test "
                   f"points of smallest |margin| (default {audit_defaults.screen})")
    p.add_argument("--no-refine", action="store_true", help="skip dropping unneeded members (sets may not be minimal)")
    p.add_argument("--refine-max", type=int, default=audit_defaults.refine_max, help="refine only sets of at most "
                   "this many rows; larger ones are reported with minimality unchecked "
                   f"(default {audit_defaults.refine_max})")
    p.add_argument("--corpus", help="corpus path, if it moved since the run")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (only one rifscale made)")
    _add_cluster(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded Fashion-MNIST data")
    p.add_argument("--out", default="rifscale-demo", help="output directory (default ./rifscale-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace the output directory if it exists")
    _add_cluster(p)
    p.set_defaults(func=cmd_demo)
    for p in sub.choices.values():  # -q also after the command (`rifscale run ... -q`, as in crontabs)
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="only warnings and errors on stderr")
    return ap


def _after_interrupt(args, finished: list) -> str:
    """What an interrupted command leaves behind, in a sentence: the outputs it had
    finished, the checkpoint its rerun resumes from, or nothing."""
    if finished:
        return f" after writing {', '.join(repr(str(p)) for p in finished)}, which is complete."
    try:
        if args.command == "run":
            from .runs.reading import checkpoint_of

            if checkpoint_of(args.out).exists():
                return ". Run the same command again to resume it."
        elif args.command == "tune":
            from .audits.tuning import checkpoint_of as tune_checkpoint

            if tune_checkpoint(args.out).exists():
                return ". The finished λ values are kept; run the same command again to resume from them."
        elif args.command == "validate":
            from .validation.experiments import checkpoint_of

            if (kept := checkpoint_of(args.run)).exists():
                return (f". The finished retrain batches are kept in {str(kept)!r}; run the same command again to "
                        "resume from them.")
    except RifscaleError:  # an output the command had refused anyway
        pass
    return ". Nothing was written; run the same command again."


class _Terminated(KeyboardInterrupt):
    """SIGTERM (e.g. a batch scheduler pre-empting the job), raised in the main thread."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv=None) -> int:
    """Exit codes: 0 done (or already complete), 2 bad input, configuration or cluster
    (nothing was written), 3 the model cannot be fitted as asked (no convergence, Hessian
    not positive definite), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). An
    interrupted ``run`` resumes when the same command is run again."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    published = len(outputs.published)
    args = None
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--processes" in argv and not any(a == "--scheduler" or a.startswith("--scheduler=") for a in argv):
        # the worker processes' server imports their modules on another core while this
        # process imports its own (cluster.start_worker_server)
        from .cluster import start_worker_server

        start_worker_server()
    try:
        args = build_parser().parse_args(argv)  # imports the commands' modules: NumPy, dask, zarr
        _log_to_stderr(quiet=args.quiet)
        return args.func(args)
    except (NotConvergedError, NotPositiveDefiniteError) as exc:
        print(f"rifscale {args.command}: error: {exc}", file=sys.stderr)
        return 3
    except RifscaleError as exc:
        print(f"rifscale {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        warnings.simplefilter("ignore")  # coroutines cut short by the signal: not the user's concern
        what = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        if args is None:  # still importing the command's modules
            print(f"rifscale: {what}. Nothing was written; run the same command again.", file=sys.stderr)
        else:
            print(f"rifscale {args.command}: {what}{_after_interrupt(args, outputs.published[published:])}",
                  file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130


def _log_to_stderr(*, quiet: bool) -> None:
    """rifscale's log lines (and, on a terminal, progress bars) on stderr; warnings and
    errors only when ``quiet``."""
    from . import progress

    for h in [h for h in log.handlers if getattr(h, "rifscale_cli", False)]:
        log.removeHandler(h)  # main() called again in one process (tests, notebooks)
    handler = progress.LogHandler(sys.stderr)
    handler.rifscale_cli = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    progress.enable(not quiet, stream=sys.stderr)  # bars when stderr is a terminal, never in logs


def console_main() -> None:
    """The ``rifscale`` console script: :func:`main`, then exit at once.

    Everything the command writes is complete (and closed) when ``main`` returns; what is
    left is the interpreter's own teardown of dask, scipy and zarr, measured at 0.2–0.35 s
    per command on 2 cores (benchmarks/README.md) — a tenth of a small run. So the script
    flushes its streams and leaves with ``os._exit``."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
