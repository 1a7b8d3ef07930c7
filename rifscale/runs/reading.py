"""Reading a run directory back (layout version 2, docs/design.md §6): its manifest, its
model (θ̂, the factor, the test subset) and its stored arrays as a :class:`Run`, which every
estimate and export accepts in place of an in-memory result."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import zarr

from .format import MANIFEST
from ..corpus.model import Corpus, open_corpus
from ..engine.factor import Factor
from ..engine.family import family_from_record
from ..engine.kernels.logistic import SCORE_COLUMNS
from ..engine.model import FittedModel, MetricAtOptimum
from ..errors import ConfigError, CorpusError
from ..outputs import filesystem, is_url, output_path
from ..outputs import local_path

def run_location(path):
    """A run (or a directory of runs) as a path object: a ``pathlib.Path`` for local paths
    and ``file://`` URLs, a ``UPath`` over fsspec for other URLs (read-only use)."""
    from upath import UPath

    if isinstance(path, UPath):
        return path
    if is_url(path):
        filesystem(path)  # a missing fsspec backend: one error naming the package
    return UPath(local_path(path))


def read_manifest(path) -> dict:
    mpath = run_location(path) / MANIFEST
    if not mpath.is_file():
        raise ConfigError(f"{str(path)!r} is not a rifscale run (no {MANIFEST}); create one with `rifscale run`.")
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError as exc:
        raise ConfigError(f"{str(mpath)!r} is not valid JSON ({exc}); the run is damaged: rerun it.") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"{str(mpath)!r} is not a JSON object (it holds a {type(manifest).__name__}); the run is "
                          "damaged: rerun it.")
    return manifest


def manifest_or_none(path: Path) -> dict | None:
    """The manifest at ``path`` if it is a readable JSON object, else None."""
    try:
        doc = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def checkpoint_of(out) -> Path:
    """Where ``rifscale run`` checkpoints the stages of ``out``: ``.OUT.partial`` beside it."""
    out = output_path(out, "run")
    return out.with_name(f".{out.name}.partial")


def read_theta(path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(run_location(path) / "model" / "theta"), mode="r")[...])


@dataclass(frozen=True)
class Run:
    """A finished run read back from disk."""

    path: Path
    manifest: dict
    corpus: Corpus
    model: FittedModel

    def array(self, name: str) -> zarr.Array:
        """A stored array by its run name, e.g. ``"scores/rif_test_loss"`` (format-1
        runs: ``"scores/rif/test_loss"``; either spelling reads either format)."""
        path = self.path / name
        if not path.exists():
            stage, _, rest = name.partition("/")
            for old, new in (("if/", "if_"), ("rif/", "rif_"), ("if_", "if/"), ("rif_", "rif/")):
                if rest.startswith(old) and (self.path / stage / (new + rest[len(old):])).exists():
                    path = self.path / stage / (new + rest[len(old):])
                    break
        return zarr.open_array(str(path), mode="r")

    @property
    def ids(self) -> np.ndarray:
        """The corpus ids of the training rows, in row order."""
        if (self.path / "scores" / "sample").exists():
            return np.asarray(self.array("scores/sample")[...])
        return np.asarray(self.corpus.train.ids.compute())

    def to_dataframe(self, columns=None):
        """The per-sample scores as a pandas DataFrame indexed by the corpus ids (``id``):
        prob, residual, alpha, leverage, self_if, self_rif, flags, if_<metric>,
        rif_<metric> (or the ``columns`` named). Reads them into memory: about
        (7 + 2M) x 8 bytes per training row."""
        cols = columns or score_columns(self.model.metrics, self.model.family.score_columns)
        return _frame(self.ids, {c: self.array(f"scores/{c}") for c in cols})

    def groups_dataframe(self):
        """The stored group estimates (``rifscale groups``) as a long DataFrame: set x
        method x metric x form (see :func:`rifscale.estimates.groups.estimates_frame`)."""
        from ..estimates.groups import estimates_frame

        if not (self.path / "groups").is_dir():
            raise ConfigError(f"The run at {str(self.path)!r} has no groups yet; run `rifscale groups` first.")
        return estimates_frame(zarr.open_group(str(self.path / "groups"), mode="r").attrs["estimates"])

    def _repr_html_(self) -> str:
        from ..engine.fit import describe

        m = self.manifest
        fit, counts = m.get("fit", {}), m.get("counts", {})
        return summary_html(f"rifscale run {self.path.name}", {
            "path": str(self.path), "status": m.get("status"), "created": m.get("created"),
            "n × d": f"{m.get('n')} × {m.get('d')}", "λ": m["config"]["lam"],
            "intercept": m["config"]["fit_intercept"], "metrics": ", ".join(self.model.metrics),
            "fit": describe(fit),
            "leverage": f"mean {counts.get('mean_leverage', float('nan')):.3g}, max {counts.get('max_leverage', float('nan')):.3g}",
            "flagged": counts.get("flagged_low_margin"),
            "corpus": f"{m['corpus']['path']} ({m['corpus']['fingerprint']})",
        })

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Run({str(self.path)!r}: n = {m.get('n')}, d = {m.get('d')}, lam = {m['config']['lam']}, "
                f"metrics = {list(self.model.metrics)}, status = {m.get('status')!r})")


