"""Validation experiments: estimates against exact retrains (docs/design.md §4).

- :func:`accuracy` — removal sets from each strategy and size, retrained exactly
  (batched), and the IF, RIF and NS predictions of each metric change, in the linear and
  the plug-in form, against the actual change (the paper's Figure 1).
- :func:`sweeps` — the accuracy summary while varying λ and while subsampling n at fixed
  d (Figure 2).
- :func:`poisoning` — for test points (x, y): add (x, 1 − y), fit, and predict with IF and
  RIF the change of x's logit when the poisoned row is removed; the exact answer is the
  clean model's logit (Figure 3).

Every experiment returns plain tables (lists of dicts) that :mod:`rifscale.validation.report` draws.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from ..engine import kernels
from ..errors import ConfigError
from ..estimates.groups import METHODS, group_effects, set_statistics
from ..corpus.model import Corpus, Split
from .removal import DEFAULT_STRATEGIES, N_CLUSTERS, RemovalSet, default_sizes, removal_sets
from .exact import TOL, poisoned_fits, retrain

log = logging.getLogger(__name__)

FORMS = ("linear", "plugin")


def if_scores(source, metric: str) -> da.Array:
    """Lazy IF scores of one metric, from a fresh result or a stored run."""
    if hasattr(source, "if_scores"):
        return source.if_scores[metric]
    return da.from_zarr(source.array(f"scores/if_{metric}"))


def make_sets(source, *, strategies=DEFAULT_STRATEGIES, sizes=None, seed: int = 0,
              top_metric: str = "test_loss", top_sign: int = 1, n_clusters: int = N_CLUSTERS) -> list[RemovalSet]:
    train = source.corpus.train
    out = []
    for strategy in strategies:
        kw = {"n_clusters": n_clusters} if strategy == "kmeans_cluster" else {}
        if strategy == "top_influence":
            kw = dict(if_scores=if_scores(source, top_metric), sign=top_sign,
                      label=f"[{'+' if top_sign > 0 else '-'}{top_metric}]")
        out += removal_sets(train, strategy, sizes=sizes, seed=seed, **kw)
    return out


def checkpoint_of(run) -> Path:
    """Where ``validate`` keeps the finished batches of the run at ``run``:
    ``RUN/.validation.partial``."""
    from ..runs.reading import run_location

    return run_location(run) / ".validation.partial"


#: Removal sets (or poisoned points) retrained together in one batch; each finished batch
#: is checkpointed, so a killed ``validate`` redoes at most one batch.
BATCH_SETS = 128


def _batches(items: list, size: int) -> list[list]:
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ConfigError(f"The batch size must be a positive integer; got {size!r}.")
    return [items[i : i + size] for i in range(0, len(items), size)]


class Checkpoint:
    """Finished batches of an interrupted validation, in ``RUN/.validation.partial``.

    Opened with the validation's job key (run fingerprint and every argument); a
    checkpoint of another job is discarded. Each batch is written to a temporary file and
    renamed, so a batch file is whole or absent; the results read back are the saved
    float64 arrays, bit for bit."""

    def __init__(self, path: Path, key: dict):
        from ..outputs import mark, remove

        self.path = Path(path)
        key = json.loads(json.dumps(key, default=str))
        try:
            same = json.loads((self.path / "job.json").read_text()) == key
        except (OSError, ValueError):
            same = False
        if not same:
            remove(self.path)
            self.path.mkdir(parents=True, exist_ok=False)
            mark(self.path, "validate/checkpoint")
            (self.path / "job.json").write_text(json.dumps(key))
        self.reused = 0

    def _file(self, kind: str, b: int, ext: str) -> Path:
        return self.path / f"{kind}-{b:05d}.{ext}"

    def _write(self, target: Path, write) -> None:
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, target)

    def save(self, kind: str, b: int, fits: list, hessians: list | None = None) -> None:
        arrays = {"theta": np.stack([f.theta for f in fits]), "delta": np.stack([f.delta for f in fits])}
        if hessians is not None:
            p = fits[0].theta.shape[0]
            arrays["hessians"] = np.stack([h if h is not None else np.full((p, p), np.nan) for h in hessians])
            arrays["has_hessian"] = np.array([h is not None for h in hessians])
        records = json.dumps([f.record() for f in fits]).encode()
        self._write(self._file(kind, b, "npz"), lambda fh: np.savez(fh, records=np.frombuffer(records, np.uint8),
                                                                   **arrays))

    def _read(self, kind: str, b: int):
        try:
            with np.load(self._file(kind, b, "npz"), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError):
            return None

    def load(self, kind: str, b: int, names: list[str]) -> list | None:
        """The batch's results if it finished before (same set names, same order)."""
        from .exact import Retrain

        z = self._read(kind, b)
        if z is None:
            return None
        records = json.loads(z["records"].tobytes())
        if [r["name"] for r in records] != list(names):
            return None
        try:
            fits = [Retrain(**r, theta=z["theta"][i], delta=z["delta"][i]) for i, r in enumerate(records)]
        except TypeError:  # written by a version with other record fields: redo the batch
            return None
        self.reused += 1
        log.info("validate: reusing finished %s batch %d (%d retrains) from the checkpoint", kind, b, len(records))
        return fits

    def hessians(self, kind: str, b: int) -> list:
        z = self._read(kind, b)
        return [h if ok else None for h, ok in zip(z["hessians"], z["has_hessian"], strict=True)]

    def save_rows(self, kind: str, k: int, rows: list[dict]) -> None:
        self._write(self._file(kind, k, "json"), lambda fh: fh.write(json.dumps(rows).encode()))

    def load_rows(self, kind: str, k: int) -> list[dict] | None:
        try:
            rows = json.loads(self._file(kind, k, "json").read_text())
        except (OSError, ValueError):
            return None
        self.reused += 1
        log.info("validate: reusing finished %s setting %d from the checkpoint", kind, k)
        return rows

    def discard(self) -> None:
        from ..outputs import remove

        remove(self.path)


