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
    ``show_progress(logging.WARNING, bars=False)`` keeps only warnings.

    Parameters
    ----------
    level : int, default logging.INFO
        Level of the "rifscale" logger: ``logging.INFO`` shows the Newton iterations and
        the stages, ``logging.WARNING`` only warnings.
    stream : file-like, optional
        Where the log lines and the terminal bars go (default ``sys.stdout``).
    bars : bool, default True
        Draw a progress bar per long stage (HTML under the cell in Jupyter).

    Returns
    -------
    None

    Examples
    --------
    >>> import logging, sys
    >>> import rifscale
    >>> rifscale.show_progress(logging.WARNING, stream=sys.stderr, bars=False)  # warnings only, no bars
    """
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
from .errors import (ClusterError, ConfigError, CorpusError, NotConvergedError, NotPositiveDefiniteError,
    OutputExistsError, RifscaleError)

#: The rest of the public API, imported on first use (PEP 562): a dask worker that
#: unpickles a kernel imports the ``rifscale`` package too, and need not import the
#: pipeline, the run format and the readers it never uses (0.3-0.4 s of its first task in a
#: plain install, measured).
_LAZY = {
    "Corpus": ("corpus.model", "Corpus"),
    "ingest": ("corpus.ingest", "ingest"),
    "open_corpus": ("corpus.model", "open_corpus"),
    "Attribution": ("pipeline", "Attribution"),
    "attribute": ("pipeline", "attribute"),
    "Session": ("session", "Session"),
    "list_runs": ("runs.listing", "list_runs"),
    "open_run": ("runs.reading", "open_run"),
    "run_job": ("jobs", "run_job"),
    "write_run": ("runs.format", "write_run"),
    "ingest_parquet": ("corpus.sources.parquet", "ingest_parquet"),
    "GroupEstimate": ("estimates.groups", "GroupEstimate"),
    "group_effects": ("estimates.groups", "group_effects"),
    "retrain": ("validation.exact", "retrain_sets"),
    "tune": ("audits.tuning", "tune"),
    "open_tune": ("audits.tuning", "open_tune"),
    "audit": ("audits.audit", "audit"),
    "Audit": ("audits.audit", "Audit"),
    "AuditConfig": ("audits.audit", "AuditConfig"),
    "blas_per_task": ("cluster", "blas_per_task"),
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
    "blas_per_task",
    "group_effects",
    "ingest",
    "ingest_parquet",
    "list_runs",
    "open_corpus",
    "open_run",
    "open_tune",
    "retrain",
    "run_job",
    "show_progress",
    "tune",
    "write_run",
]
