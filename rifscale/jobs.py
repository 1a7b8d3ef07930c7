"""The batch jobs behind ``rifscale run`` and ``rifscale groups``: resumable, locked,
idempotent. They join the pipeline, the estimates and the run format, so they sit above
all three and none of those imports them (``rifscale.runs.format`` writes and reads run
directories; ``rifscale.pipeline`` and ``rifscale.estimates.groups`` know nothing of jobs)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from .config import RunConfig
from .engine.family import family_from_record
from .errors import ConfigError, CorpusError, OutputExistsError
from .estimates.groups import GroupEstimate, group_effects, normalise_sets, store_groups
from .corpus.model import Corpus, corpus_fingerprint, open_corpus
from .outputs import (atomic_dir, check_inputs, check_output, claim, mark, output_path, publish, remove,
    remove_within)
from .runs.format import FORMAT, MANIFEST, json_default, build_manifest, write_run_json, write_model, write_scores
from .runs.reading import Run, manifest_or_none, read_model, read_theta, checkpoint_of, open_run, read_manifest
from .cluster import entry_point

log = logging.getLogger(__name__)


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def job_key(corpus: Corpus, config: RunConfig, *, warm_start=None) -> dict:
    """What makes two runs the same job: the config, the corpus fingerprint, the contents of
    a test-subset file, and the run a fit started from."""
    key = {"config": config.to_dict(), "corpus_fingerprint": corpus.fingerprint}
    if config.test_subset not in ("paper", "all"):
        key["test_subset_sha256"] = _file_sha256(config.test_subset)
    if warm_start is not None:
        key["warm_start"] = read_manifest(warm_start).get("corpus", {}) | {
            "theta_sha256": hashlib.sha256(np.ascontiguousarray(read_theta(warm_start)).tobytes()).hexdigest()}
    return json.loads(json.dumps(key, default=json_default))


def job_differences(a: dict, b: dict) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += [f"{k}.{d}" for d in job_differences(a[k], b[k])]
        elif a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return out


def warm_start_theta(previous, corpus: Corpus, config: RunConfig) -> np.ndarray:
    """θ̂ of a previous run, checked to fit this corpus and config (the nightly case: the
    corpus grew a little, same features)."""
    manifest = read_manifest(previous)
    if manifest.get("status") != "complete":
        raise ConfigError(f"--warm-start {str(previous)!r} is not a complete run (status {manifest.get('status')!r}).")
    theta = read_theta(previous)
    family = family_from_record(manifest.get("model"))
    if config.model != "auto" and family.name != config.model:
        raise ConfigError(
            f"--warm-start {str(previous)!r} is a {family.name} run; this run fits the {config.model} model. "
            "Warm-start only from a run of the same model."
        )
    p = family.n_params(corpus.d, fit_intercept=config.fit_intercept)
    if theta.shape != (p,) or manifest["config"]["fit_intercept"] != config.fit_intercept:
        raise ConfigError(
            f"--warm-start {str(previous)!r} has theta of shape {theta.shape} (d = {manifest['d']}, intercept "
            f"{manifest['config']['fit_intercept']}); this run needs ({p},). Warm-start only from a run on the "
            "same features with the same intercept setting."
        )
    return theta


@entry_point
def run_job(corpus, out, config: RunConfig | None = None, *, overwrite: bool = False, client=None,
            progress: bool = False, warm_start=None) -> dict:
    """Fit, factor, score and write the run ``out`` as a resumable, idempotent batch job.

    This is ``rifscale run``; the command line's batch-job guarantees (docs/guide/batch-jobs.md)
    are this function's.

    * ``out`` complete and made by the same job (same config, corpus fingerprint and
      warm start): nothing is computed; the manifest is returned with
      ``"already_complete": True``.
    * ``out`` complete but a different job: refused unless ``overwrite``.
    * a ``.OUT.partial`` left by a killed run of the same job: its finished stages are
      reused (the model stage: fit, factor, metrics); the scores are recomputed.
    * ``warm_start``: a previous run whose θ̂ starts the Newton fit (recorded in the job).

    Parameters
    ----------
    corpus : str, os.PathLike or Corpus
        The corpus (a path or URL that :func:`rifscale.open_corpus` opens).
    out : str or os.PathLike
        The run directory to create (a local or shared file system).
    config : RunConfig, optional
        Default ``RunConfig()``.
    overwrite : bool, default False
        Replace ``out`` if it is a complete run of another job (only a run rifscale made).
    client : distributed.Client, optional
        Defaults to the active client, if any.
    progress : bool, default False
        Show a progress bar of the scores pass.
    warm_start : str or os.PathLike, optional
        A previous run whose θ̂ starts the fit.

    Returns
    -------
    dict
        The manifest written (with ``"resumed"`` naming the stage reused, if any), or
        the existing one with ``"already_complete": True``.

    Raises
    ------
    OutputExistsError
        ``out`` is a complete run of another job, or not rifscale's.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_data_path
    >>> data = np.load(demo_data_path())  # the embedded Fashion-MNIST pair
    >>> corpus = rifscale.ingest("example-corpus.zarr", train_X=data["train_X"], train_y=data["train_y"],
    ...                          test_X=data["test_X"], test_y=data["test_y"], overwrite=True)
    >>> manifest = rifscale.run_job(corpus, "example-job", rifscale.RunConfig(lam=1.0), overwrite=True)
    >>> manifest["status"], manifest.get("already_complete", False)
    ('complete', False)
    >>> again = rifscale.run_job(corpus, "example-job", rifscale.RunConfig(lam=1.0))  # the same job: nothing to do
    >>> again["already_complete"]
    True
    """
    return Job(corpus, out, config, overwrite=overwrite, warm_start=warm_start).run(client=client, progress=progress)


class Job:
    """A run job, checked on construction (inputs, existing output; no lock, no compute)
    so that the CLI can refuse before it starts a cluster; :meth:`run` checks again
    under the output's lock and does the work."""

    def __init__(self, corpus, out, config: RunConfig | None = None, *, overwrite: bool = False, warm_start=None):
        self.out = output_path(out, "run")
        self.config = config or RunConfig()
        self.corpus = corpus if isinstance(corpus, Corpus) else open_corpus(corpus)
        self.overwrite, self.warm_start = overwrite, warm_start
        check_inputs(self.out, [self.corpus.path, warm_start])
        self.theta0 = warm_start_theta(warm_start, self.corpus, self.config) if warm_start is not None else None
        self.key = job_key(self.corpus, self.config, warm_start=warm_start)
        self.partial = checkpoint_of(self.out)
        self.done = self._existing()

    def _existing(self) -> dict | None:
        """The manifest of ``out`` if it is this job, complete; None if there is nothing
        (or something ``overwrite`` may replace); otherwise refuse."""
        out = self.out
        if not (out.exists() or out.is_symlink()):
            return None
        done = _complete_manifest(out)
        if done is not None and done.get("job") == self.key:
            return done
        if done is not None and not self.overwrite:
            why = ("it was written from the Python API (write_run), not by this command" if done.get("job") is None
                   else f"it was made by a different job ({'; '.join(job_differences(done['job'], self.key)[:4])})")
            raise OutputExistsError(
                f"{str(out)!r} is a complete run, but {why}. Choose another --out, or pass --overwrite to replace it."
            )
        check_output(out, overwrite=self.overwrite)  # not asked to, or not rifscale's: refused
        return None

    def run(self, *, client=None, progress: bool = False) -> dict:
        out, partial, key = self.out, self.partial, self.key
        with claim(out):
            done = self._existing()  # again, under the lock: another job may have finished meanwhile
            if done is not None:
                log.info("%s is already complete (same config and corpus): nothing to do", out)
                return done | {"already_complete": True}
            state = _partial_state(partial, key)
            if state is None:
                remove(partial)
                if partial.exists() or partial.is_symlink():
                    raise OutputExistsError(
                        f"{str(partial)!r} exists and was not made by rifscale; it is where this run checkpoints "
                        "its stages. Move it away, or choose another --out."
                    )
                partial.mkdir()
                mark(partial, "run")
                state = {"rifscale_run": FORMAT, "status": "partial", "job": key, "stages": {}}
                write_run_json(partial / MANIFEST, state)
            try:
                manifest = self._stages(state, client=client, progress=progress)
                self._check_corpus_unchanged()
            except Exception:
                if not state["stages"]:  # nothing worth resuming: a failed run leaves nothing
                    remove(partial)
                raise
            write_run_json(partial / MANIFEST, manifest)
            publish(partial, out, overwrite=self.overwrite)
        return manifest

    def _stages(self, state: dict, *, client, progress: bool) -> dict:
        """Compute (or reuse from ``state``) the stages in ``self.partial``; the manifest."""
        from .pipeline import attribute, rescore

        out, partial, key, config = self.out, self.partial, self.key, self.config
        resumed = None
        if "model" in state["stages"]:
            stage = state["stages"]["model"]
            model = read_model(partial, stage["config"], stage)  # its factor and model family records
            corpus, scores, layout = rescore(self.corpus, config, model, client=client)
            fit_record, timings = stage["fit"], dict(stage["timings"])
            resumed = "model"
            log.info("resuming %s: reusing the finished fit (model stage) of an interrupted run", out)
        else:
            result = attribute(self.corpus, config, client=client, theta0=self.theta0)
            corpus, model, scores, layout = result.corpus, result.model, result.scores, result.layout
            fit_record, timings = result.fit.record(), dict(result.timings)
            # a model directory the manifest does not list (killed between its move and the
            # manifest update) is discarded: the stage is recorded only once it is whole
            remove_within(partial, "model")
            remove_within(partial, ".model.partial")
            staging = partial / ".model.partial"
            staging.mkdir()
            write_model(staging, model)
            os.replace(staging / "model", partial / "model")  # the stage appears whole or not at all
            remove_within(partial, ".model.partial")
            state["stages"]["model"] = {"fit": fit_record, "timings": timings, "layout": layout,
                                        "config": config.to_dict(),
                                        "factor": {"backend": model.factor.backend, "worker": model.factor.worker},
                                        **({"model": model.family.record()} if model.family.record() else {})}
            write_run_json(partial / MANIFEST, state)
        remove_within(partial, "scores")  # a killed scores pass: recompute it all
        t = time.perf_counter()
        counts = write_scores(partial, corpus, model, scores, progress=progress)
        timings["scores"] = time.perf_counter() - t
        manifest = build_manifest(corpus, config, model, fit=fit_record, layout=layout, timings=timings,
                             status="complete", job=key)
        manifest["counts"] = counts
        if self.warm_start is not None:
            manifest["warm_start"] = {"run": os.path.abspath(self.warm_start), **key["warm_start"]}
        if resumed:
            manifest["resumed"] = resumed
            manifest["factor"] = state["stages"]["model"]["factor"]
        return manifest

    def _check_corpus_unchanged(self) -> None:
        check_corpus_unchanged(self.corpus, self.key["corpus_fingerprint"], self.partial, what="run")