def summarise(predicted: np.ndarray, actual: np.ndarray) -> dict:
    """Pearson r, least-squares slope through the origin of predicted on actual, and the
    median relative error |predicted − actual| / |actual|."""
    ok = np.isfinite(predicted) & np.isfinite(actual)
    p, a = predicted[ok], actual[ok]
    if p.size < 2:
        return {"count": int(p.size), "pearson": np.nan, "slope": np.nan, "median_rel_err": np.nan}
    nz = a != 0
    return {
        "count": int(p.size),
        "pearson": float(np.corrcoef(p, a)[0, 1]) if p.std() > 0 and a.std() > 0 else np.nan,
        "slope": float(p @ a / (a @ a)) if a @ a > 0 else np.nan,
        "median_rel_err": float(np.median(np.abs(p[nz] - a[nz]) / np.abs(a[nz]))) if nz.any() else np.nan,
    }


@dataclass
class Accuracy:
    """Per-set rows, per-(strategy, metric, form, method) summaries, retrain records."""

    rows: list = field(default_factory=list)
    summary: list = field(default_factory=list)
    retrains: dict = field(default_factory=dict)
    sets: list = field(default_factory=list)
    seconds: float = 0.0


def accuracy(source, *, strategies=DEFAULT_STRATEGIES, sizes=None, seed: int = 0, top_metric: str = "test_loss",
             top_sign: int = 1, tol: float = TOL, client=None, batch_sets: int = BATCH_SETS,
             checkpoint: "Checkpoint | None" = None, n_clusters: int = N_CLUSTERS) -> Accuracy:
    """Predicted vs actual metric changes for every strategy and size (batched retrains:
    ``batch_sets`` sets per batch, each batch saved to ``checkpoint`` when given)."""
    t0 = time.perf_counter()
    sets = make_sets(source, strategies=strategies, sizes=sizes, seed=seed, top_metric=top_metric, top_sign=top_sign,
                     n_clusters=n_clusters)
    named = {s.name: s.indices for s in sets}
    log.info("accuracy: %d removal sets, retraining them exactly (batches of %d)", len(sets), batch_sets)
    stats = set_statistics(source, named, client=client)  # one read of the data serves both
    truth = {}
    for b, part in enumerate(_batches(list(named), batch_sets)):
        fits = checkpoint.load("accuracy", b, part) if checkpoint else None
        if fits is None:
            fits = list(retrain(source, stats.subset(part), tol=tol, client=client).values())
            if checkpoint:
                checkpoint.save("accuracy", b, fits)
        truth.update({f.name: f for f in fits})
    est = group_effects(source, stats, client=client, extra={k: {"exact": r.delta} for k, r in truth.items()})
    result = Accuracy(retrains=truth, sets=sets)
    for s in sets:
        e = est[s.name]
        for metric in e.plugin:
            actual = e.plugin[metric]["exact"]
            for form in FORMS:
                for method in METHODS:
                    result.rows.append({
                        "set": s.name, "strategy": s.strategy, "size": s.size, "metric": metric, "form": form,
                        "method": method, "predicted": getattr(e, form)[metric][method], "actual": actual,
                        "converged": truth[s.name].converged, "certified": truth[s.name].certified,
                    })
    result.summary = _summary(result.rows, key=("strategy", "metric", "form", "method"))
    result.seconds = time.perf_counter() - t0
    return result


