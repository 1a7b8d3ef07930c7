r"""The model-family seam: the per-block maths of a model behind one small interface.

A *model family* is everything about a model that the stages need to know: its
parameters' size, its loss, gradient and Hessian on a block of rows, the leverage and
score formulas, the test metrics, the rows a retrain adds, and the constant of its
error certificates. The fit (:mod:`rifscale.engine.fit`), the scores pass
(:mod:`rifscale.engine.scores`), the group estimates (:mod:`rifscale.estimates.groups`),
the metrics (:mod:`rifscale.estimates.metrics`) and the exact retrains
(:mod:`rifscale.validation.exact`) take a family (``FittedModel.family``) and never branch
on which one it is. The binary logistic model (:data:`BINARY`,
:mod:`rifscale.engine.kernels.logistic`) is the first implementation; every formula of it
lives in that one module.

Conventions every family keeps (docs/design.md §1): θ has ``n_params(d)`` entries with
the intercept(s) last and unpenalised; blocks return *unpenalised* float64 sums (the Newton
core adds ``(λ/2)‖Dθ‖²`` once); kernels are pure, NumPy or CuPy, and return plain arrays
of fixed width so that the passes can sum them in a fixed order.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .kernels.logistic import BINARY
from .kernels.softmax import Softmax


@runtime_checkable
class ModelFamily(Protocol):
    """What a model family provides. Block kernels take a block's rows ``x`` (m, d), its
    labels ``y`` (m,) and optional row weights ``w`` (m,), and return one packed row."""

    #: Short name, recorded with a fit.
    name: str
    #: Per-sample columns of :meth:`score_block` before the per-metric IF and RIF columns.
    score_columns: tuple[str, ...]
    #: c with ``|ℓ‴| ≤ c ‖z‖ ℓ″``: the error certificates use the radius ``c · max ‖z_i‖``.
    self_concordance: float
    #: Where its kernels run (``RunConfig.device`` values).
    devices: tuple[str, ...]
    #: Whether :meth:`check_labels` needs the training rows per label (one more light pass).
    counts_labels: bool

    def n_params(self, d: int, *, fit_intercept: bool) -> int:
        """Length p of θ for d features."""

    def penalty_diag(self, p: int, *, fit_intercept: bool):
        """Diagonal of D in ``(λ/2)‖Dθ‖²`` (p,): 1 for penalised entries, 0 for the intercept(s)."""

    def record(self) -> dict | None:
        """What a run's manifest records to read the model back (:func:`family_from_record`);
        None for the binary model (its runs record nothing, as before the seam)."""

    def check_settings(self, *, lam: float, device: str) -> None:
        """Raise :class:`~rifscale.errors.ConfigError` for settings the model cannot run with."""

    def check_labels(self, split: str, lo: int, hi: int, counts=None) -> None:
        """Raise :class:`~rifscale.errors.CorpusError` for labels the model cannot take (``lo``,
        ``hi``: the split's smallest and largest label; ``counts``: its rows per label, if known)."""

    def newton_block(self, x, y, w=None, *, theta, fit_intercept: bool, hessian: str | None):
        """``[Σ w ℓ, Σ w ‖g‖ (the gradient's rounding scale), Σ w g (p), Σ w ∇²ℓ (p², or none)]``."""

    def loss_block(self, x, y, *, thetas, fit_intercept: bool):
        """``Σ ℓ`` over the given rows at the K columns of ``thetas`` (p, K): a (1, K) row."""

    def row_loss_block(self, x, y, *, theta, fit_intercept: bool):
        """Each row's loss at θ: (m, 1)."""

    def min_margin_block(self, x, y, w=None, *, theta, fit_intercept: bool):
        """The smallest margin of a correct prediction (> 0 everywhere: θ separates the data)."""

    def retrain_block(self, x, y, rows, *, thetas, sets, newton, fit_intercept: bool):
        """A block's share of one pass of K leave-T-out retrains at once (see the binary kernel)."""

    def score_block(self, x, y, *, theta, linv, U, fit_intercept: bool, threshold: float):
        """Per-sample scores: :attr:`score_columns`, then IF and RIF of each metric."""

    def set_stats_block(self, x, y, *, theta, linv, fit_intercept: bool, threshold: float, gram: bool):
        """Sums over a removal set's rows (those given): gradients, rescaled gradients, flagged
        count, Hessian."""

    def metric_grad_block(self, x, y, w=None, *, theta, fit_intercept: bool):
        """Test metrics and their gradients at θ over the weighted rows."""

    def metric_values_block(self, x, y, w=None, *, thetas, fit_intercept: bool):
        """Test metrics at K parameter vectors at once."""

    def row_terms(self, z, y, *, theta):
        """Per-row losses, gradients and Hessian roots of a few design rows in memory."""

    def self_influence(self, z, y, *, theta, solve):
        """Leverage and IF/RIF changes of each row's own prediction under ``solve = H⁻¹``."""

    def other_label(self, y):
        """A label other than each of ``y`` (the poisoning experiment's flipped label)."""

    def prediction_change(self, z, y, *, before, after):
        """The change of a design row's own prediction (the quantity of :meth:`self_influence`)
        from θ = ``before`` to ``after``."""


@runtime_checkable
class AuditKernels(Protocol):
    """What a family needs besides :class:`ModelFamily` for the audits (``rifscale tune``,
    ``rifscale audit``): the binary family has them; the audits refuse a family without."""

    def audit_block(self, x, y, *, theta, linv, U, Wz, fit_intercept: bool):
        """Per training row: the quantities of the flip-set audits and the IF scores of linear metrics."""

    def loo_rows(self, x, y, *, theta, linv, fit_intercept: bool, threshold: float):
        """Per row: prediction, its approximate leave-one-out value (one Newton step), leverage, flag."""

    def loo_block(self, x, y, *, theta, linv, fit_intercept: bool, threshold: float):
        """Sums of the approximate leave-one-out and training losses over the block's rows."""

    def heldout_block(self, x, y, *, theta, fit_intercept: bool):
        """Sums of the losses at θ over the block's rows (a held-out split)."""

    def loo_losses(self, eta, y):
        """(log-loss, 0/1 error, Brier score) per row of the logits ``eta``."""

    def predict_logits(self, z, theta):
        """The logits of design rows ``z`` at θ."""


#: Families by name (a softmax family also needs its number of classes: :func:`family_for`).
FAMILIES: dict[str, ModelFamily] = {BINARY.name: BINARY}

#: The values of ``RunConfig.model``.
MODELS = ("binary", "softmax")


def family_for(model: str, n_classes: int | None = None) -> ModelFamily:
    """The family a run's ``model`` names: :data:`BINARY`, or ``Softmax(n_classes)``."""
    if model == "binary":
        return BINARY
    if model == "softmax":
        return Softmax(n_classes)
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


def family_from_record(record: dict | None) -> ModelFamily:
    """The family of a run from its manifest's ``model`` entry (absent: binary)."""
    if not record:
        return BINARY
    return family_for(record["family"], record.get("n_classes"))


__all__ = ["AuditKernels", "BINARY", "FAMILIES", "MODELS", "ModelFamily", "Softmax", "family_for", "family_from_record"]
