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
from .io import Corpus, ingest, open_corpus  # noqa: E402
from .pipeline import Attribution, attribute  # noqa: E402
from .session import Session  # noqa: E402
from .rundir import list_runs, open_run, run_job, write_run  # noqa: E402
from .parquet import ingest_parquet  # noqa: E402
from .groups import GroupEstimate, group_effects  # noqa: E402
from .exact import retrain_sets as retrain  # noqa: E402

__all__ = [
    "Attribution",
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
