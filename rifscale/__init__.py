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
from .rundir import open_run, run_job, write_run  # noqa: E402
from .groups import GroupEstimate, group_effects  # noqa: E402

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
    "attribute",
    "group_effects",
    "ingest",
    "open_corpus",
    "open_run",
    "run_job",
    "write_run",
]
