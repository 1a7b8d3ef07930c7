"""Synthetic corpora generated chunk by chunk, for benchmarks at sizes that do not fit
comfortably in memory.

The model is the one of ``rifscale.testing.make_problem`` (Gaussian features, 5 % of the
rows scaled by 3, labels from a noisy linear logistic model), but every block of
``GEN_ROWS`` rows draws from its own generator seeded by ``(seed, split, block)``, so
any block can be regenerated on its own and the data do not depend on how the corpus is
later chunked. Features are float32; logits are computed in float32 as well.

    X, y = synthetic_split(n, d, seed=1, split="train")   # lazy dask arrays
    write_corpus(path, n, d, seed=1)                       # through rifscale.ingest
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: rows per generated block (the unit of reproducibility)
GEN_ROWS = 65_536
N_TEST = 5_000
SPLITS = {"train": 0, "test": 1}
HEAVY_SHARE, HEAVY_SCALE = 0.05, 3.0
LOGIT_SCALE, LOGIT_SHIFT, NOISE = 1.5, 0.3, 1.0


def true_weights(d: int, seed: int) -> np.ndarray:
    """The fixed weight vector of the label model (float32, norm about 1)."""
    return (np.random.default_rng([seed, 99]).standard_normal(d) / np.sqrt(d)).astype(np.float32)


def _rng(seed: int, split: str, block: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], block, stream])


def features_block(seed: int, split: str, block: int, rows: int, d: int) -> np.ndarray:
    """Block ``block`` of a split's features: ``rows`` x ``d`` float32."""
    rng = _rng(seed, split, block, 0)
    scale = np.where(rng.random(rows) < HEAVY_SHARE, HEAVY_SCALE, 1.0).astype(np.float32)
    X = rng.standard_normal((rows, d), dtype=np.float32)
    X *= scale[:, None]
    return X


def labels_block(X: np.ndarray, w: np.ndarray, seed: int, split: str, block: int) -> np.ndarray:
    """Labels (int8 0/1) of one block of features, with the block's own logistic noise;
    with a (d, K) ``w``, labels 0..K−1 of a softmax model (Gumbel noise: the argmax of the
    noisy logits is a draw from the softmax probabilities)."""
    if w.ndim == 2:
        noise = _rng(seed, split, block, 1).gumbel(size=(len(X), w.shape[1]))
        return np.argmax(LOGIT_SCALE * (X @ w) + NOISE * noise, axis=1).astype(np.int8)
    noise = _rng(seed, split, block, 1).logistic(size=len(X))
    logits = LOGIT_SCALE * (X @ w) + LOGIT_SHIFT + NOISE * noise
    return (logits > 0).astype(np.int8)


def class_weights(d: int, classes: int, seed: int) -> np.ndarray:
    """The (d, K) weights of the softmax label model (float32, columns of norm about 1)."""
    return (np.random.default_rng([seed, 98]).standard_normal((d, classes)) / np.sqrt(d)).astype(np.float32)


def synthetic_split(n: int, d: int, *, seed: int, split: str = "train", classes: int = 2):
    """Lazy ``(X, y)`` dask arrays of one split, in blocks of ``GEN_ROWS`` rows; labels 0/1,
    or 0..classes−1 from a softmax model when ``classes`` > 2.

    Nothing is generated until the arrays are computed or stored; each block of y reuses
    the matching block of X (one task graph), so storing both reads X once.
    """
    import dask.array as da

    rows = tuple(min(GEN_ROWS, n - s) for s in range(0, n, GEN_ROWS))
    w = true_weights(d, seed) if classes == 2 else class_weights(d, classes, seed)

    def make_X(block_info=None):
        info = block_info[None]
        return features_block(seed, split, info["chunk-location"][0], info["chunk-shape"][0], d)

    def make_y(X, block_id=None):
        return labels_block(X, w, seed, split, block_id[0])

    X = da.map_blocks(make_X, chunks=(rows, (d,)), dtype=np.float32, meta=np.empty((0, 0), np.float32),
                      name=f"synthetic-X-{split}-{n}-{d}-{seed}")
    y = X.map_blocks(make_y, drop_axis=1, dtype=np.int8, meta=np.empty((0,), np.int8),
                     name=f"synthetic-y-{split}-{n}-{d}-{seed}-{classes}")
    return X, y


def write_corpus(path: Path, n: int, d: int, *, seed: int, n_test: int = N_TEST, chunk_rows: int | None = None):
    """Generate a train split of n x d and a test split of ``n_test`` rows straight into a
    Zarr corpus with ``rifscale.ingest`` (given dask arrays; the corpus chunking is
    ingest's default unless ``chunk_rows`` is given). Returns what ingest returns."""
    import rifscale

    X, y = synthetic_split(n, d, seed=seed, split="train")
    X_test, y_test = synthetic_split(n_test, d, seed=seed, split="test")
    kwargs = {} if chunk_rows is None else {"chunk_rows": chunk_rows}
    return rifscale.ingest(path, train_X=X, train_y=y, test_X=X_test, test_y=y_test, **kwargs)