RETRAIN_COLUMNS = ["strategy", "sets", "certified", "rounding_floor", "not_converged", "max_rel_error_bound",
                   "max_rel_bound_with_fit", "max_passes"]


def retrain_table(acc: Accuracy, fit_bound: float = np.nan) -> list[dict]:
    """Per strategy, then for all sets: how the exact retrains ended, the largest proven
    bound on the relative error of their Δθ (``error_bound / ‖Δθ‖``: Δθ from the fitted θ̂),
    and the same with the fit's own bound added (``(error_bound + fit_bound) / ‖Δθ‖``: Δθ
    against the exact-arithmetic θ*_{−T} − θ*; NaN when the fit's bound is unknown)."""
    by = {}
    for s in acc.sets:
        by.setdefault(s.strategy, []).append(acc.retrains[s.name])
    by["all"] = list(acc.retrains.values())
    return [{"strategy": k, "sets": len(fits), "certified": sum(f.certified for f in fits),
             "rounding_floor": sum(f.stopped_at == "rounding floor" for f in fits),
             "not_converged": sum(not f.converged for f in fits),
             "max_rel_error_bound": max(f.rel_error_bound for f in fits),
             "max_rel_bound_with_fit": max((f.error_bound + fit_bound) / np.linalg.norm(f.delta) for f in fits),
             "max_passes": max(f.passes for f in fits)}
            for k, fits in by.items()]


def _summary(rows, *, key) -> list[dict]:
    groups = {}
    for r in rows:
        if r["converged"]:
            groups.setdefault(tuple(r[k] for k in key), []).append((r["predicted"], r["actual"]))
    out = []
    for k, pairs in groups.items():
        p, a = np.array(pairs, dtype=np.float64).T
        out.append({**dict(zip(key, k, strict=True)), **summarise(p, a)})
    return out


# ---------------------------------------------------------------------------- sweeps


def _subsample(corpus: Corpus, n: int, seed: int) -> Corpus:
    """The first-chunk-order random subsample of n training rows (the test split is kept)."""
    idx = np.sort(np.random.default_rng([seed, n]).choice(corpus.n, n, replace=False))
    t = corpus.train
    rows = max(1, t.X.chunks[0][0])
    train = Split(X=t.X[idx].rechunk({0: rows}), y=t.y[idx].rechunk(rows), ids=t.ids[idx].rechunk(rows))
    return Corpus(train=train, test=corpus.test, path=corpus.path, attrs=corpus.attrs,
                  fingerprint=f"{corpus.fingerprint}-sub{n}-{seed}")


def sweeps(corpus: Corpus, config, *, lams=None, fractions=(0.25, 0.5, 1.0), strategies=("random", "distance_cluster"),
           n_sizes: int = 10, seed: int = 0, client=None, checkpoint: "Checkpoint | None" = None) -> list[dict]:
    """Accuracy summaries (plug-in form) while varying λ, and while subsampling n at fixed d."""
    from ..pipeline import attribute

    lams = lams if lams is not None else [config.lam * f for f in (0.01, 0.1, 1.0, 10.0)]
    out = []
    configs = [("lam", lam, corpus, config.replace(lam=lam)) for lam in lams]
    configs += [("n", int(f * corpus.n), _subsample(corpus, int(f * corpus.n), seed) if f < 1 else corpus, config)
                for f in fractions]
    for k, (axis, value, c, cfg) in enumerate(configs):
        rows = checkpoint.load_rows("sweeps", k) if checkpoint else None
        if rows is None:
            res = attribute(c, cfg, client=client)
            sizes = default_sizes(c.n, count=n_sizes)
            acc = accuracy(res, strategies=strategies, sizes=sizes, seed=seed, client=client)
            rows = [{"axis": axis, "value": value, "lam": cfg.lam, "n": c.n, "d": c.d, **r}
                    for r in _summary([r for r in acc.rows if r["form"] == "plugin"], key=("metric", "method"))]
            if checkpoint:
                checkpoint.save_rows("sweeps", k, rows)
        out += rows
        log.info("sweep %s = %s done", axis, value)
    return out


