"""All rifscale exception classes, in one place.

Every message names the offending input, what was expected, what was found, and the fix.
"""

from __future__ import annotations


class RifscaleError(Exception):
    """Base class of every error rifscale raises on purpose.

    Its message names the offending input, what was expected, what was found and the fix.
    The command line prints it on one line and exits 2 (3 for :class:`NotConvergedError`
    and :class:`NotPositiveDefiniteError`).

    Examples
    --------
    >>> import rifscale
    >>> try:
    ...     rifscale.RunConfig(lam=-1.0)
    ... except rifscale.RifscaleError as exc:
    ...     print(type(exc).__name__)
    ConfigError
    """


class ConfigError(RifscaleError, ValueError):
    """A parameter is outside its allowed range or has the wrong type.

    Also a :class:`ValueError`. Raised on entry, before anything is read or written.

    Examples
    --------
    >>> import rifscale
    >>> try:
    ...     rifscale.RunConfig(tol=2.0)
    ... except rifscale.ConfigError as exc:
    ...     print(exc)
    The 'tol' parameter must be in (0, 1). Got 2.0 instead.
    """


class CorpusError(RifscaleError, ValueError):
    """A Zarr corpus (or an ingest source) does not follow the rifscale layout.

    Also a :class:`ValueError`: labels the model cannot take, non-finite values, duplicate ids,
    a missing or damaged chunk, train and test of different widths, a corpus changed
    under a run.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> X = np.zeros((4, 2))
    >>> try:
    ...     rifscale.Corpus.from_arrays(X, np.array([0, 1, -1, 1]))
    ... except rifscale.CorpusError as exc:
    ...     print(exc)
    train/y holds labels outside 0..999 (min -1, max 1; first bad row 2). ...
    """


class OutputExistsError(RifscaleError, FileExistsError):
    """An output path exists and overwriting was not asked for.

    Also a :class:`FileExistsError`. Pass ``overwrite=True`` (``--overwrite``) to replace
    an output rifscale made; an output it did not make is never replaced.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_data_path
    >>> data = np.load(demo_data_path())
    >>> corpus = rifscale.Corpus.from_arrays(data["train_X"], data["train_y"], data["test_X"], data["test_y"])
    >>> result = rifscale.attribute(corpus, lam=1.0)
    >>> _ = result.to_zarr("example-run", overwrite=True)
    >>> try:
    ...     result.to_zarr("example-run")
    ... except rifscale.OutputExistsError:
    ...     print("refused")
    refused
    """


class OutputBusyError(RifscaleError):
    """Another rifscale job holds the lock on the same output."""


class OutputWriteError(RifscaleError, OSError):
    """The file system refuses the output (full, read-only, permission denied)."""


class ClusterError(RifscaleError, RuntimeError):
    """The dask scheduler cannot be reached, or it has no workers (left).

    Also a :class:`RuntimeError`. The command line raises it after ``--timeout`` seconds
    of waiting (for the scheduler's handshake, the first worker, a frozen scheduler, or
    workers to come back), and exits 2.

    Examples
    --------
    The command line turns it into one line and exit status 2 (no cluster here, so not
    run as a doctest):

    .. code-block:: console

        $ rifscale run corpus.zarr --out run --scheduler scheduler.json
        rifscale run: error: The scheduler file 'scheduler.json' does not exist. Start the scheduler with
        `dask scheduler --scheduler-file scheduler.json` (or check the path), then rerun.
        $ echo $?
        2
    """


class NotConvergedError(RifscaleError, RuntimeError):
    """The Newton fit did not reach its tolerance; nothing was written.

    Also a :class:`RuntimeError`; the command line exits 3. Raise ``max_iter`` or use a
    larger λ.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_data_path
    >>> data = np.load(demo_data_path())
    >>> corpus = rifscale.Corpus.from_arrays(data["train_X"], data["train_y"], data["test_X"], data["test_y"])
    >>> try:
    ...     rifscale.attribute(corpus, lam=1.0, max_iter=1)
    ... except rifscale.NotConvergedError:
    ...     print("not converged")
    not converged
    """


class NotPositiveDefiniteError(RifscaleError, ArithmeticError):
    """The Hessian is not positive definite, so it has no Cholesky factor.

    Also an :class:`ArithmeticError`; the command line exits 3. It happens with λ = 0 on
    separable data or with more features than samples: use λ > 0.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> X = np.random.default_rng(0).normal(size=(20, 30))   # d > n
    >>> y = np.arange(20) % 2
    >>> corpus = rifscale.Corpus.from_arrays(X, y, X, y)
    >>> try:
    ...     rifscale.attribute(corpus, lam=0.0)
    ... except (rifscale.NotPositiveDefiniteError, rifscale.NotConvergedError) as exc:
    ...     print(isinstance(exc, rifscale.RifscaleError))
    True
    """


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
