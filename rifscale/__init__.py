"""rifscale: rescaled influence functions for data attribution at scale.

Quick start::

    import rifscale
    corpus = rifscale.open_corpus("corpus.zarr")
    result = rifscale.attribute(corpus, lam=1.0)
    result.rif_scores["test_loss"]          # lazy dask array, one value per training row
    result.to_zarr("run")                   # writes the run directory
    rifscale.group_effects(result, {"first_ten": range(10)})
"""

__version__ = "0.1.0"

import logging as _logging  # noqa: E402
import sys as _sys  # noqa: E402

# a library logs, the application decides where to: nothing is printed unless asked
_logging.getLogger("rifscale").addHandler(_logging.NullHandler())


def show_progress(level: int = _logging.INFO, stream=None, *, bars: bool = True) -> None:
    """Show rifscale's progress in a notebook or script: progress bars of the long stages
    (ingest, fit, scores, group estimates, exact retrains; an HTML bar under the cell in
    Jupyter, one line on a terminal) and its log lines (Newton iterations, stages, layout,
    warnings) through one handler on the "rifscale" logger, writing to ``stream`` (default
    stdout, which Jupyter shows under the cell). Calling it again replaces it;
    ``show_progress(logging.WARNING, bars=False)`` keeps only warnings."""
    from . import progress

    log = _logging.getLogger("rifscale")
    for h in [h for h in log.handlers if getattr(h, "rifscale_progress", False)]:
        log.removeHandler(h)
    handler = progress.LogHandler(stream or _sys.stdout)
    handler.rifscale_progress = True
    handler.setFormatter(_logging.Formatter("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(level)
    progress.enable(bars, stream=handler.stream)  # bars beside the log lines (Jupyter: HTML bars)


from .config import RunConfig  # noqa: E402
from .errors import (  # noqa: E402
    ClusterError,
    ConfigError,
    CorpusError,
    NotConvergedError,
    NotPositiveDefiniteError,
    OutputExistsError,
    RifscaleError,
)

#: The rest of the public API, imported on first use (PEP 562): a dask worker that
#: unpickles a kernel imports the ``rifscale`` package too, and need not import the
#: pipeline, the run format and the readers it never uses (0.3-0.4 s of its first task in a
#: plain install, measured).
_LAZY = {
    "Corpus": ("io", "Corpus"),
    "ingest": ("io", "ingest"),
    "open_corpus": ("io", "open_corpus"),
    "Attribution": ("pipeline", "Attribution"),
    "attribute": ("pipeline", "attribute"),
    "Session": ("session", "Session"),
    "list_runs": ("rundir", "list_runs"),
    "open_run": ("rundir", "open_run"),
    "run_job": ("jobs", "run_job"),
    "write_run": ("rundir", "write_run"),
    "ingest_parquet": ("parquet", "ingest_parquet"),
    "GroupEstimate": ("groups", "GroupEstimate"),
    "group_effects": ("groups", "group_effects"),
    "retrain": ("exact", "retrain_sets"),
    "audit": ("audit", "audit"),
    "Audit": ("audit", "Audit"),
    "AuditConfig": ("audit", "AuditConfig"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rifscale' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Attribution",
    "Audit",
    "AuditConfig",
    "ClusterError",
    "ConfigError",
    "Corpus",
    "CorpusError",
    "GroupEstimate",
    "NotConvergedError",
    "NotPositiveDefiniteError",
    "OutputExistsError",
    "RifscaleError",
    "RunConfig",
    "Session",
    "attribute",
    "audit",
    "group_effects",
    "ingest",
    "ingest_parquet",
    "list_runs",
    "open_corpus",
    "open_run",
    "retrain",
    "run_job",
    "show_progress",
    "write_run",
]