def summary_html(title: str, rows: dict) -> str:
    """A small two-column HTML table (notebook reprs)."""
    import html

    body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                   f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<div><strong>{html.escape(title)}</strong><table>{body}</table></div>"


def score_columns(metrics, columns=SCORE_COLUMNS) -> list[str]:
    """The per-sample columns of a run, in order (``columns``: the model family's ``score_columns``)."""
    base = ["flags" if c == "flag" else c for c in columns]
    return [*base, *(f"if_{m}" for m in metrics), *(f"rif_{m}" for m in metrics)]


def _frame(ids, columns: dict):
    import pandas as pd

    index = pd.Index(np.asarray(ids), name="id")
    return pd.DataFrame({name: np.asarray(col[...]) for name, col in columns.items()}, index=index)


def read_model(path: Path, cfg: dict, manifest: dict | None = None) -> FittedModel:
    group = zarr.open_group(str(run_location(path) / "model"), mode="r")

    def read(name):
        return np.asarray(group[name][...])

    L = read("cholesky")
    if "cholesky_inverse" in group:
        linv = read("cholesky_inverse")
    else:  # runs written before the inverse was stored
        linv = scipy.linalg.solve_triangular(L, np.eye(L.shape[0]), lower=True, check_finite=False)
    factor = (manifest or {}).get("factor", {})
    return FittedModel(
        theta=read("theta"),
        lam=cfg["lam"],
        fit_intercept=cfg["fit_intercept"],
        factor=Factor(L=L, linv=linv, backend=factor.get("backend", "numpy"), worker=factor.get("worker")),
        test_subset=read("test_subset"),
        metric=MetricAtOptimum(names=tuple(cfg["metrics"]), values=read("metric_values"),
                               grads=read("metric_gradients")),
        leverage_threshold=cfg["leverage_threshold"],
        family=family_from_record((manifest or {}).get("model")),
    )


def open_run(path, *, corpus: Corpus | str | os.PathLike | None = None) -> Run:
    """Open a complete run; the corpus is re-opened (from the manifest unless given, as a
    path or a :class:`rifscale.Corpus`) and must still have the fingerprint the run was
    made from.

    Parameters
    ----------
    path : str or os.PathLike
        A run directory made by ``rifscale run`` or :func:`rifscale.write_run`; may be an
        fsspec URL (``s3://bucket/runs/today``).
    corpus : str, os.PathLike or Corpus, optional
        The corpus, if it moved since the run (default: the path in the manifest).

    Returns
    -------
    Run
        ``.manifest`` (dict), ``.corpus``, ``.model`` (θ̂, the factor, the test subset),
        ``.ids``, ``.array(name)`` (a stored Zarr array, e.g. ``"scores/rif_test_loss"``),
        ``.to_dataframe()`` (the scores, indexed by id) and ``.groups_dataframe()``. It
        can be passed wherever a result is: :func:`rifscale.group_effects`,
        :func:`rifscale.retrain`.

    Raises
    ------
    ConfigError
        The run is not complete.
    CorpusError
        The corpus is gone or is not the one the run was made from.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_data_path
    >>> data = np.load(demo_data_path())  # the embedded Fashion-MNIST pair
    >>> corpus = rifscale.ingest("example-corpus.zarr", train_X=data["train_X"], train_y=data["train_y"],
    ...                          test_X=data["test_X"], test_y=data["test_y"], overwrite=True)
    >>> _ = rifscale.attribute(corpus, lam=1.0).to_zarr("example-run", overwrite=True)
    >>> run = rifscale.open_run("example-run")
    >>> run.manifest["n"], run.to_dataframe().index.name
    (1000, 'id')
    >>> est = rifscale.group_effects(run, {"first10": range(10)})   # a stored run, as a fresh result
    """
    path = run_location(path)
    manifest = read_manifest(path)
    if manifest.get("status") != "complete":
        raise ConfigError(f"The run at {str(path)!r} is not complete (status {manifest.get('status')!r}); rerun it.")
    corpus_path = corpus if corpus is not None else manifest["corpus"]["path"]
    if corpus_path is None:
        raise ConfigError(
            f"The run at {str(path)!r} was made from in-memory arrays, not a corpus on disk; "
            "pass the same data again: open_run(path, corpus=Corpus.from_arrays(...))."
        )
    if corpus is None and not is_url(corpus_path) and not os.path.exists(corpus_path):
        raise CorpusError(
            f"The corpus the run at {str(path)!r} was made from, {corpus_path!r}, is not there any more (moved or "
            "deleted); pass --corpus with its new path (Python: open_run(path, corpus=...))."
        )
    c = corpus_path if isinstance(corpus_path, Corpus) else open_corpus(corpus_path)
    if c.fingerprint != manifest["corpus"]["fingerprint"]:
        raise CorpusError(
            f"The corpus at {str(corpus_path)!r} is not the one this run was made from (fingerprint "
            f"{c.fingerprint} != {manifest['corpus']['fingerprint']}); rerun `rifscale run` on it."
        )
    cfg = dict(manifest["config"], metrics=manifest["metrics"])
    return Run(path=path, manifest=manifest, corpus=c, model=read_model(path, cfg, manifest))
