"""The command handlers of the command line (:mod:`rifscale.cli` parses the arguments): each
takes the parsed arguments, builds the typed config the Python API takes and calls the
library. Heavy imports happen inside each handler, so parsing and --help stay fast."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import outputs
from .config import METRICS, RunConfig
from .errors import CorpusError, RifscaleError

log = logging.getLogger("rifscale")


def cmd_ingest(args) -> int:
    import zipfile

    from .corpus.ingest import ingest

    common = dict(chunk_rows=args.chunk_rows, dtype=args.dtype, compressor=args.compressor,
                  overwrite=args.overwrite, test_fraction=args.test_fraction, seed=args.seed)
    if args.parquet:
        from .corpus.sources.parquet import ingest_parquet

        given = [f"--{k.replace('_', '-')}" for k in ("npz", "train_X", "train_y", "train_ids", "test_X", "test_y",
                                                      "test_ids") if getattr(args, k)]
        if given:
            raise RifscaleError(f"--parquet reads every column from the table; drop {', '.join(given)}.")
        corpus = ingest_parquet(args.out, args.parquet, x_column=args.x_column, x_columns=args.x_columns,
                                y_column=args.y_column, id_column=args.id_column, split_column=args.split_column,
                                **common)
        return report_ingested(args.out, corpus)
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
    # without --overwrite an existing corpus is refused, unless it is this very ingest's, complete
    done = not args.overwrite and outputs.output_path(args.out, "corpus").exists()
    corpus = ingest(args.out, **common, **sources)
    if done:
        print(f"corpus {args.out} is already complete (same sources and options); nothing to do")
        return 0
    return report_ingested(args.out, corpus)


def report_ingested(out, corpus) -> int:
    test = f", test {corpus.test.n} x {corpus.test.d}" if corpus.test else ""
    print(f"wrote corpus {out}: train {corpus.n} x {corpus.d}{test}, {corpus.train.X.numblocks[0]} row chunk(s)")
    if corpus.classes is not None:
        shown = ", ".join(f"{k} = {name}" for k, name in enumerate(corpus.classes[:12]))
        print(f"labels from text, in sorted order: {shown}{', ...' if len(corpus.classes) > 12 else ''}")
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
        model=getattr(args, "model", "binary"),
    )


def apply_tuned_lam(args, corpus) -> None:
    """Resolve ``--lam auto`` / ``--tune TUNE`` into the number ``args.lam``."""
    if args.tune is None:
        if args.lam == "auto":
            raise RifscaleError("--lam auto takes the lam chosen by `rifscale tune`: pass --tune TUNE (the tune "
                                "directory), or give a number.")
        if args.lam is None:
            args.lam = RunConfig().lam
        return
    if args.lam not in (None, "auto"):
        raise RifscaleError(f"--tune {args.tune} chooses lam, but --lam {args.lam:g} was given too; drop one of them "
                            "(--lam auto --tune TUNE runs at the tuned lam).")
    from .audits.tuning import tuned_lam

    args.lam = tuned_lam(args.tune, corpus=corpus, fit_intercept=not args.no_intercept)
    print(f"lam = {args.lam:.6g}, chosen by the tune {args.tune}")


def cmd_run(args) -> int:
    from .engine.factor import check_gpu, gpu_policy
    from .engine.fit import describe
    from .corpus.model import open_corpus
    from .corpus.verify import verify_corpus
    from .jobs import Job

    corpus = open_corpus(args.corpus)
    apply_tuned_lam(args, corpus)
    config = config_from_args(args)
    job = Job(corpus, args.out, config, overwrite=args.overwrite, warm_start=args.warm_start)
    if job.done is not None:  # the same command on a finished run: nothing to start
        print(f"run {args.out} is already complete (same config and corpus); nothing to do")
        return 0
    if args.verify:  # all checked before any cluster starts
        verify_corpus(job.corpus)
    with connect_from_args(args) as client, gpu_policy(require=args.require_gpu):
        if args.require_gpu:  # before the fit: nothing computed or written when no GPU is usable
            check_gpu(client)
        manifest = job.run(client=client)
    if manifest.get("already_complete"):
        print(f"run {args.out} is already complete (same config and corpus); nothing to do")
        return 0
    resumed = " (resumed from the finished fit of an interrupted run)" if manifest.get("resumed") else ""
    print(
        f"wrote run {args.out}{resumed}: n = {manifest['n']}, p = {manifest['p']}, fit converged in "
        f"{describe(manifest['fit'])}, {manifest['counts']['flagged_low_margin']} flagged sample(s)"
    )
    return 0


def cmd_tune(args) -> int:
    from .corpus.model import open_corpus
    from .audits.loo import TuneConfig, parse_lams
    from .audits.tuning import TuneJob

    settings = TuneConfig(lams=parse_lams(args.lams) if args.lams else None, criterion=args.criterion,
                          exact_loo=args.exact_loo, exact_at=args.exact_loo_at)
    args.lam, args.test_subset, args.metrics = RunConfig().lam, "paper", list(METRICS)  # unused by the tune
    job = TuneJob(open_corpus(args.corpus), args.out, settings, config_from_args(args), overwrite=args.overwrite)
    if job.done is not None:
        print(f"tune {args.out} is already complete (same job): lam = {job.done['best']['lam']:.6g}; nothing to do")
        return 0
    with connect_from_args(args) as client:
        tuning = job.run(client=client)
    b = tuning.best
    exact = (f"; exact LOO log-loss {b['exact_logloss']:.5f} on {int(b['exact_n'])} rows (approximate "
             f"{b['sample_logloss']:.5f} on the same rows)" if b["exact_n"] else "")
    print(f"wrote tune {args.out}: lam = {tuning.lam:.6g} of {len(tuning.table)} by approximate LOO "
          f"{tuning.criterion} (LOO log-loss {b['loo_logloss']:.5f}, test log-loss {b['test_logloss']:.5f}{exact}); "
          f"`rifscale run {args.corpus} --out RUN --lam auto --tune {args.out}` runs at it")
    return 0


def cmd_verify(args) -> int:
    from .corpus.model import open_corpus
    from .corpus.verify import verify_corpus

    report = verify_corpus(open_corpus(args.corpus))
    print(f"corpus {args.corpus}: {report['chunks']} chunk(s) of {', '.join(report['arrays'])} match the "
          f"sha256 digests recorded at ingest ({report['bytes'] / 2**20:.1f} MiB read)")
    return 0


def cmd_export(args) -> int:
    from .runs.listing import export

    done = export(args.run, args.out, fmt=args.format, top=args.top, by=args.by, columns=args.columns,
                  overwrite=args.overwrite, corpus=args.corpus)
    print(f"wrote {done['path']}: {done['rows']} row(s) x {len(done['columns'])} column(s), indexed by id")
    return 0


def cmd_runs(args) -> int:
    from .runs.listing import list_runs

    rows = list_runs(args.dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no rifscale runs under {args.dir}")
        return 0
    cols = ("path", "status", "created", "corpus", "lam", "n", "d", "n_iter", "seconds")
    table = [[("" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))
    return 0


def cmd_groups(args) -> int:
    from .estimates.groups import format_table, normalise_sets
    from .jobs import run_groups
    from .runs.reading import open_run

    run = open_run(args.run, corpus=args.corpus)  # run and sets checked before any cluster starts
    normalise_sets(args.sets, run.corpus.n, ids=run.ids, by_id=args.by_id)
    with connect_from_args(args) as client:
        estimates = run_groups(run, args.sets, overwrite=args.overwrite, client=client, by_id=args.by_id)
    for metric in next(iter(estimates.values())).plugin:
        if metric != "self_loss":
            print(format_table(estimates, metric, "plugin"))
    print(f"wrote {Path(args.run) / 'groups'}")
    return 0


def cmd_validate(args) -> int:
    from .validation.experiments import run_validation

    with connect_from_args(args) as client:
        page = run_validation(
            args.run, experiments=tuple(args.experiments), strategies=tuple(args.strategies), n_sizes=args.n_sizes,
            seed=args.seed, poison_points=args.poison_points, top_metric=args.top_metric,
            top_sign=1 if args.top_sign == "+" else -1, overwrite=args.overwrite, corpus=args.corpus, client=client,
            batch_sets=args.batch_sets, n_clusters=args.n_clusters,
        )
    print(f"wrote {page.parent} (open {page} in a browser) and {page.parent.parent / 'validation'}")
    return 0


def cmd_audit(args) -> int:
    from .audits.audit import AuditConfig
    from .audits.auditdir import format_audit, run_audit

    config = AuditConfig(ids=tuple(args.ids or ()), least_robust=args.least_robust, accuracy_drop=args.accuracy_drop,
                         max_size=args.max_size, fanout=args.fanout, screen=args.screen, refine=not args.no_refine,
                         refine_max=args.refine_max)
    with connect_from_args(args) as client:
        result = run_audit(args.run, args.out, config, corpus=args.corpus, overwrite=args.overwrite, client=client)
    print(format_audit(result))
    print(f"wrote {args.out}: {result.counts['flips_found']} of {result.counts['points']} flip set(s) found, each "
          f"certified by an exact retrain ({result.counts['retrains']} retrains in {result.counts['retrain_rounds']} "
          "batched rounds)")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, scheduler=args.scheduler, overwrite=args.overwrite, n_workers=args.workers,
             processes=args.processes, dashboard=args.dashboard, timeout=args.timeout, security=security_from_args(args))
    return 0


def security_from_args(args):
    """The TLS client settings of --tls-ca-file/--tls-cert/--tls-key (files checked), or None."""
    from .tls import tls_security

    return tls_security(args.tls_ca_file, args.tls_cert, args.tls_key)


def connect_from_args(args):
    """The cluster of the --scheduler/--workers/--processes/--dashboard/--timeout/--tls-* options."""
    from .cluster import connect

    return connect(args.scheduler, n_workers=args.workers, processes=args.processes, dashboard=args.dashboard,
                   timeout=args.timeout, security=security_from_args(args))
