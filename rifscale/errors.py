"""All rifscale exception classes, in one place.

Every message names the offending input, what was expected, what was found, and the fix.
"""

from __future__ import annotations


class RifscaleError(Exception):
    """Base class of every error rifscale raises on purpose."""


class ConfigError(RifscaleError, ValueError):
    """A parameter is outside its allowed range or has the wrong type."""


class CorpusError(RifscaleError, ValueError):
    """A Zarr corpus (or an ingest source) does not follow the rifscale layout."""


class OutputExistsError(RifscaleError, FileExistsError):
    """An output path exists and overwriting was not asked for."""


class OutputBusyError(RifscaleError):
    """Another rifscale job holds the lock on the same output."""


class OutputWriteError(RifscaleError, OSError):
    """The file system refuses the output (full, read-only, permission denied)."""


class ClusterError(RifscaleError, RuntimeError):
    """The dask scheduler cannot be reached, or it has no workers (left)."""


class NotConvergedError(RifscaleError, RuntimeError):
    """The Newton fit did not reach its tolerance; nothing was written."""


class NotPositiveDefiniteError(RifscaleError, ArithmeticError):
    """The Hessian is not positive definite, so it has no Cholesky factor."""


NOT_PD_HINT = (
    "This happens when lam = 0 and the data are separable or have more features than "
    "samples (d > n), so that some direction of theta is not pinned down. Use lam > 0 "
    "(e.g. --lam 1.0), or remove duplicated / constant features."
)


def not_positive_definite(where: str, detail: str = "") -> NotPositiveDefiniteError:
    extra = f" ({detail})" if detail else ""
    return NotPositiveDefiniteError(
        f"The Hessian {where} is not positive definite{extra}. {NOT_PD_HINT}"
    )