# ---------------------------------------------------------------------------- poisoning


def poisoning(source, *, n_points: int = 100, seed: int = 0, client=None, batch_points: int = BATCH_SETS,
              checkpoint: "Checkpoint | None" = None) -> list[dict]:
    """Poisoning: for test point (x, y), fit with (x, y′) added (y′ = 1 − y; softmax: the next
    class, the family's ``other_label``); the change of x's own prediction (its logit; softmax:
    its margin for y′) when the poisoned row is removed again, predicted by IF and RIF at the
    poisoned fit, against the exact answer, e.g. ``z_xᵀ(θ̂ − θ_P)`` (removing the row restores
    the clean fit)."""
    corpus, model = source.corpus, source.model
    test = corpus.test
    idx = np.sort(np.random.default_rng([seed, 7]).choice(test.n, min(n_points, test.n), replace=False))
    x, y = dask.compute(test.X[idx], test.y[idx])
    x, y = kernels.to_numpy(x).astype(np.float64), kernels.to_numpy(y).astype(np.float64)
    flipped = model.family.other_label(y)
    fits, hessians = [], []
    for b, part in enumerate(_batches(list(range(len(idx))), batch_points)):
        names = [f"poison-{j}" for j in part]
        done = checkpoint.load("poisoning", b, names) if checkpoint else None
        if done is None:
            f, h = poisoned_fits(source, x[part], flipped[part], client=client)
            done = [dataclasses.replace(fit, name=name) for fit, name in zip(f, names, strict=True)]
            if checkpoint:
                checkpoint.save("poisoning", b, done, hessians=h)
            hessians += h
        else:
            hessians += checkpoint.hessians("poisoning", b)
        fits += done
    z = kernels.design(x, fit_intercept=model.fit_intercept)
    rows = []
    for j, (f, H) in enumerate(zip(fits, hessians, strict=True)):
        if not f.converged or H is None:
            rows.append({"test_row": int(idx[j]), "converged": False, "certified": False,
                         "rel_error_bound": f.rel_error_bound})
            continue
        h, s_if, s_rif = (float(v[0]) for v in model.family.self_influence(
            z[j : j + 1], flipped[j : j + 1], theta=f.theta, solve=lambda v, H=H: np.linalg.solve(H, v)))
        rows.append({
            "test_row": int(idx[j]), "label": int(y[j]), "converged": True, "leverage": h,
            "exact": float(model.family.prediction_change(z[j], flipped[j], before=f.theta, after=model.theta)),
            "if": s_if, "rif": s_rif,
            "passes": f.passes, "certified": f.certified, "rel_error_bound": f.rel_error_bound,
        })
    return rows


# ---------------------------------------------------------------------------- driver

EXPERIMENTS = ("accuracy", "sweeps", "poisoning")
SUMMARY_COLUMNS = ["strategy", "metric", "form", "method", "count", "pearson", "slope", "median_rel_err"]


def _held(run, client):
    """The run with its training rows laid out and kept in (worker) memory as ``rifscale
    run`` keeps them (its ``persist`` and ``device``), for the many passes of the retrains:
    otherwise every pass would read the rows from the store again."""
    import dataclasses

    from ..cluster import current_client
    from ..engine.partition import prepare_split

    config = run.manifest.get("config", {})
    train, _ = prepare_split(run.corpus.train, client=client if client is not None else current_client(),
                             persist=config.get("persist", "auto"), device=config.get("device", "cpu"))
    return dataclasses.replace(run, corpus=dataclasses.replace(run.corpus, train=train))


