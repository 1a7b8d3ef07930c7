"""``rifscale demo``: the whole pipeline on the embedded Fashion-MNIST pair.

Ingests the packaged ``.npz`` into a Zarr corpus, fits and scores on this machine's cores (or a
given scheduler), prints the most influential training samples and an IF-vs-RIF summary,
estimates three removal sets with IF, RIF and NS, and checks them against exact retrains.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import dask
import numpy as np

from .cluster import DEFAULT_TIMEOUT, connect
from .config import RunConfig
from .estimates.groups import group_effects, write_groups
from .corpus.ingest import ingest
from .outputs import check_output, mark, output_path
from .pipeline import attribute
from .runs.format import write_run
from .validation.exact import retrain_sets

DATA = "fashion_mnist_tshirt_shirt.npz"
DATA_MULTICLASS = "fashion_mnist_10.npz"
#: The ten Fashion-MNIST classes, by label (the multiclass demo's labels 0..9).
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
DEMO_LAM = 0.1


def demo_data_path(multiclass: bool = False) -> Path:
    """Path of the embedded data: a Fashion-MNIST pair (T-shirt vs shirt), 1 000 training and
    500 test images as 196 pooled features, in one .npz (``train_X``, ``train_y``,
    ``test_X``, ``test_y``, ``train_ids``, ``test_ids``); ``multiclass=True``: all ten
    classes (labels 0..9, :data:`FASHION_CLASSES`), 100 training and 50 test images each."""
    return Path(str(resources.files("rifscale") / "data" / (DATA_MULTICLASS if multiclass else DATA)))


def demo_corpus(multiclass: bool = False):
    """The embedded data (:func:`demo_data_path`) as an in-memory :class:`rifscale.Corpus`,
    for examples and quick trials; ``multiclass=True`` for the ten-class set.

    Examples
    --------
    >>> from rifscale.demo import demo_corpus
    >>> corpus = demo_corpus()
    >>> corpus.n, corpus.d, corpus.test.n
    (1000, 196, 500)
    >>> int(demo_corpus(multiclass=True).train.y.max().compute()) + 1
    10
    """
    from .corpus.model import Corpus

    data = np.load(demo_data_path(multiclass))
    return Corpus.from_arrays(data["train_X"], data["train_y"], data["test_X"], data["test_y"])


def _exact_changes(result, estimates, *, client) -> dict[str, float]:
    """Exact leave-set-out retrains of every set (batched, warm-started at θ̂, each Δθ certified
    to a proven relative error bound of 1e-8): the change in test_loss of each."""
    exact = retrain_sets(result, {k: e.indices for k, e in estimates.items()}, client=client)
    return {name: r.changes["test_loss"] for name, r in exact.items()}


def run_demo(out="rifscale-demo", *, scheduler=None, overwrite=False, n_workers=None, processes=False,
             dashboard=False, timeout: float = DEFAULT_TIMEOUT, security=None) -> dict:
    out = output_path(out, "demo")
    check_output(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "demo")  # a container of rifscale outputs: a rerun with --overwrite may replace them
    t0 = time.perf_counter()
    src = demo_data_path()
    print("rifscale demo: Fashion-MNIST 'T-shirt/top' (y=0) vs 'Shirt' (y=1), 14x14 pooled pixels")
    corpus = ingest(
        out / "corpus.zarr",
        **{k: f"{src}:{k}" for k in ("train_X", "train_y", "train_ids", "test_X", "test_y", "test_ids")},
        chunk_rows=250,
        overwrite=overwrite,
        provenance={"source": "Fashion-MNIST (Zalando, MIT) via Debian dataset-fashion-mnist", "classes": [0, 6]},
    )
    print(f"[1/4] corpus {out / 'corpus.zarr'}: train {corpus.n} x {corpus.d}, test {corpus.test.n}, "
          f"{corpus.train.X.numblocks[0]} row chunks")
    config = RunConfig(lam=DEMO_LAM)
    with connect(scheduler, n_workers=n_workers, processes=processes, dashboard=dashboard, timeout=timeout,
                 security=security) as client:
        result = attribute(corpus, config, client=client)
        manifest = write_run(result, out / "run", overwrite=overwrite)
        print(f"[2/4] run {out / 'run'}: lam = {DEMO_LAM}, Newton converged in {result.fit.n_iter} "
              f"iterations (error bound {result.fit.rel_error_bound:.1e} x |theta|); test metrics over "
              f"{result.model.test_subset.size} test points (50 highest-loss + 50 random)")
        lev, s_if, s_rif, ids, y = dask.compute(
            result.leverage, result.if_scores["test_loss"], result.rif_scores["test_loss"],
            corpus.train.ids, corpus.train.y,
        )
        _print_top(lev, s_if, s_rif, ids, y)
        _print_summary(lev, s_if, s_rif, manifest)

        rng = np.random.default_rng(0)
        sets = {
            "top10_rif_test_loss": np.argsort(-s_rif)[:10],
            "random50": rng.choice(corpus.n, 50, replace=False),
            "top50_leverage": np.argsort(-lev)[:50],
        }
        estimates = group_effects(result, sets, client=client)
        write_groups(out / "run", estimates, overwrite=True)
        print(f"[3/4] group estimates for {len(sets)} sets -> {out / 'run' / 'groups'}")
        print("[4/4] exact retrains without each set (change in test_loss; plug-in estimates):")
        print(f"      {'set':<22} {'size':>4} {'exact':>10} {'IF':>10} {'RIF':>10} {'NS':>10}")
        checks = {}
        exact = _exact_changes(result, estimates, client=client)
        for name, e in estimates.items():
            actual = exact[name]
            v = e.plugin["test_loss"]
            checks[name] = {"exact": actual, **v}
            print(f"      {name:<22} {e.size:>4} {actual:>10.4f} {v['if']:>10.4f} {v['rif']:>10.4f} {v['ns']:>10.4f}")
    print(f"done in {time.perf_counter() - t0:.1f} s. Outputs: corpus {out / 'corpus.zarr'}, run "
          f"{out / 'run'} (manifest.json and Zarr groups: model/theta, scores/leverage, "
          "scores/if_<metric>, scores/rif_<metric>, ..., groups/delta_theta/<method>).")
    return {"manifest": manifest, "checks": checks}


def _print_top(lev, s_if, s_rif, ids, y, k: int = 10) -> None:
    order = np.argsort(-np.abs(np.nan_to_num(s_rif)))[:k]
    print(f"      the {k} training samples whose removal changes the test loss most (RIF):")
    print(f"      {'row':>5} {'fmnist id':>9} {'y':>2} {'leverage':>9} {'IF':>10} {'RIF':>10} {'RIF/IF':>7}")
    for i in order:
        print(f"      {i:>5} {ids[i]:>9} {y[i]:>2} {lev[i]:>9.4f} {s_if[i]:>10.4f} {s_rif[i]:>10.4f} {s_rif[i] / s_if[i]:>7.3f}")


def _print_summary(lev, s_if, s_rif, manifest) -> None:
    gain = 1.0 / (1.0 - lev)
    top = 50
    a, b = set(np.argsort(-np.abs(s_if))[:top]), set(np.argsort(-np.abs(np.nan_to_num(s_rif)))[:top])
    print(
        f"      IF vs RIF: leverage mean {lev.mean():.3f}, max {lev.max():.3f}; RIF = IF x 1/(1-h) with "
        f"median factor {np.median(gain):.3f}, max {gain.max():.2f}; {np.mean(gain > 1.25):.1%} of samples "
        f"are under-estimated by IF by more than 25%; top-{top} sets by |IF| and |RIF| share "
        f"{len(a & b)} samples; {manifest['counts']['flagged_low_margin']} sample(s) flagged (1 - h < threshold)."
    )
