"""Build the embedded demo data sets ``rifscale/data/fashion_mnist_tshirt_shirt.npz`` and
``rifscale/data/fashion_mnist_10.npz``.

Source: Debian's ``dataset-fashion-mnist`` package (Zalando's Fashion-MNIST, MIT licence),
installed with ``apt-get install dataset-fashion-mnist``. Run once, from the repository root:

    python scripts/make_demo_data.py [--source /usr/share/datasets/fashion-mnist]

The pair: classes 0 ("T-shirt/top", label 0) and 6 ("Shirt", label 1) — the hardest pair
of the set — with a seeded, class-balanced subsample of 1000 training and 500 test images.
The ten classes (labels 0..9 as in Fashion-MNIST): 100 training and 50 test images of each.
Both pooled 2×2 to 14×14 = 196 features in [0, 1]. ``*_ids`` hold each image's index in the
original Fashion-MNIST file.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "rifscale" / "data"
#: (file, classes, training and test images per class)
SETS = (
    ("fashion_mnist_tshirt_shirt.npz", (0, 6), 500, 250),
    ("fashion_mnist_10.npz", tuple(range(10)), 100, 50),
)


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def pick(images, labels, classes, per_class, rng):
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes])
    idx = np.sort(idx)
    X = images[idx].reshape(len(idx), 14, 2, 14, 2).mean(axis=(2, 4)).reshape(len(idx), 196) / 255.0
    y = np.searchsorted(np.asarray(classes), labels[idx]).astype(np.int8)  # class c -> its position
    return X.astype(np.float32), y, idx.astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--seed", type=int, default=20261129)
    args = ap.parse_args()
    train = [read_idx(args.source / f"train-{k}-idx{n}-ubyte.gz") for k, n in (("images", 3), ("labels", 1))]
    test = [read_idx(args.source / f"t10k-{k}-idx{n}-ubyte.gz") for k, n in (("images", 3), ("labels", 1))]
    for name, classes, n_train, n_test in SETS:
        rng = np.random.default_rng(args.seed)  # each set from the same seed: the pair is as it always was
        tr = pick(*train, classes, n_train, rng)
        te = pick(*test, classes, n_test, rng)
        out = DATA / name
        np.savez_compressed(
            out, train_X=tr[0], train_y=tr[1], train_ids=tr[2], test_X=te[0], test_y=te[1], test_ids=te[2]
        )
        print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): train {tr[0].shape}, test {te[0].shape}")


if __name__ == "__main__":
    main()