def run_validation(run_path, *, experiments=("accuracy",), strategies=DEFAULT_STRATEGIES, n_sizes: int = 40,
                   seed: int = 0, poison_points: int = 100, top_metric: str = "test_loss", top_sign: int = 1,
                   overwrite: bool = False, corpus=None, client=None, batch_sets: int = BATCH_SETS,
                   n_clusters: int = N_CLUSTERS) -> Path:
    """Run the chosen experiments on a finished run; write ``validation/`` (Zarr: the sets,
    the exact Δθ, retrain records) and ``report/`` (tables as JSON, figures, index.html).
    Both are written beside and moved into place when complete.

    The retrains run in batches of ``batch_sets`` sets (or poisoned points), each
    checkpointed in ``RUN/.validation.partial``: the same call after a kill reuses the
    finished batches and gives the same arrays, bit for bit."""
    import zarr

    from ..config import RunConfig
    from ..errors import ConfigError
    from ..engine.fit import describe
    from ..outputs import atomic_dirs
    from ..runs.reading import open_run
    from .report import accuracy_figure, poisoning_figure, sweeps_figure, write_json, write_report

    bad = [e for e in experiments if e not in EXPERIMENTS]
    if bad or not experiments:
        raise ConfigError(f"Unknown experiment(s) {bad}; choose from {EXPERIMENTS}.")
    if n_sizes < 1:
        raise ConfigError(f"n_sizes must be >= 1; got {n_sizes}.")
    if "poisoning" in experiments and poison_points < 1:
        raise ConfigError(f"--poison-points must be >= 1 (test points of the poisoning experiment); got {poison_points}.")
    run = _held(open_run(run_path, corpus=corpus), client)
    if "top_influence" in strategies and top_metric not in run.model.metrics:
        raise ConfigError(
            f"top_influence ranks by the IF scores of {top_metric!r}, which this run did not compute "
            f"(it has {list(run.model.metrics)}); choose --top-metric from those or rerun with --metrics."
        )
    _batches([], batch_sets)  # checks the batch size before any work
    outs = {name: run.path / name for name in ("validation", "report")}
    sections, records = [], {}
    key = {"run": run.manifest.get("job") or run.manifest["corpus"], "theta": hashlib.sha256(run.model.theta.tobytes()).hexdigest(),
           "experiments": list(experiments), "strategies": list(strategies), "n_sizes": n_sizes, "seed": seed,
           "poison_points": poison_points, "top_metric": top_metric, "top_sign": top_sign, "batch": batch_sets,
           **({"n_clusters": n_clusters} if "kmeans_cluster" in strategies else {})}
    with atomic_dirs(outs, overwrite=overwrite, kind="validate", inputs=[run.corpus.path], flag=None) as tmps:
        checkpoint = Checkpoint(checkpoint_of(run.path), key)
        vgroup = zarr.open_group(str(tmps["validation"]), mode="a")
        if "accuracy" in experiments:
            sizes = default_sizes(run.corpus.n, count=n_sizes)
            acc = accuracy(run, strategies=strategies, sizes=sizes, seed=seed, top_metric=top_metric,
                           top_sign=top_sign, client=client, batch_sets=batch_sets, checkpoint=checkpoint,
                           n_clusters=n_clusters)
            _store_sets(vgroup, acc)
            write_json(tmps["report"] / "accuracy_rows.json", acc.rows)
            write_json(tmps["report"] / "accuracy_summary.json", acc.summary)
            retrains = retrain_table(acc, run.manifest.get("fit", {}).get("error_bound", np.nan))
            write_json(tmps["report"] / "retrains.json", retrains)
            for form in FORMS:
                accuracy_figure(acc.rows, form, tmps["report"] / f"accuracy_{form}.png")
            total = retrains[-1]
            records["accuracy"] = {"seconds": acc.seconds, "tol": TOL,
                                   **{k: v for k, v in total.items() if k != "strategy"}}
            sections.append({
                "heading": "Accuracy: predicted vs actual (exact retrains)",
                "text": (f"{len(acc.sets)} removal sets ({', '.join(strategies)}; {len(sizes)} sizes from "
                         f"{sizes[0]} to {sizes[-1]} rows), each retrained exactly, at most {total['max_passes']} "
                         f"passes. Each retrained Δθ carries a proven bound on its error (docs/design.md §8.9): "
                         f"{total['certified']} certified to within {TOL:g} · |Δθ|, {total['rounding_floor']} "
                         f"stopped at the float64 rounding floor, {total['not_converged']} not converged; the "
                         f"largest bound is {total['max_rel_error_bound']:.1e} · |Δθ| (table below; per set in "
                         f"validation/exact). The Δθ are from the run's θ̂ (fit: "
                         f"{describe(run.manifest.get('fit', {}))}); with the fit's own bound added, against "
                         f"exact arithmetic, the largest is {total['max_rel_bound_with_fit']:.1e} · |Δθ|. "
                         "Slope is the least-squares slope through the origin of predicted on actual (1 is "
                         "perfect; IF's is typically < 1)."),
                "figures": ["accuracy_plugin.png", "accuracy_linear.png"],
                "tables": [(acc.summary, SUMMARY_COLUMNS), (retrains, RETRAIN_COLUMNS)],
            })
        if "sweeps" in experiments:
            config = RunConfig(**{k: (tuple(v) if k == "metrics" else v) for k, v in run.manifest["config"].items()})
            rows = sweeps(run.corpus, config, seed=seed, client=client, checkpoint=checkpoint)
            write_json(tmps["report"] / "sweeps.json", rows)
            sweeps_figure(rows, tmps["report"] / "sweeps.png")
            sections.append({"heading": "Sweeps over λ and n", "figures": ["sweeps.png"],
                             "tables": [(rows, ["axis", "value", "n", "d", "metric", "method", "count", "pearson",
                                                "slope", "median_rel_err"])]})
        if "poisoning" in experiments:
            rows = poisoning(run, n_points=poison_points, seed=seed, client=client, batch_points=batch_sets,
                             checkpoint=checkpoint)
            write_json(tmps["report"] / "poisoning.json", rows)
            poisoning_figure(rows, tmps["report"] / "poisoning.png")
            ok = [r for r in rows if r.get("converged")]
            exact = np.array([r["exact"] for r in ok])
            summary = [{"method": m, **summarise(np.array([r[m] for r in ok]), exact)} for m in ("if", "rif")]
            worst = max((r["rel_error_bound"] for r in rows), default=np.nan)
            records["poisoning"] = {"points": len(rows), "converged": len(ok), "summary": summary,
                                    "certified": sum(r["certified"] for r in rows), "max_rel_error_bound": worst}
            sections.append({"heading": "Poisoning", "figures": ["poisoning.png"],
                             "text": "Change of a test point's logit when its label-flipped copy is removed "
                                     "from the training set: predicted at the poisoned fit vs exact. "
                                     f"{records['poisoning']['certified']} of {len(rows)} poisoned fits certified "
                                     f"to within {TOL:g} · |θ_P − θ̂| (largest proven bound "
                                     f"{worst:.1e} · |θ_P − θ̂|).",
                             "tables": [(summary, ["method", "count", "pearson", "slope", "median_rel_err"])]})
        records["checkpoint_batches_reused"] = checkpoint.reused
        vgroup.attrs.update({"experiments": list(experiments), "records": records, "seed": seed})
        write_report(tmps["report"], title=f"rifscale validation: {run.path.name}",
                     intro=(f"n = {run.corpus.n}, d = {run.corpus.d}, lam = {run.model.lam}, "
                            f"intercept = {run.model.fit_intercept}; corpus {Path(run.manifest['corpus']['path'] or 'in-memory').name}."),
                     sections=sections)
    checkpoint.discard()  # everything is in place: the checkpoint has served
    return outs["report"] / "index.html"


def _store_sets(group, acc: Accuracy) -> None:
    """The removal sets (concatenated indices + offsets) and the exact Δθ of each."""
    names = [s.name for s in acc.sets]
    offsets = np.concatenate([[0], np.cumsum([s.size for s in acc.sets])]).astype(np.int64)
    group.create_array("sets/indices", data=np.concatenate([s.indices for s in acc.sets]).astype(np.int64))
    group.create_array("sets/offsets", data=offsets)
    group.create_array("exact/delta_theta", data=np.stack([acc.retrains[k].delta for k in names]))
    group["sets"].attrs.update({"names": names, "strategies": [s.strategy for s in acc.sets],
                                "meta": [s.meta for s in acc.sets]})
    group["exact"].attrs["retrains"] = [acc.retrains[k].record() for k in names]
