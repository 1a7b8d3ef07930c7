"""Typed, frozen configuration: defaults live here and nowhere else.

The Python API and the CLI both build a :class:`RunConfig`, so they cannot disagree.
Values are validated once, on construction; code after this boundary trusts them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, get_args

from .errors import ConfigError

MetricName = Literal["test_loss", "test_prediction"]
METRICS: tuple[MetricName, ...] = get_args(MetricName)
TestSubsetMode = Literal["paper", "all"]
Persist = Literal["auto", "always", "never"]
Device = Literal["cpu", "gpu"]
Model = Literal["auto", "binary", "softmax", "multinomial"]
#: Largest number of classes of the softmax model (and of a corpus's labels, 0..MAX_CLASSES−1):
#: its P × P Hessian, P = K(d + 1) − 1, must fit a worker.
MAX_CLASSES = 1000


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines an attribution run.

    Parameters
    ----------
    lam : float
        L2 penalty λ ≥ 0 of the sum-form objective (scikit-learn's ``C = 1/λ``). The
        intercept is never penalised. λ stays fixed when samples are removed.
    fit_intercept : bool
        Augment every row with a constant 1 (its coefficient is the last entry of θ).
    tol : float
        Newton stops when a proven bound on the error of θ̂ is ≤ tol · ‖θ̂‖
        (docs/design.md §8.9), or at the gradient's rounding floor.
    max_iter : int
        Newton iterations before :class:`~rifscale.errors.NotConvergedError`.
    test_subset : "paper", "all" or a path
        Test points S the metrics sum over: "paper" = the 50 highest-loss test points
        plus 50 drawn uniformly from the rest (seeded), "all" = every test point, or a
        ``.npy``/``.json``/``.txt`` file of test row indices.
    metrics : tuple of metric names
        Evaluation functions scored per training sample.
    leverage_threshold : float
        Samples with ``1 - h_i`` below this are flagged; their RIF score is NaN.
    seed : int
        Seed of every random choice (the "paper" test subset).
    paper_top, paper_random : int
        Sizes of the two parts of the "paper" test subset (50 and 50 in the paper).
    persist : "auto", "always" or "never"
        Keep the training rows (as stored) in worker memory for the fit and the scores
        pass: "auto" does when they take at most half the cluster's memory; otherwise
        every pass streams them from the store. Execution only: results do not change.
    device : "cpu" or "gpu"
        Where the row-chunk kernels run: "gpu" moves each chunk to CuPy on the workers
        (float64 accumulation, host arrays at reduction boundaries); an error when no
        worker sees a CUDA device.
    model : "auto", "binary", "softmax" or "multinomial"
        The model family: binary logistic regression (labels 0/1), or multinomial softmax
        regression over K classes (labels 0..K−1, K from the training labels; scikit-learn's
        multinomial ``LogisticRegression(C = 1/λ)``, docs/design.md §9). "auto" (the
        default) fits softmax when the training labels have more than two classes and the
        binary model otherwise; "multinomial" is "softmax" (it forces softmax on binary
        labels: two weight vectors, both penalised).

    Raises
    ------
    ConfigError
        When a value is outside its range, naming the parameter and the value.

    Examples
    --------
    >>> import rifscale
    >>> config = rifscale.RunConfig(lam=0.1, metrics=("test_loss",))
    >>> config.lam, config.fit_intercept, config.metrics
    (0.1, True, ('test_loss',))

    The command line builds the same object (``rifscale run --lam 0.1 --metrics
    test_loss``); :func:`rifscale.attribute` takes it, or its fields as keywords.
    """

    lam: float = 1.0
    fit_intercept: bool = True
    tol: float = 1e-10
    max_iter: int = 50
    test_subset: str = "paper"
    metrics: tuple[MetricName, ...] = METRICS
    leverage_threshold: float = 1e-6
    seed: int = 0
    paper_top: int = 50
    paper_random: int = 50
    persist: Persist = "auto"
    device: Device = "cpu"
    model: Model = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.lam, bool) or not isinstance(self.lam, numbers.Real):
            raise ConfigError(f"The 'lam' parameter must be a float >= 0. Got {self.lam!r} instead.")
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ConfigError(
                f"The 'lam' parameter must be a finite float >= 0. Got {self.lam!r} instead. "
                "It is the L2 penalty of the sum-form objective; use e.g. --lam 1.0."
            )
        if not (0 < self.tol < 1):
            raise ConfigError(f"The 'tol' parameter must be in (0, 1). Got {self.tol!r} instead.")
        if int(self.max_iter) != self.max_iter or self.max_iter < 1:
            raise ConfigError(f"The 'max_iter' parameter must be an integer >= 1. Got {self.max_iter!r} instead.")
        if not (0 <= self.leverage_threshold < 1):
            raise ConfigError(
                "The 'leverage_threshold' parameter must be in [0, 1). "
                f"Got {self.leverage_threshold!r} instead."
            )
        metrics = tuple(self.metrics)
        bad = [m for m in metrics if m not in METRICS]
        if bad or not metrics or len(set(metrics)) != len(metrics):
            raise ConfigError(
                f"The 'metrics' parameter must be a non-empty list of distinct names from {METRICS}. "
                f"Got {list(self.metrics)!r} instead."
            )
        object.__setattr__(self, "metrics", metrics)
        if self.test_subset not in get_args(TestSubsetMode) and not Path(self.test_subset).is_file():
            raise ConfigError(
                "The 'test_subset' parameter must be 'paper', 'all' or an existing .npy/.json/.txt "
                f"file of test row indices. Got {self.test_subset!r}, which is none of these."
            )
        for name, allowed in (("persist", get_args(Persist)), ("device", get_args(Device)), ("model", get_args(Model))):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"The '{name}' parameter must be one of {allowed}. Got {getattr(self, name)!r} instead."
                )
        if self.model == "multinomial":  # scikit-learn's word for the same model
            object.__setattr__(self, "model", "softmax")
        for name in ("paper_top", "paper_random", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ConfigError(f"The '{name}' parameter must be an integer >= 0. Got {value!r} instead.")
        object.__setattr__(self, "lam", float(self.lam))
        object.__setattr__(self, "max_iter", int(self.max_iter))

    def replace(self, **changes) -> "RunConfig":
        """A copy with some fields changed, validated again.

        Parameters
        ----------
        **changes
            Fields of :class:`RunConfig` and their new values.

        Returns
        -------
        RunConfig
            The new configuration (this one is frozen and stays as it is).

        Examples
        --------
        >>> import rifscale
        >>> rifscale.RunConfig().replace(lam=10.0).lam
        10.0
        """
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (as recorded in a run's manifest).

        Returns
        -------
        dict
            Field name to value; ``metrics`` as a list. ``model`` only when it is
            "softmax" ("auto" and "binary" fit the same binary runs, whose manifests and job
            keys stay as they were before the field existed).

        Examples
        --------
        >>> import rifscale
        >>> rifscale.RunConfig(lam=2.0).to_dict()["lam"]
        2.0
        """
        d = asdict(self)
        d["metrics"] = list(self.metrics)
        if d["model"] in ("auto", "binary"):
            del d["model"]
        return d
