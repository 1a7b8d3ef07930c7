r"""Group (leave-k-out) estimates for named removal sets T (docs/design.md §2.4).

.. math::

    \Delta\theta_{IF}(T) = H^{-1}\sum_{i\in T} g_i,\qquad
    \Delta\theta_{RIF}(T) = H^{-1}\sum_{i\in T} \frac{g_i}{1 - h_i},\qquad
    \Delta\theta_{NS}(T) = \Big(H - \sum_{i\in T}\alpha_i z_i z_i^T\Big)^{-1}\sum_{i\in T} g_i

NS uses Woodbury when ``|T| < p``: with ``H = L Lᵀ``, ``W = L⁻¹ Z_Tᵀ A_T^{1/2}`` (p×k)
and ``c = L⁻¹ Σ g_i``, ``Δθ_NS = L⁻ᵀ (c + W (I − WᵀW)⁻¹ Wᵀ c)``, a k×k system. Otherwise
the p×p matrix ``Σ_T α z zᵀ`` is summed over the row chunks and the system solved
directly. Both need ``H_{−T}`` positive definite. Its curvature relative to H is
``λ_min(L⁻¹ H_{−T} L⁻ᵀ) = λ_min(I − WᵀW)``, the group's ``1 − h``: below the leverage
threshold (as for a flagged sample) removing T leaves a direction of θ unpinned (e.g. the
intercept, when T holds every row), so NS is NaN, ``ns_singular`` is set and a warning
names the sets.

Each Δθ becomes a metric change in two named forms: *linear* ``∇f(θ̂)ᵀΔθ`` and *plug-in*
``f(θ̂ + Δθ) − f(θ̂)``, for each test metric and for ``self_loss = Σ_{i∈T} ℓ_i``.
Small sets are gathered (k×d rows); large sets are reduced in place with a row mask;
all sets share one pass over the data per stage.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg

from .._namespace import array_namespace
from ..engine import kernels
from ..engine.kernels.products import rows_in_block
from .. import progress
from ..engine._blocks import reduce_blocks
from ..errors import ConfigError
from ..engine.factor import broadcast
from .metrics import metric_values, rows_of_ids, validate_indices
from ..engine.model import FittedModel
from ..cluster import entry_point, wide_blas

log = logging.getLogger(__name__)

METHODS = ("if", "rif", "ns")


@dataclass(frozen=True)
class GroupEstimate:
    """IF, RIF and NS estimates of removing one set of training rows.

    Returned by :func:`rifscale.group_effects`, one per named set. Every value is a
    removal effect: the change when the set's rows are removed (λ fixed).

    Parameters
    ----------
    name : str
        The set's name.
    indices : (k,) int array
        The set's row positions in the training split.
    ns_method : str
        How the leave-set-out Hessian of NS was solved: "woodbury" or "direct".
    n_flagged : int
        Rows of the set with 1 − h_i below the threshold (their RIF is NaN, so is the set's).
    ns_singular : bool
        Without the set's rows the Hessian is singular: NS is NaN.
    delta : dict
        Method ("if", "rif", "ns", and any ``extra``) to Δθ, shape (p,).
    linear : dict
        Metric to method to the linear change ∇f(θ̂)ᵀΔθ.
    plugin : dict
        Metric to method to the plug-in change f(θ̂ + Δθ) − f(θ̂). Metrics are the run's
        (test_loss, test_prediction) and ``self_loss``, the loss of the removed rows.

    Examples
    --------
    >>> import rifscale
    >>> from rifscale.demo import demo_corpus
    >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
    >>> result = rifscale.attribute(corpus, lam=1.0)
    >>> est = rifscale.group_effects(result, {"first10": range(10)})["first10"]
    >>> est.size, sorted(est.plugin), sorted(est.plugin["test_loss"])
    (10, ['self_loss', 'test_loss', 'test_prediction'], ['if', 'ns', 'rif'])
    >>> est.delta["rif"].shape
    (197,)
    """

    name: str
    indices: np.ndarray = field(repr=False)
    ns_method: str
    n_flagged: int
    ns_singular: bool
    delta: dict = field(repr=False)  # method -> (p,) Δθ
    linear: dict  # metric -> method -> value
    plugin: dict  # metric -> method -> value

    @property
    def size(self) -> int:
        """Number of rows in the set.

        Examples
        --------
        >>> import rifscale
        >>> from rifscale.demo import demo_corpus
        >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
        >>> result = rifscale.attribute(corpus, lam=1.0)
        >>> rifscale.group_effects(result, {"some": [3, 1, 4]})["some"].size
        3
        """
        return int(self.indices.size)

    def to_dict(self) -> dict:
        """The estimate as a JSON-ready dict (without the indices and the Δθ vectors).

        Returns
        -------
        dict
            name, size, ns_method, n_flagged, ns_singular, linear, plugin.

        Examples
        --------
        >>> import rifscale
        >>> from rifscale.demo import demo_corpus
        >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
        >>> result = rifscale.attribute(corpus, lam=1.0)
        >>> est = rifscale.group_effects(result, {"first10": range(10)})["first10"]
        >>> sorted(est.to_dict())
        ['linear', 'n_flagged', 'name', 'ns_method', 'ns_singular', 'plugin', 'size']
        """
        return {
            "name": self.name,
            "size": self.size,
            "ns_method": self.ns_method,
            "n_flagged": self.n_flagged,
            "ns_singular": self.ns_singular,
            "linear": self.linear,
            "plugin": self.plugin,
        }


def normalise_sets(sets, n: int, *, ids=None, by_id: bool = False) -> dict[str, np.ndarray]:
    """``{"name": [rows...]}`` (or a list of row lists) to sorted, validated indices.

    Sets may name corpus ids instead of row positions: ``{"ids": {"name": [ids...]}}``,
    or any sets with ``by_id=True``; ``ids`` are the training ids (an array, or a Dask
    array read only then)."""
    if isinstance(sets, (str, Path)):
        source = str(sets)
        try:
            sets = json.loads(Path(sets).read_text(), object_pairs_hook=_unique_keys)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f'Cannot read removal sets from {source!r} ({exc}); expected a JSON file {{"name": [row indices...]}}.'
            ) from None
        except _DuplicateKey as exc:
            raise ConfigError(
                f"The removal sets file {source!r} names the set {exc.args[0]!r} more than once (JSON keeps only the "
                "last); give every set its own name."
            ) from None
    if not isinstance(sets, Mapping):
        if isinstance(sets, (str, bytes)) or not isinstance(sets, Iterable):
            raise ConfigError(
                f'Removal sets must be a mapping {{"name": [row indices...]}} or a list of index lists; got a '
                f"{type(sets).__name__} ({str(sets)[:40]!r})."
            )
        sets = {f"set_{k}": s for k, s in enumerate(sets)}
    if isinstance(sets, Mapping) and set(sets) == {"ids"} and isinstance(sets["ids"], Mapping):
        sets, by_id = sets["ids"], True
    if not sets:
        raise ConfigError("No removal sets given; pass at least one {name: [row indices]}.")
    if by_id:
        if ids is None:
            raise ConfigError("Removal sets by id need the corpus ids; pass ids=... (the training ids).")
        ids = np.asarray(ids.compute() if hasattr(ids, "compute") else ids)
        sets = {k: rows_of_ids(ids, np.asarray(v), f"removal set {k!r}") for k, v in sets.items()}
    return {str(k): validate_indices(np.asarray(v), n, f"removal set {k!r}") for k, v in sets.items()}


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen[k] = v
    return seen


class LeaveOutHessian:
    """Solves with ``H_{−T} = H − Σ_{i∈T} α_i z_i z_iᵀ`` (all at θ̂), the NS matrix.

    Woodbury (``|T| < p``): with ``W = L⁻¹ Z_Tᵀ A_T^{1/2}`` and ``M = I − WᵀW`` (k×k),
    ``H_{−T}⁻¹ v = L⁻ᵀ (c + W M⁻¹ Wᵀ c)``, ``c = L⁻¹ v``. Direct otherwise: the Cholesky
    factor of the p×p matrix. Both constructors return None when ``H_{−T}`` is singular
    relative to H: the smallest eigenvalue of ``M`` (direct: of ``L⁻¹ H_{−T} L⁻ᵀ``, the
    same non-unit spectrum) below ``threshold`` (removing T leaves a direction of θ
    unpinned; in rounding, ``H_{−T}`` may still have a Cholesky factor).

    ``relative_min`` (that smallest eigenvalue, at most 1) and ``removed`` (the trace of
    ``L⁻¹ Σ_T α_i z_i z_iᵀ L⁻ᵀ``, the set's summed leverage) are kept: ``H_{−T} ⪰
    relative_min · H``, which proves the curvature the exact retrains start from
    (:func:`rifscale.engine.newton.leave_out_curvature`).
    """

    def __init__(self, method: str, linv: np.ndarray, factor, *, relative_min: float = np.nan,
                 removed: float = np.nan):
        self.method, self._linv, self._factor = method, linv, factor
        self.relative_min, self.removed = relative_min, removed

    @staticmethod
    def _smallest(relative: np.ndarray) -> float:
        """λ_min of the relative curvature ``relative`` (symmetric; 1 for an empty one: the
        directions a set does not touch keep their curvature)."""
        if relative.size == 0:
            return 1.0
        low = float(scipy.linalg.eigvalsh(relative, subset_by_index=[0, 0])[0])
        return low if not low > 1.0 else 1.0  # NaN stays NaN (not pinned)

    @classmethod
    def woodbury(cls, linv, roots, *, threshold: float) -> "LeaveOutHessian | None":
        """``H − Bᵀ B`` by Woodbury, B the set's Hessian roots (``family.row_terms``)."""
        with wide_blas(max(roots.shape)):
            W = linv @ roots.T
            M = np.eye(W.shape[1]) - W.T @ W
            low = cls._smallest(M)
            if not low >= threshold:
                return None
            try:
                c = scipy.linalg.cho_factor(M, lower=True)
            except np.linalg.LinAlgError:
                return None
        return cls("woodbury", linv, (W, c), relative_min=low, removed=float(np.sum(W * W)))

    @classmethod
    def direct(cls, H, gram, linv, *, threshold: float) -> "LeaveOutHessian | None":
        with wide_blas(H.shape[0]):
            removed = linv @ gram @ linv.T
            low = cls._smallest(np.eye(H.shape[0]) - removed)
            if not low >= threshold:
                return None
            try:
                return cls("direct", None, scipy.linalg.cho_factor(H - gram, lower=True), relative_min=low,
                           removed=float(np.trace(removed)))
            except np.linalg.LinAlgError:
                return None

    def solve(self, v: np.ndarray) -> np.ndarray:
        """``H_{−T}⁻¹ v`` for a (p,) or (p, K) right-hand side."""
        if self.method == "direct":
            return scipy.linalg.cho_solve(self._factor, v)
        W, c = self._factor
        cv = self._linv @ v
        return self._linv.T @ (cv + W @ scipy.linalg.cho_solve(c, W.T @ cv))


@dataclass(frozen=True)
class _SetDeltas:
    method: str
    n_flagged: int
    singular: bool
    G: np.ndarray  # Σ_T g_i
    delta: dict  # method -> Δθ
    hessian: LeaveOutHessian | None = None  # H_{−T} at θ̂, None when singular


def _deltas(train, model: FittedModel, sets, *, client):
    """Δθ for IF, RIF and NS of every set: the rows of the small sets (|T| < p) gathered to
    the driver, the large ones' sums reduced where their rows are (:func:`sets_pass`).
    Returns the deltas and the gathered rows."""
    p = model.p
    kw = dict(theta=model.theta, fit_intercept=model.fit_intercept, threshold=model.leverage_threshold)
    linv = model.factor.linv
    small = {k: v for k, v in sets.items() if v.size < p}
    large = {k: v for k, v in sets.items() if v.size >= p}
    gathered = {k: (train.X[v], train.y[v]) for k, v in small.items()}
    gathered = progress.compute(gathered, label="small sets' rows")[0] if gathered else {}
    width = 2 * p + 1 + p * p
    reduced = dict(zip(large, sets_pass(train, list(large.values()), model.family.set_stats_block, [width] * len(large),
                                         label="set statistics", client=client,
                                         linv=broadcast(linv, client=client) if large else linv, gram=True, **kw)))
    # the driver's algebra is NumPy even when the chunks live on a GPU
    gathered = {k: (kernels.to_numpy(x), kernels.to_numpy(y)) for k, (x, y) in gathered.items()}
    out = {}
    for name in sets:
        if name in gathered:
            x, y = gathered[name]
            stats = model.family.set_stats_block(x, y, linv=linv, gram=False, **kw)[0]
            z = kernels.design(x, fit_intercept=model.fit_intercept)
            _, _, roots = model.family.row_terms(z, y, theta=model.theta)
            hess = LeaveOutHessian.woodbury(linv, roots, threshold=model.leverage_threshold)
            method = "woodbury"
        else:
            stats = kernels.to_numpy(reduced[name])
            hess = LeaveOutHessian.direct(model.factor.hessian, stats[2 * p + 1 :].reshape(p, p), linv,
                                          threshold=model.leverage_threshold)
            method = "direct"
        ns = hess.solve(stats[:p]) if hess is not None else None
        n_flagged = int(round(stats[2 * p]))
        nan = np.full(p, np.nan)
        delta = {
            "if": model.factor.solve(stats[:p]),
            "rif": model.factor.solve(stats[p : 2 * p]) if n_flagged == 0 else nan,
            "ns": ns if ns is not None else nan,
        }
        out[name] = _SetDeltas(method, n_flagged, ns is None, stats[:p], delta, hess)
    return out, gathered


#: Most float64 entries one task of a pass over removal sets returns (:func:`sets_pass`):
#: more sets take further passes, so a task's memory stays bounded whatever their number.
SET_STATS_BUDGET = 2**23


def sets_pass(train, sets: list, kernel, widths: list[int], *, label: str, client, per_set: list | None = None,
              **kwargs) -> list[np.ndarray]:
    """``Σ_blocks kernel(x_T, y_T, **kwargs, **per_set[k])[0]`` for every set ``T = sets[k]``
    (sorted row indices; ``x_T`` its rows in a block): a vector of ``widths[k]`` per set.

    One pass over the rows serves a batch of sets (at most :data:`SET_STATS_BUDGET`
    entries in all), with one task per run of held blocks on the worker that holds them
    (:func:`~rifscale.engine._blocks.reduce_blocks`): a set's rows of a block are found
    from its indices in the task, and only they reach the kernel. Per set and per block a
    graph of its own (a row mask and a partial sum of each block, then a tree of sums)
    cost the distributed scheduler hundreds of tasks and moved every block's p² partial
    between worker processes."""
    if not sets:
        return []
    all_sets = broadcast(list(sets), client=client)
    batches, batch, size = [], [], 0
    for k, w in enumerate(widths):
        if batch and size + w > SET_STATS_BUDGET:
            batches.append(batch)
            batch, size = [], 0
        batch.append(k)
        size += w
    batches.append(batch)
    out = []
    with progress.Bar(label, total=len(sets)) as bar:
        for batch in batches:
            ws = [widths[k] for k in batch]
            packed = reduce_blocks(_sets_block, train.X, train.y, width=sum(ws), row_start=True, all_sets=all_sets,
                                   active=batch, set_kernel=kernel, widths=ws,
                                   per_set=[per_set[k] for k in batch] if per_set is not None else None,
                                   client=client, **kwargs)
            out += np.split(packed, np.cumsum(ws)[:-1])
            bar.update(batch[-1] + 1)
    return out


def _sets_block(x, y, *, row_start, all_sets, active, set_kernel, widths, per_set, **kwargs):
    """``set_kernel`` over the rows of each set ``all_sets[k]``, ``k`` in ``active``, in this
    block (global rows ``row_start + i``), packed one set after the other; zeros for a
    set without rows here."""
    xp = array_namespace(x)
    out = xp.zeros(sum(widths), dtype=xp.float64)
    at = 0
    for j, k in enumerate(active):
        local = rows_in_block(all_sets[k], row_start, row_start + x.shape[0])
        if local.size:
            local = xp.asarray(local)
            extra = per_set[j] if per_set is not None else {}
            out[at : at + widths[j]] = set_kernel(x[local], xp.asarray(y)[local], **kwargs, **extra)[0]
        at += widths[j]
    return out[None, :]


@dataclass(frozen=True)
class SetStatistics:
    """Per-set Δθ (IF, RIF, NS) and the leave-T-out Hessians, from one read of the
    small sets' rows and one pass over the data per batch of large sets; shared by :func:`group_effects` and :func:`rifscale.validation.exact.retrain` so that a
    caller needing both reads the data once."""

    sets: dict  # name -> sorted row indices
    deltas: dict  # name -> _SetDeltas
    gathered: dict = field(repr=False)  # small sets: name -> (x, y) rows

    def subset(self, names) -> "SetStatistics":
        """The statistics of some of the sets (a batch of retrains)."""
        names = list(names)
        return SetStatistics(
            sets={k: self.sets[k] for k in names},
            deltas={k: self.deltas[k] for k in names},
            gathered={k: v for k, v in self.gathered.items() if k in names},
        )


def set_statistics(source, sets, *, client=None) -> SetStatistics:
    train = source.corpus.train
    sets = normalise_sets(sets, train.n, ids=train.ids)
    deltas, gathered = _deltas(train, source.model, sets, client=client)
    return SetStatistics(sets=sets, deltas=deltas, gathered=gathered)


@entry_point
def group_effects(source, sets, *, client=None, extra: dict | None = None) -> dict[str, GroupEstimate]:
    """IF, RIF and NS estimates for each named removal set.

    IF and RIF add up the per-sample Δθ of the set's rows (RIF rescaled by
    1/(1 − h_i)); NS solves with the Hessian without the set's rows (Woodbury for small
    sets). One pass over the data serves every set. The maths: docs/design.md §2.4.

    Parameters
    ----------
    source : Attribution or Run
        Anything with ``.corpus`` and ``.model`` (a fresh result, or ``open_run(path)``).
    sets : mapping, list or str
        Name to row positions (``{"top10": [4, 8, 15, ...]}``), ``{"ids": {name: corpus
        ids}}``, a list of row-index lists (named "0", "1", ...), a JSON file path of
        either mapping, or the ``SetStatistics`` of them (then nothing is recomputed).
    client : distributed.Client, optional
        Defaults to the active client, if any.
    extra : mapping name -> {label: Δθ}, optional
        More Δθ per set (e.g. ``"exact"`` from a retrain) whose metric changes are
        computed in the same passes and reported beside IF, RIF and NS.

    Returns
    -------
    dict of str to GroupEstimate
        One :class:`rifscale.GroupEstimate` per set, in the order given.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_corpus
    >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
    >>> result = rifscale.attribute(corpus, lam=1.0)
    >>> rif = result.rif_scores["test_loss"].compute()
    >>> sets = {"top10": np.argsort(-np.abs(rif))[:10], "first100": range(100)}
    >>> effects = rifscale.group_effects(result, sets)
    >>> plugin = effects["top10"].plugin["test_loss"]     # {'if': ..., 'rif': ..., 'ns': ...}
    >>> bool(abs(plugin["rif"]) > abs(plugin["if"]))       # RIF corrects IF's underestimate
    True
    """
    corpus, model = source.corpus, source.model
    stats = sets if isinstance(sets, SetStatistics) else set_statistics(source, sets, client=client)
    sets, deltas, gathered = stats.sets, stats.deltas, stats.gathered
    delta = {k: {**deltas[k].delta, **(extra or {}).get(k, {})} for k in sets}
    singular = [k for k, d in deltas.items() if d.singular]
    if singular:
        log.warning("NS is NaN for removal set(s) %s: without their rows the Hessian is singular (1 - group leverage "
                    "< %g: a direction of theta, e.g. the intercept when every row goes, is no longer pinned)",
                    singular[:10] + (["..."] if len(singular) > 10 else []), model.leverage_threshold)
    linear, plugin = _metric_changes(corpus, model, sets, delta, {k: d.G for k, d in deltas.items()}, gathered,
                                     client=client)
    return {
        k: GroupEstimate(name=k, indices=sets[k], ns_method=d.method, n_flagged=d.n_flagged,
                         ns_singular=d.singular, delta=delta[k], linear=linear[k], plugin=plugin[k])
        for k, d in deltas.items()
    }


def _metric_changes(corpus, model: FittedModel, sets, delta, G, gathered, *, client):
    """Linear and plug-in changes of every metric for every set and every Δθ label: one
    pass over the test rows for all of them, and one over the removed rows (self_loss)."""
    names = list(sets)
    labels = {k: list(delta[k]) for k in names}
    cols = [(k, lab) for k in names for lab in labels[k]]
    thetas = np.stack([model.theta + delta[k][lab] for k, lab in cols], axis=1)
    thetas = np.where(np.isfinite(thetas), thetas, model.theta[:, None])  # NaN estimates stay NaN below
    test_vals = metric_values(corpus.test, model.test_subset, thetas, names=model.metrics,
                              fit_intercept=model.fit_intercept, family=model.family)
    self_terms, first, reduced = {}, 0, {}
    for k in names:
        th = np.column_stack([model.theta, thetas[:, first : first + len(labels[k])]])
        first += len(labels[k])
        if k in gathered:
            x, y = gathered[k]
            self_terms[k] = model.family.loss_block(x, y, thetas=th, fit_intercept=model.fit_intercept)[0]
        else:
            reduced[k] = th
    (test_vals,) = progress.compute(test_vals, label="group estimates")
    self_terms.update(zip(reduced, sets_pass(corpus.train, [sets[k] for k in reduced], model.family.loss_block,
                                             [th.shape[1] for th in reduced.values()], label="removed rows' losses",
                                             client=client, per_set=[{"thetas": th} for th in reduced.values()],
                                             fit_intercept=model.fit_intercept)))
    test_vals = kernels.to_numpy(test_vals)
    linear, plugin, col = {}, {}, {c: j for j, c in enumerate(cols)}
    for k in names:
        lin, plug = {}, {}
        for mi, metric in enumerate(model.metrics):
            lin[metric] = {lab: float(model.metric.grads[:, mi] @ delta[k][lab]) for lab in labels[k]}
            plug[metric] = {lab: float(test_vals[mi, col[k, lab]] - model.metric.values[mi]) for lab in labels[k]}
        lin["self_loss"] = {lab: float(G[k] @ delta[k][lab]) for lab in labels[k]}
        own = kernels.to_numpy(self_terms[k])
        plug["self_loss"] = {lab: float(own[1 + a] - own[0]) for a, lab in enumerate(labels[k])}
        for form in (lin, plug):  # a method without an estimate has no metric change
            for values in form.values():
                for lab in labels[k]:
                    if not np.isfinite(delta[k][lab]).all():
                        values[lab] = float("nan")
        linear[k], plugin[k] = lin, plug
    return linear, plugin


def write_groups(run_path, estimates: dict[str, GroupEstimate], *, overwrite: bool = False) -> Path:
    """Write ``run/groups/``, a Zarr group: arrays ``delta_theta/if|rif|ns`` of shape
    (sets, p); attrs ``names`` (the row order) and ``estimates`` (per-set linear and
    plug-in metric changes, readable as plain JSON in ``groups/zarr.json``).
    Written beside and moved into place when complete; refused if it exists unless asked."""
    from ..outputs import atomic_dir, output_path

    out = output_path(run_path, "groups") / "groups"
    with atomic_dir(out, overwrite=overwrite, kind="groups", flag=None) as tmp:
        store_groups(tmp, estimates)
    return out


def store_groups(path: Path, estimates: dict[str, GroupEstimate]) -> None:
    import zarr

    names = list(estimates)
    root = zarr.open_group(str(path), mode="a")
    root.attrs.update({"names": names, "estimates": [estimates[k].to_dict() for k in names]})
    for m in METHODS:
        root.create_array(f"delta_theta/{m}", data=np.stack([estimates[k].delta[m] for k in names]),
                          dimension_names=("set", "param"))


def estimates_frame(estimates):
    """Group estimates as a long pandas DataFrame: one row per set x method x metric x
    form, columns ``set, size, method, metric, form, value`` (plus ``n_flagged``,
    ``ns_method``). ``estimates``: the dict :func:`group_effects` returns, or the list of
    dicts stored in ``RUN/groups`` (attrs "estimates")."""
    import pandas as pd

    rows = []
    for e in (estimates.values() if isinstance(estimates, Mapping) else estimates):
        e = e.to_dict() if isinstance(e, GroupEstimate) else e
        for form in ("linear", "plugin"):
            for metric, methods in e[form].items():
                for method, value in methods.items():
                    rows.append({"set": e["name"], "size": e["size"], "method": method, "metric": metric,
                                 "form": form, "value": value, "n_flagged": e["n_flagged"],
                                 "ns_method": e["ns_method"]})
    return pd.DataFrame(rows, columns=["set", "size", "method", "metric", "form", "value", "n_flagged", "ns_method"])


def format_table(estimates: dict[str, GroupEstimate], metric: str = "test_loss", form: str = "plugin") -> str:
    """A plain-text table of one metric's predicted change per set and method."""
    rows = [f"{'set':<24} {'size':>6}  {'IF':>12} {'RIF':>12} {'NS':>12}   ({metric}, {form})"]
    for e in estimates.values():
        v = getattr(e, form)[metric]
        rows.append(f"{e.name[:24]:<24} {e.size:>6}  {v['if']:>12.5g} {v['rif']:>12.5g} {v['ns']:>12.5g}")
    return "\n".join(rows)