def _complete_manifest(path: Path) -> dict | None:
    manifest = manifest_or_none(path)
    return manifest if manifest is not None and manifest.get("status") == "complete" else None


def _partial_state(partial: Path, key: dict) -> dict | None:
    """The checkpoint of an interrupted run of the same job, or None."""
    state = manifest_or_none(partial)
    if state is None or state.get("status") != "partial" or state.get("job") != key:
        return None
    if "model" in state.get("stages", {}) and not (partial / "model").is_dir():
        return None
    return state


def run_groups(run_path, sets, *, corpus=None, overwrite: bool = False, client=None,
               by_id: bool = False) -> dict[str, GroupEstimate]:
    """The job behind ``rifscale groups`` (``run_path``: a path or an open
    :class:`~rifscale.runs.reading.Run`): open the run, check the sets, claim
    ``RUN/groups`` (refused before any work if it exists and ``overwrite`` is not given),
    estimate and write it."""
    run = run_path if isinstance(run_path, Run) else open_run(run_path, corpus=corpus)
    sets = normalise_sets(sets, run.corpus.n, ids=run.ids, by_id=by_id)
    with atomic_dir(run.path / "groups", overwrite=overwrite, kind="groups", inputs=[run.corpus.path],
                    flag=None) as tmp:
        estimates = group_effects(run, sets, client=client)
        store_groups(tmp, estimates)
    return estimates


def check_corpus_unchanged(corpus, fingerprint: str, partial: Path, *, what: str) -> None:
    """Refuse to publish a job's output when its corpus is no longer the one it started on
    (e.g. re-ingested with --overwrite while a streaming job read it): the rows read may mix
    both versions. The checkpoint ``partial`` goes too, since its stages may have read
    either."""
    if corpus.path is None:
        return
    try:
        now = corpus_fingerprint(corpus.path)
    except CorpusError as exc:
        now = f"unreadable: {exc}"
    if now != fingerprint:
        remove(partial)
        raise CorpusError(
            f"The corpus {corpus.path!r} changed while this {what} read it (fingerprint {fingerprint} -> {now}): its "
            "rows may mix two versions, so nothing was written. Run the same command again to compute on the "
            "corpus as it is now."
        )
