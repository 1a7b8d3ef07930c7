"""Reading runs back as tables: listing runs, top rows, export to Parquet/CSV."""

from __future__ import annotations

import json

from .format import MANIFEST
from .reading import Run, open_run, run_location, score_columns
from ..errors import ConfigError
from ..outputs import output_path


def top_rows(frame, by: str, k: int):
    """The ``k`` rows of ``frame`` with the largest ``|by|`` (NaN last), in that order."""
    return frame.loc[frame[by].abs().sort_values(ascending=False, na_position="last").index[:k]]


def list_runs(root) -> list[dict]:
    """One row per run directory under ``root`` (searched recursively, hidden directories
    skipped), from the manifests alone: path, status, created, corpus fingerprint, λ, n, d,
    iterations and timings. Interrupted runs (``.NAME.partial``) are listed as "partial".

    This is ``rifscale runs DIR``.

    Parameters
    ----------
    root : str or os.PathLike
        The directory to search.

    Returns
    -------
    list of dict
        Keys path, status, created, corpus, lam, n, d, n_iter, seconds, resumed; sorted
        by path.

    Examples
    --------
    >>> import numpy as np
    >>> import rifscale
    >>> from rifscale.demo import demo_data_path
    >>> data = np.load(demo_data_path())  # the embedded Fashion-MNIST pair
    >>> corpus = rifscale.ingest("example-corpus.zarr", train_X=data["train_X"], train_y=data["train_y"],
    ...                          test_X=data["test_X"], test_y=data["test_y"], overwrite=True)
    >>> for lam in (0.1, 1.0):
    ...     _ = rifscale.run_job(corpus, f"example-runs/lam-{lam}", rifscale.RunConfig(lam=lam), overwrite=True)
    >>> [(row["lam"], row["status"]) for row in rifscale.list_runs("example-runs")]
    [(0.1, 'complete'), (1.0, 'complete')]
    """
    root = run_location(root)
    if not root.is_dir():
        raise ConfigError(f"{str(root)!r} is not a directory.")
    rows = []
    for mpath in sorted(root.rglob(MANIFEST)):
        run = mpath.parent
        rel = run.relative_to(root)
        hidden = [part for part in rel.parts if part.startswith(".")]
        if hidden and not (len(hidden) == 1 and rel.parts[-1] == hidden[0] and hidden[0].endswith(".partial")):
            continue
        try:
            m = json.loads(mpath.read_text())
        except (OSError, ValueError):
            rows.append({"path": str(run), "status": "unreadable manifest"})
            continue
        if not isinstance(m, dict):
            rows.append({"path": str(run), "status": "damaged manifest (not a JSON object)"})
            continue
        if "rifscale_run" not in m:
            continue
        cfg = m.get("config") or (m.get("job") or {}).get("config") or {}
        timings = m.get("timings") or {}
        rows.append({
            "path": str(run),
            "status": m.get("status"),
            "created": m.get("created"),
            "corpus": (m.get("corpus") or {}).get("fingerprint") or (m.get("job") or {}).get("corpus_fingerprint"),
            "lam": cfg.get("lam"),
            "n": m.get("n"),
            "d": m.get("d"),
            "n_iter": (m.get("fit") or {}).get("n_iter"),
            "seconds": round(sum(timings.values()), 3) if timings else None,
            "resumed": m.get("resumed"),
        })
    return rows


EXPORT_FORMATS = ("parquet", "csv")


def export(run, out, *, fmt: str | None = None, top: int | None = None, by: str | None = None,
           columns=None, overwrite: bool = False, corpus=None) -> dict:
    """Write a run's per-sample scores to a Parquet or CSV file, indexed by the corpus ids.

    ``top`` keeps the ``top`` rows with the largest ``|by|`` (NaN last), e.g.
    ``top=100, by="rif_test_loss"``; ``fmt`` defaults from the file name; ``corpus``: its
    path if it moved since the run (:func:`open_run`). Written beside and moved into
    place; ``overwrite`` replaces only a file rifscale wrote. Returns ``{"rows",
    "columns", "path"}``."""
    from ..outputs import atomic_file

    run = run if isinstance(run, Run) else open_run(run, corpus=corpus)
    out = output_path(out, "export")
    fmt = fmt or out.suffix.lstrip(".").lower()
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"Cannot tell the export format of {str(out)!r}; name a .parquet or .csv file, or pass "
                          f"--format from {EXPORT_FORMATS}.")
    available = score_columns(run.model.metrics, run.model.family.score_columns)
    columns = list(columns or available)
    bad = [c for c in [*columns, *([by] if by else [])] if c not in available]
    if bad:
        raise ConfigError(f"Unknown column(s) {bad}; this run has {available}.")
    if top is not None and (top < 1 or by is None):
        raise ConfigError("--top K needs K >= 1 and --by COLUMN (e.g. --top 100 --by rif_test_loss).")
    frame = run.to_dataframe(columns=sorted(set(columns) | ({by} if by else set()), key=available.index))
    if top is not None:
        frame = top_rows(frame, by, top)
    frame = frame[columns]
    with atomic_file(out, overwrite=overwrite, kind="export", inputs=[run.path, run.corpus.path]) as tmp:
        if fmt == "parquet":
            frame.to_parquet(tmp, engine="pyarrow")
        else:
            frame.to_csv(tmp)
    return {"rows": len(frame), "columns": columns, "path": str(out)}
