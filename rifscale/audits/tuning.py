"""``rifscale.tune``: choose λ by approximate leave-one-out (the maths: :mod:`rifscale.loo`),
in memory or as the resumable, locked job behind ``rifscale tune`` that writes a tune
directory; and reading that directory back.

Layout::

    TUNE/
      manifest.json   rifscale_tune = 1, status, created, corpus (path, fingerprint), config
                      (the fit settings; lam unused), tune (grid as given, criterion,
                      exact_loo, exact_at), job (what a rerun is matched by), n, d, p, grid
                      (the λ values, and E‖x‖² for the default grid), best (lam, position,
                      criterion, value, at_edge), exact (rows retrained, where), layout,
                      timings, versions
      table.parquet   one row per λ, ascending (rifscale.loo.COLUMNS)
      tune.png        the curves (rifscale.loo.plot_tuning)

The job works in the hidden sibling ``.TUNE.partial``: its manifest (status "partial",
the job key, the grid) and ``steps/NN.json``, one per finished λ (the table row and θ̂,
written atomically as each λ finishes). The same command after a kill reads them back
and fits only the λ values still missing, each from the nearest θ̂ fitted; a checkpoint
of another job (other grid, criterion, fit settings or corpus) is discarded, never
resumed. Finished, the directory is moved into place whole (:mod:`rifscale.outputs`);
the same command on it then does nothing, a different one is refused unless
``overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..errors import ConfigError, CorpusError, OutputExistsError
from ..corpus.model import Corpus, open_corpus
from ..jobs import job_differences, check_corpus_unchanged
from .loo import (EXACT_LOO, GRID_DECADES, Criterion, ExactAt, TuneConfig, TunePath, Tuning, finish, finite_or_none,
    plot_tuning, prepare, run_path, start_path)
from ..outputs import check_inputs, check_output, claim, mark, output_path, publish, remove
from ..runs.format import MANIFEST, json_default, _versions, write_run_json
from ..runs.reading import manifest_or_none
from ..cluster import entry_point

log = logging.getLogger(__name__)

#: Tune directory layout version.
FORMAT = 1
TABLE, PLOT, STEPS, BEST_EXACT = "table.parquet", "tune.png", "steps", "best-exact.json"


@entry_point
def tune(corpus: Corpus | str | os.PathLike, lams=None, *, out=None, criterion: Criterion = "logloss",
         exact_loo: int = EXACT_LOO, exact_at: ExactAt = "best", config: RunConfig | None = None, client=None,
         overwrite: bool = False, **overrides) -> Tuning:
    """Choose λ by approximate leave-one-out over a grid (docs/design.md §8.10).

    Parameters
    ----------
    corpus : Corpus or path of a Zarr corpus (with a test split)
    lams : sequence of float > 0, optional
        The grid; default 13 values log-spaced over 1e-3..1e3 × E‖x‖².
    out : path, optional
        Write the tune directory there (manifest.json, table.parquet, tune.png) as a
        resumable, locked job: a rerun after a kill continues from the last finished λ;
        a complete directory of the same job is read back, not recomputed.
    criterion : "logloss", "error" or "brier"
        The approximate-LOO loss that picks λ.
    exact_loo : int
        A seeded sample of this many training rows is retrained exactly without each
        row (certified), at the chosen λ or, ``exact_at="all"``, at every λ.
    exact_at : "best" or "all"
        Where the exact leave-one-out sample is retrained.
    config : RunConfig, optional
        Fit settings (``lam`` is ignored).
    client : distributed.Client, optional
        Defaults to the active client, if any; else dask's threaded scheduler.
    overwrite : bool, default False
        Replace ``out`` if it is a tune directory of another job.
    **overrides
        Replace single fields of ``config`` (``fit_intercept=False``).

    Returns
    -------
    Tuning
        ``.lam`` (the chosen λ), ``.table`` (one row per λ), ``.plot()``.

    Examples
    --------
    >>> import rifscale
    >>> from rifscale.demo import demo_corpus
    >>> tuned = rifscale.tune(demo_corpus(), [0.1, 1.0, 10.0], exact_loo=0)
    >>> tuned.lam in (0.1, 1.0, 10.0), len(tuned.table)
    (True, 3)
    """
    settings = TuneConfig(lams=None if lams is None else tuple(np.ravel(lams).tolist()), criterion=criterion,
                          exact_loo=exact_loo, exact_at=exact_at)
    config = (config or RunConfig()).replace(**overrides) if overrides else (config or RunConfig())
    corpus = corpus if isinstance(corpus, Corpus) else open_corpus(corpus)
    if out is not None:
        return TuneJob(corpus, out, settings, config, overwrite=overwrite).run(client=client)
    if client is None:
        from ..cluster import current_client

        client = current_client()
    prepared, layout = prepare(corpus, config, client=client)
    path = start_path(prepared, config, settings)
    run_path(prepared, config, settings, path, layout=layout, client=client)
    table, best = finish(path, settings)
    return Tuning(table=table, lam=path.lams[best], criterion=settings.criterion)


def job_key(corpus: Corpus, config: RunConfig, settings: TuneConfig) -> dict:
    """What makes two tunes the same job: the fit settings (λ aside), the tune settings
    (the grid as given) and the corpus fingerprint."""
    cfg = config.to_dict()
    cfg.pop("lam")
    key = {"config": cfg, "tune": settings.to_dict(), "corpus_fingerprint": corpus.fingerprint}
    return json.loads(json.dumps(key, default=json_default))


def checkpoint_of(out) -> Path:
    """Where ``rifscale tune`` checkpoints ``out``: ``.OUT.partial`` beside it."""
    out = output_path(out, "tune")
    return out.with_name(f".{out.name}.partial")


class TuneJob:
    """A tune job, checked on construction (inputs, existing output; no lock, no compute)
    so that the CLI can refuse before it starts a cluster; :meth:`run` checks again under
    the output's lock and does the work."""

    def __init__(self, corpus: Corpus, out, settings: TuneConfig, config: RunConfig, *, overwrite: bool = False):
        self.out = output_path(out, "tune")
        self.corpus, self.settings, self.config, self.overwrite = corpus, settings, config, overwrite
        check_inputs(self.out, [corpus.path])
        self.key = job_key(corpus, config, settings)
        self.partial = checkpoint_of(self.out)
        self.done = self._existing()

    def _existing(self) -> dict | None:
        out = self.out
        if not (out.exists() or out.is_symlink()):
            return None
        done = manifest_or_none(out)
        done = done if done is not None and done.get("status") == "complete" and "rifscale_tune" in done else None
        if done is not None and done.get("job") == self.key:
            return done
        if done is not None and not self.overwrite:
            changes = "; ".join(job_differences(done.get("job") or {}, self.key)[:4])
            raise OutputExistsError(f"{str(out)!r} is a complete tune made by a different job ({changes}). Choose "
                                    "another --out, or pass --overwrite to replace it.")
        check_output(out, overwrite=self.overwrite)
        return None

    def run(self, *, client=None) -> Tuning:
        out, partial = self.out, self.partial
        with claim(out):
            if self._existing() is not None:
                log.info("%s is already complete (same job): nothing to do", out)
                return open_tune(out)
            path = self._resume()
            if path is None:
                remove(partial)
                if partial.exists() or partial.is_symlink():
                    raise OutputExistsError(f"{str(partial)!r} exists and was not made by rifscale; it is where this "
                                            "tune checkpoints its steps. Move it away, or choose another --out.")
                partial.mkdir()
                mark(partial, "tune")
                (partial / STEPS).mkdir()
            try:
                tuning = self._compute(path, client=client)
            except Exception:
                if not any((partial / STEPS).glob("*.json")):  # nothing worth resuming
                    remove(partial)
                raise
            publish(partial, out, overwrite=self.overwrite)
        return tuning

    def _compute(self, path: TunePath | None, *, client) -> Tuning:
        from ..cluster import current_client

        client = client if client is not None else current_client()
        partial, settings, config = self.partial, self.settings, self.config
        t0 = time.perf_counter()
        corpus, layout = prepare(self.corpus, config, client=client)
        resumed = path is not None and bool(path.steps)
        if path is None:
            path = start_path(corpus, config, settings)
            write_run_json(partial / MANIFEST, {"rifscale_tune": FORMAT, "status": "partial", "job": self.key,
                                             "lams": list(path.lams), "scale": path.scale, "radius": path.radius})
        elif resumed:
            log.info("resuming %s: %d of %d lambda values already done", self.out, len(path.steps), len(path.lams))

        def save(lam, row):
            name = BEST_EXACT if lam is None else f"{path.lams.index(lam):03d}.json"
            write_run_json(partial / STEPS / name, row)

        run_path(corpus, config, settings, path, layout=layout, client=client, on_step=save)
        table, best = finish(path, settings)
        lam = path.lams[best]
        tuning = Tuning(table=table, lam=lam, criterion=settings.criterion, path=self.out)
        table.to_parquet(partial / TABLE, engine="pyarrow", index=False)
        _save_plot(tuning, partial / PLOT)
        self._check_corpus_unchanged()
        manifest = {
            "rifscale_tune": FORMAT, "status": "complete",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "corpus": {"path": self.corpus.path, "fingerprint": self.corpus.fingerprint},
            "config": {k: v for k, v in config.to_dict().items() if k != "lam"}, "tune": settings.to_dict(),
            "job": self.key,
            "n": self.corpus.n, "d": self.corpus.d, "p": self.corpus.d + int(config.fit_intercept),
            "grid": {"lams": list(path.lams), "scale": path.scale,
                     "default": None if path.scale is None else f"{len(path.lams)} values over "
                                f"1e{GRID_DECADES[0]:+g}..1e{GRID_DECADES[1]:+g} x E|x|^2"},
            "best": {"lam": lam, "position": best, "criterion": settings.criterion,
                     "value": float(table[f"loo_{settings.criterion}"].iloc[best]),
                     "at_edge": len(path.lams) > 1 and best in (0, len(path.lams) - 1)},
            "exact": {"rows": settings.exact_loo, "at": settings.exact_at},
            "layout": layout, "timings": {"total": time.perf_counter() - t0,
                                          "steps": float(table["seconds"].sum())},
            "versions": _versions(),
        }
        if resumed:
            manifest["resumed"] = True
        for name in os.listdir(partial / STEPS):
            os.remove(partial / STEPS / name)
        os.rmdir(partial / STEPS)
        write_run_json(partial / MANIFEST, manifest)
        return Tuning(table=table, lam=lam, criterion=settings.criterion, manifest=manifest, path=self.out)

    def _resume(self) -> TunePath | None:
        """The steps of an interrupted tune of the same job, or None."""
        state = manifest_or_none(self.partial)
        if state is not None and "rifscale_tune" not in state:
            raise OutputExistsError(f"{str(self.partial)!r} is the checkpoint of another rifscale command (not a tune) "
                                    "with the same output name; finish that command first, or choose another --out.")
        if state is None or state.get("status") != "partial" or state.get("job") != self.key:
            if state is not None:
                log.info("discarding the checkpoint %s: it was made by another job", self.partial)
            return None
        lams = tuple(float(v) for v in state["lams"])
        path = TunePath(lams=lams, scale=state.get("scale"), radius=state.get("radius"))
        for file in sorted((self.partial / STEPS).glob("*.json")):
            try:
                row = json.loads(file.read_text())
            except (OSError, ValueError):
                continue  # a step cut short is recomputed
            if file.name == BEST_EXACT:
                path.best_exact = row
            elif row.get("lam") in lams:
                path.steps[row["lam"]] = row
                path.radius = path.radius or finite_or_none(row.get("row_norm_max"))
        return path

    def _check_corpus_unchanged(self) -> None:
        check_corpus_unchanged(self.corpus, self.key["corpus_fingerprint"], self.partial, what="tune")


