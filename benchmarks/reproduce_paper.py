"""Reproduce the paper's experiments on public data and keep the summaries and figures.

    .venv/bin/python benchmarks/reproduce_paper.py --data demo          # embedded pair, ~3 min
    .venv/bin/python benchmarks/reproduce_paper.py --data fmnist-full   # 12 000 x 196, needs
                                                                        # Debian's dataset-fashion-mnist

Each run ingests the data into a temporary corpus, runs ``rifscale run`` and
``rifscale validate`` (accuracy with 40 sizes x 4 strategies, poisoning with 100 test points,
and for ``demo`` also the λ / n sweeps) on a LocalCluster, and copies the summary tables
(JSON), the figures (PNG) and the HTML report into ``benchmarks/results/paper-<data>/``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from rifscale.cli import main as cli

HERE = Path(__file__).resolve().parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")
KEEP = ("accuracy_summary.json", "accuracy_plugin.png", "accuracy_linear.png", "poisoning.json", "poisoning.png",
        "sweeps.json", "sweeps.png", "index.html")


def _idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read()
    nd = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(shape)


def fmnist_full_npz(out: Path) -> Path:
    """Classes 0 ('T-shirt/top', y=0) and 6 ('Shirt', y=1), all 12 000 training and 2 000 test
    images, pooled 2x2 to 14x14 = 196 features like the embedded data (the poisoning
    experiment's 100 exact Newton fits need one p x p Hessian per point per pass)."""
    if not FMNIST.exists():
        raise SystemExit("needs Debian's dataset-fashion-mnist package: apt-get install dataset-fashion-mnist")
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        X, y = _idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz"), _idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")
        keep = np.flatnonzero(np.isin(y, (0, 6)))
        pooled = X[keep].reshape(len(keep), 14, 2, 14, 2).mean(axis=(2, 4)).reshape(len(keep), 196)
        arrays[f"{split}_X"] = (pooled / 255.0).astype(np.float32)
        arrays[f"{split}_y"] = (y[keep] == 6).astype(np.int8)
        arrays[f"{split}_ids"] = keep.astype(np.int64)
    np.savez(out, **arrays)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("demo", "fmnist-full"), default="demo")
    ap.add_argument("--lam", type=float, help="default: 0.1 for demo, 1.0 for fmnist-full")
    ap.add_argument("--chunk-rows", type=int, default=2000)
    args = ap.parse_args()
    lam = args.lam if args.lam is not None else (0.1 if args.data == "demo" else 1.0)
    dest = HERE / "results" / f"paper-{args.data}"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.data == "demo":
            from rifscale.demo import demo_data_path

            npz = demo_data_path()
        else:
            npz = fmnist_full_npz(tmp / "data.npz")
        assert cli(["-q", "ingest", str(tmp / "c.zarr"), "--npz", str(npz), "--chunk-rows", str(args.chunk_rows)]) == 0
        assert cli(["-q", "run", str(tmp / "c.zarr"), "--out", str(tmp / "run"), "--lam", str(lam)]) == 0
        experiments = ["accuracy", "poisoning"] + (["sweeps"] if args.data == "demo" else [])
        assert cli(["-q", "validate", str(tmp / "run"), "--experiments", *experiments]) == 0
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for name in KEEP:
            if (tmp / "run" / "report" / name).exists():
                shutil.copy(tmp / "run" / "report" / name, dest / name)
        manifest = json.loads((tmp / "run" / "manifest.json").read_text())
        import zarr

        records = zarr.open_group(str(tmp / "run" / "validation"), mode="r").attrs["records"]
    (dest / "run.json").write_text(json.dumps({
        "data": args.data, "lam": lam, "n": manifest["n"], "d": manifest["d"], "fit": {
            k: manifest["fit"][k] for k in ("n_iter", "rel_grad_norm", "stopped_at")},
        "counts": manifest["counts"], "validation": records, "seconds": time.perf_counter() - t0,
        "versions": manifest["versions"],
    }, indent=1))
    print(f"wrote {dest} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
