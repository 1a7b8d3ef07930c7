"""The audit directory (``rifscale audit RUN --out AUDIT``): writing it, and the job.

Layout, written atomically and under the output's lock (:mod:`rifscale.outputs`)::

    AUDIT/
      manifest.json     rifscale_audit (format), status, created, source (run, corpus path
                        and fingerprint), config, model (λ, intercept, p, n, n_test),
                        counts, the point and accuracy records, files, timings, versions
      points.parquet    one row per audited point (columns: rifscale.audits.audit.POINT_COLUMNS;
      points.csv        train_ids / train_rows as lists, space-separated in the CSV)
      accuracy.parquet  the accuracy audit, when asked for (ACCURACY_COLUMNS)
      accuracy.csv
"""

from __future__ import annotations

import time

from .audit import FORMAT, Audit, AuditConfig, audit



def write_audit(result: Audit, out, *, overwrite: bool = False, inputs=(), source: dict | None = None) -> dict:
    """Write the audit directory (atomically, locked; refused if it exists unless
    ``overwrite``): ``points.parquet`` and ``points.csv`` (one row per audited point;
    the CSV lists ids space-separated), ``accuracy.parquet``/``.csv`` when asked for, and
    ``manifest.json``. Returns the manifest."""
    from ..outputs import atomic_dir, output_path

    with atomic_dir(output_path(out, "audit"), overwrite=overwrite, kind="audit", inputs=inputs) as tmp:
        return store_audit(tmp, result, source=source)


def store_audit(path, result: Audit, *, source: dict | None = None) -> dict:
    """Write an audit's files into the (temporary) directory ``path``."""
    from ..runs.format import _versions, write_run_json

    tables = {"points": result.points_frame()}
    if result.accuracy is not None:
        tables["accuracy"] = result.accuracy_frame()
    for name, frame in tables.items():
        frame.to_parquet(path / f"{name}.parquet", engine="pyarrow", index=False)
        flat = frame.copy()
        for col in ("train_ids", "train_rows"):
            flat[col] = [" ".join(map(str, v)) for v in flat[col]]
        flat.to_csv(path / f"{name}.csv", index=False)
    manifest = {
        "rifscale_audit": FORMAT,
        "status": "complete",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source or {},
        "config": result.config.to_dict(),
        "model": result.model,
        "bounds": "size: an upper bound, each set certified by an exact retrain (the retrained margin's sign is "
                  "certain); lower_bound: proven from strong convexity (docs/design.md section 8.11); gap = size - "
                  "lower_bound",
        "counts": result.counts,
        "points": result.points,
        "accuracy": result.accuracy,
        "files": sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) + ["manifest.json"],
        "timings": result.timings,
        "versions": _versions(),
    }
    write_run_json(path / "manifest.json", manifest)
    return manifest


def run_audit(run, out, config: AuditConfig, *, corpus=None, overwrite: bool = False, client=None) -> Audit:
    """The job behind ``rifscale audit RUN --out AUDIT``: open the run, claim ``out``
    (refused before any work if it exists and ``overwrite`` is not given), audit, write."""
    from ..outputs import atomic_dir, output_path
    from ..runs.reading import Run, open_run

    run = run if isinstance(run, Run) else open_run(run, corpus=corpus)
    source = {"run": str(run.path), "corpus": {"path": run.corpus.path, "fingerprint": run.corpus.fingerprint}}
    with atomic_dir(output_path(out, "audit"), overwrite=overwrite, kind="audit",
                    inputs=[run.path, run.corpus.path]) as tmp:
        result = audit(run, config, client=client)
        store_audit(tmp, result, source=source)
    return result


def format_audit(result: Audit) -> str:
    """A plain-text summary: one line per point, and the accuracy audit."""
    lines = [f"{'test id':>10} {'margin':>9} {'lower':>6} {'found':>6} {'gap':>4}  {'exact':>9} {'RIF':>9} {'NS':>9}"
             "   (margin change of the set)"]
    for r in result.points:
        if r["found"]:
            lines.append(f"{r['test_id']:>10} {r['margin']:>9.4g} {r['lower_bound']:>6} {r['size']:>6} {r['gap']:>4}  "
                         f"{r['exact_change']:>9.4g} {r['rif_change']:>9.4g} {r['ns_change']:>9.4g}")
        else:
            lines.append(f"{r['test_id']:>10} {r['margin']:>9.4g} {r['lower_bound']:>6} {'none':>6}    -  "
                         f"(no flip within {result.config.max_size} removals)")
    a = result.accuracy
    if a is not None:
        what = (f"{a['size']} removal(s) lower it by {a['certified_drop']} prediction(s) (certified)" if a["found"]
                else f"no set of at most {result.config.max_size} removals found")
        lines.append(f"accuracy {a['accuracy_before']:.4f}, drop of {a['target_drop']} ({a['needed']} prediction(s)): "
                     + what)
    return "\n".join(lines)