def _save_plot(tuning: Tuning, file: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no backend, no global figure state

    fig = Figure(figsize=(12, 3.6))
    plot_tuning(tuning, axes=fig.subplots(1, 3))
    fig.suptitle(f"rifscale tune: λ = {tuning.lam:.4g} by approximate leave-one-out {tuning.criterion}")
    fig.tight_layout()
    fig.savefig(file, dpi=110)


def open_tune(path) -> Tuning:
    """Read a complete tune directory back.

    Parameters
    ----------
    path : str or os.PathLike
        A directory written by ``rifscale tune`` or by :func:`rifscale.tune` with ``out``.

    Returns
    -------
    Tuning
        As :func:`rifscale.tune` returns it: ``.lam``, ``.table``, ``.plot()``.

    Examples
    --------
    >>> import rifscale
    >>> from rifscale.demo import demo_corpus
    >>> tuned = rifscale.tune(demo_corpus(), [0.1, 1.0], exact_loo=0, out="example-tune", overwrite=True)
    >>> rifscale.open_tune("example-tune").lam == tuned.lam
    True
    """
    import pandas as pd

    path = Path(path)
    manifest = manifest_or_none(path)
    if manifest is None or "rifscale_tune" not in manifest:
        raise ConfigError(f"{str(path)!r} is not a rifscale tune directory (no tune manifest.json); make one with "
                          "`rifscale tune CORPUS --out TUNE`.")
    if manifest.get("status") != "complete":
        raise ConfigError(f"The tune at {str(path)!r} is not complete (status {manifest.get('status')!r}); run the "
                          "same `rifscale tune` command again to finish it.")
    table = pd.read_parquet(path / TABLE, engine="pyarrow")
    return Tuning(table=table, lam=float(manifest["best"]["lam"]), criterion=manifest["best"]["criterion"],
                  manifest=manifest, path=path)


def tuned_lam(tune, *, corpus: Corpus | None = None, fit_intercept: bool | None = None) -> float:
    """The λ a tune directory chose, checked to belong to ``corpus`` (same fingerprint)
    and to the same intercept setting: what ``rifscale run --lam auto --tune TUNE`` runs at."""
    tuning = tune if isinstance(tune, Tuning) else open_tune(tune)
    m = tuning.manifest
    if corpus is not None and m.get("corpus", {}).get("fingerprint") != corpus.fingerprint:
        raise CorpusError(
            f"The tune {str(tuning.path)!r} was made on another corpus (fingerprint "
            f"{m.get('corpus', {}).get('fingerprint')}) than {corpus.path or 'this one'!r} ({corpus.fingerprint}). "
            "Run `rifscale tune` on this corpus, or give --lam."
        )
    tuned_icpt = m.get("config", {}).get("fit_intercept")
    if fit_intercept is not None and tuned_icpt is not None and tuned_icpt != fit_intercept:
        raise ConfigError(
            f"The tune {str(tuning.path)!r} chose lam for a model {'with' if tuned_icpt else 'without'} an intercept; "
            f"this run is {'with' if fit_intercept else 'without'} one. Tune with the same --no-intercept setting."
        )
    return float(tuning.lam)
