r"""Test metrics f(θ), the test subset S they sum over, and their values and gradients.

``test_loss = Σ_{t∈S} ℓ_t(θ)`` (no penalty), ``test_prediction = Σ_{t∈S} σ(z_tᵀθ)``.
S is chosen as in the paper: the 50 highest-loss test points at θ̂ plus 50 drawn uniformly
(seeded) from the rest; or all test points; or an index file. Values and gradients come
from one masked pass over the test row chunks.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import dask.array as da
import numpy as np

from ..engine import kernels
from ..engine._blocks import block_sum, row_map, row_mask
from ..config import METRICS, RunConfig
from ..engine.family import BINARY, ModelFamily
from ..engine.model import MetricAtOptimum
from ..errors import ConfigError
from ..corpus.model import Split

#: Column of each metric in the packed kernel outputs.
METRIC_INDEX = {name: i for i, name in enumerate(METRICS)}


def spread_pick(n_total: int, excluded: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k indices drawn uniformly without replacement from ``range(n_total)`` minus
    ``excluded``, without materialising the n-long remainder."""
    excluded = np.sort(np.asarray(excluded, dtype=np.int64))
    k = min(k, n_total - excluded.size)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    picks = np.sort(rng.choice(n_total - excluded.size, size=k, replace=False)).astype(np.int64)
    # map positions in the remainder to row indices: shift past every excluded index <= it
    out = picks.copy()
    for e in excluded:
        out[out >= e] += 1
    return out


def paper_subset(losses_top: np.ndarray, n_test: int, *, n_random: int, seed: int) -> np.ndarray:
    """S = the given top-loss indices plus ``n_random`` uniform picks from the rest."""
    rng = np.random.default_rng(seed)
    rest = spread_pick(n_test, losses_top, n_random, rng)
    return np.sort(np.concatenate([np.asarray(losses_top, dtype=np.int64), rest]))


def rows_of_ids(ids, wanted, what: str) -> np.ndarray:
    """Row positions of the ids ``wanted`` in ``ids`` (an array, or a Dask array read on
    demand); a ConfigError naming the ids that are not there."""
    ids = np.asarray(ids.compute() if hasattr(ids, "compute") else ids)
    wanted = _ids_like(np.asarray(wanted), ids, what)
    if ids.dtype.kind == "T":  # text: a dict (NumPy 2.4's searchsorted misplaces StringDType strings
        index = {v: i for i, v in enumerate(ids.tolist())}  # longer than 15 bytes; sorting str is slow)
        rows = np.fromiter((index.get(v, -1) for v in wanted.tolist()), dtype=np.int64, count=wanted.size)
        found = rows >= 0
    else:
        order = np.argsort(ids, kind="stable")
        rows = order[np.minimum(np.searchsorted(ids, wanted, sorter=order), ids.size - 1)]
        found = ids[rows] == wanted
    if not found.all():
        missing = wanted[~found]
        raise ConfigError(
            f"{what} names {missing.size} id(s) that the corpus does not have (e.g. {missing[:5].tolist()}); "
            "ids are the corpus ids (train/ids or test/ids), not row positions."
        )
    return rows


def _ids_like(wanted: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """``wanted`` as ids of the corpus's kind: text ids as strings; integer ids as int64,
    from integers or from their decimal text (as the command line gives them)."""
    if wanted.ndim != 1:
        raise ConfigError(f"{what} must be a flat list of ids; got shape {wanted.shape}.")
    if wanted.size == 0:
        return wanted.astype(ids.dtype)
    if ids.dtype.kind in "UTO":
        if wanted.dtype.kind not in "UT":
            raise ConfigError(f"{what} must list the corpus's ids, which are text: give them as strings "
                              f"(got {wanted.dtype} values such as {wanted[:3].tolist()}).")
        return wanted.astype(ids.dtype)
    if wanted.dtype.kind in "UT":
        try:
            return np.array([int(v) for v in wanted.tolist()], dtype=np.int64)
        except ValueError:
            raise ConfigError(f"{what} must list integer ids (the corpus's ids are integers); got "
                              f"{wanted[:3].tolist()}.") from None
    if not np.issubdtype(wanted.dtype, np.integer):
        raise ConfigError(f"{what} must be a list of integer ids; got {wanted.dtype} of shape {wanted.shape}.")
    return wanted


def read_index_file(path: str, n_test: int, ids=None) -> np.ndarray:
    """Test row indices from ``.npy``, ``.json`` (a list, or ``{"ids": [...]}`` naming
    test ids, mapped through ``ids``) or text (one per line)."""
    p = Path(path)
    what = f"The --test-subset file {path!r}"
    try:
        if p.suffix == ".npy":
            idx = np.load(p, allow_pickle=False)
        elif p.suffix == ".json":
            doc = json.loads(p.read_text())
            if isinstance(doc, dict) and set(doc) == {"ids"}:
                if ids is None:
                    raise ConfigError(f"{what} names ids, but no test ids are at hand.")
                idx = rows_of_ids(ids, doc["ids"], what)
            else:
                idx = np.asarray(doc)
        else:
            with warnings.catch_warnings():  # an empty file is named below, not warned about
                warnings.filterwarnings("ignore", "loadtxt: input contained no data")
                idx = np.loadtxt(p, dtype=np.int64, ndmin=1)
            if idx.size == 0:
                raise ConfigError(f"{what} is empty; list one test row index per line in it, or pass "
                                  "--test-subset paper or all.")
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"Cannot read the test subset file {path!r} ({type(exc).__name__}: {exc}); expected test row indices "
            "as a .npy array, a .json list, or text with one integer per line."
        ) from None
    return validate_indices(idx, n_test, f"--test-subset file {path!r}", "test")


