"""Build the embedded demo data set ``rifscale/data/fashion_mnist_tshirt_shirt.npz``.

Source: Debian's ``dataset-fashion-mnist`` package (Zalando's Fashion-MNIST, MIT licence),
installed with ``apt-get install dataset-fashion-mnist``. Run once, from the repository root:

    python scripts/make_demo_data.py [--source /usr/share/datasets/fashion-mnist]

Classes 0 ("T-shirt/top", label 0) and 6 ("Shirt", label 1) — the hardest pair of the
set — pooled 2×2 to 14×14 = 196 features in [0, 1], with a seeded, class-balanced
subsample: 1000 training and 500 test images. ``*_ids`` hold each image's index in the
original Fashion-MNIST file.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

CLASSES = (0, 6)
N_TRAIN, N_TEST = 1000, 500
OUT = Path(__file__).resolve().parents[1] / "rifscale" / "data" / "fashion_mnist_tshirt_shirt.npz"


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def pick(images, labels, n, rng):
    per_class = n // 2
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in CLASSES])
    idx = np.sort(idx)
    X = images[idx].reshape(len(idx), 14, 2, 14, 2).mean(axis=(2, 4)).reshape(len(idx), 196) / 255.0
    y = (labels[idx] == CLASSES[1]).astype(np.int8)
    return X.astype(np.float32), y, idx.astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--seed", type=int, default=20261129)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    tr = pick(read_idx(args.source / "train-images-idx3-ubyte.gz"), read_idx(args.source / "train-labels-idx1-ubyte.gz"), N_TRAIN, rng)
    te = pick(read_idx(args.source / "t10k-images-idx3-ubyte.gz"), read_idx(args.source / "t10k-labels-idx1-ubyte.gz"), N_TEST, rng)
    np.savez_compressed(
        OUT, train_X=tr[0], train_y=tr[1], train_ids=tr[2], test_X=te[0], test_y=te[1], test_ids=te[2]
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): train {tr[0].shape}, test {te[0].shape}")


if __name__ == "__main__":
    main()