def validate_indices(idx, n: int, what: str, split: str = "train") -> np.ndarray:
    """Sorted, unique, in-range int64 row indices, or a ConfigError saying what is wrong."""
    idx = np.asarray(idx)
    if idx.ndim != 1 or idx.size == 0:
        raise ConfigError(f"{what} must be a non-empty 1-D list of row indices; got shape {idx.shape}.")
    if not np.issubdtype(idx.dtype, np.integer):
        if np.issubdtype(idx.dtype, np.floating) and np.all(idx == np.round(idx)):
            idx = idx.astype(np.int64)
        else:
            raise ConfigError(f"{what} must hold integer row indices; got dtype {idx.dtype}.")
    idx = idx.astype(np.int64)
    if idx.min() < 0 or idx.max() >= n:
        raise ConfigError(
            f"{what} has indices outside [0, {n}) of the {split} split (min {idx.min()}, max {idx.max()})."
        )
    uniq = np.unique(idx)
    if uniq.size != idx.size:
        raise ConfigError(f"{what} lists {idx.size - uniq.size} row index(es) more than once; list each row once.")
    return uniq


def select_test_subset(test: Split, theta: np.ndarray, config: RunConfig, *, family: ModelFamily = BINARY) -> np.ndarray:
    """Sorted test row indices S for ``config.test_subset`` ("paper" on a test split of at
    most 100 rows is all of it)."""
    n_test = test.n
    if config.test_subset == "all":
        return np.arange(n_test, dtype=np.int64)
    if config.test_subset != "paper":
        return read_index_file(config.test_subset, n_test, ids=test.ids)
    if config.paper_top + config.paper_random >= n_test:
        return np.arange(n_test, dtype=np.int64)  # S would be every test point anyway
    k = config.paper_top
    losses = row_map(family.row_loss_block, test.X, test.y, width=1, theta=theta, fit_intercept=config.fit_intercept)[:, 0]
    top = kernels.to_numpy(da.argtopk(losses, k).compute()).astype(np.int64)
    return paper_subset(top, n_test, n_random=config.paper_random, seed=config.seed)


def _test_weights(test: Split, subset: np.ndarray):
    return None if subset.size == test.n else row_mask(test.n, test.X.chunks[0], subset)


def metric_at(test: Split, subset: np.ndarray, theta: np.ndarray, *, names, fit_intercept: bool,
              family: ModelFamily = BINARY) -> MetricAtOptimum:
    p = theta.shape[0]
    packed = block_sum(
        family.metric_grad_block,
        test.X,
        test.y,
        _test_weights(test, subset),
        width=2 + 2 * p,
        theta=theta,
        fit_intercept=fit_intercept,
    ).compute()
    packed = kernels.to_numpy(packed)
    values = packed[:2]
    grads = np.stack([packed[2 : 2 + p], packed[2 + p :]], axis=1)
    cols = [METRIC_INDEX[m] for m in names]
    return MetricAtOptimum(names=tuple(names), values=values[cols], grads=grads[:, cols])


def metric_values(test: Split, subset: np.ndarray, thetas: np.ndarray, *, names, fit_intercept: bool,
                  family: ModelFamily = BINARY) -> da.Array:
    """Lazy (M, K) array of each metric at each column of ``thetas`` (one pass)."""
    K = thetas.shape[1]
    packed = block_sum(
        family.metric_values_block,
        test.X,
        test.y,
        _test_weights(test, subset),
        width=2 * K,
        thetas=thetas,
        fit_intercept=fit_intercept,
    ).reshape(2, K)
    return packed[[METRIC_INDEX[m] for m in names]]
