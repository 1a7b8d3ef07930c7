"""Figures (PNG, matplotlib's Agg backend) and one HTML page that shows them all.

- accuracy: predicted vs actual metric change per strategy (columns) and metric (rows),
  IF, RIF and NS in one panel, one figure per form (linear, plug-in) — the paper's Fig. 1;
- sweeps: slope through the origin and correlation of each method against λ and n/d (Fig. 2);
- poisoning: predicted vs exact change of the poisoned point's logit, IF and RIF (Fig. 3).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

COLOURS = {"if": "#d95f02", "rif": "#1b9e77", "ns": "#7570b3"}
LABELS = {"if": "IF", "rif": "RIF", "ns": "NS"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _identity(ax, xs, ys):
    vals = np.concatenate([np.asarray(xs, float), np.asarray(ys, float)])
    vals = vals[np.isfinite(vals)]
    if vals.size:
        lo, hi = vals.min(), vals.max()
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--", zorder=0)


def _save(fig, path: Path, title: str | None = None) -> Path:
    plt = _plt()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _empty_figure(path: Path, message: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.set_axis_off()
    return _save(fig, path)


def accuracy_figure(rows: list[dict], form: str, path: Path) -> Path:
    plt = _plt()
    rows = [r for r in rows if r["form"] == form and r["converged"]]
    if not rows:
        return _empty_figure(path, "no converged exact retrain to compare with")
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = plt.subplots(len(metrics), len(strategies), figsize=(3.2 * len(strategies), 3.0 * len(metrics)),
                             squeeze=False)
    for i, metric in enumerate(metrics):
        for j, strategy in enumerate(strategies):
            ax = axes[i][j]
            sub = [r for r in rows if r["metric"] == metric and r["strategy"] == strategy]
            for m in ("if", "rif", "ns"):
                pts = [(r["actual"], r["predicted"]) for r in sub if r["method"] == m]
                if pts:
                    a, p = np.array(pts).T
                    ax.scatter(a, p, s=10, alpha=0.75, color=COLOURS[m], label=LABELS[m])
            _identity(ax, [r["actual"] for r in sub], [r["predicted"] for r in sub])
            if i == 0:
                ax.set_title(strategy, fontsize=10)
            if j == 0:
                ax.set_ylabel(f"{metric}\npredicted", fontsize=9)
            if i == len(metrics) - 1:
                ax.set_xlabel("actual (exact retrain)", fontsize=9)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=8, loc="upper left")
    return _save(fig, path, f"Predicted vs actual change ({'plug-in f(θ̂+Δθ) − f(θ̂)' if form == 'plugin' else 'linear ∇fᵀΔθ'})")


def sweeps_figure(rows: list[dict], path: Path) -> Path:
    plt = _plt()
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    if not metrics:
        return _empty_figure(path, "no sweep results")
    fig, axes = plt.subplots(2, 2 * len(metrics), figsize=(3.3 * 2 * len(metrics), 6), squeeze=False)
    for k, metric in enumerate(metrics):
        for col, axis in enumerate(("lam", "n")):
            for row, stat in enumerate(("slope", "pearson")):
                ax = axes[row][2 * k + col]
                for m in ("if", "rif", "ns"):
                    pts = sorted((r["value"] if axis == "lam" else r["n"] / r["d"], r[stat]) for r in rows
                                 if r["axis"] == axis and r["metric"] == metric and r["method"] == m)
                    if pts:
                        x, y = np.array(pts).T
                        ax.plot(x, y, marker="o", color=COLOURS[m], label=LABELS[m])
                if axis == "lam":
                    ax.set_xscale("log")
                ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
                ax.set_xlabel("λ" if axis == "lam" else "n / d", fontsize=9)
                ax.set_title(f"{metric}: {stat}", fontsize=9)
                ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path, "Accuracy (plug-in) while varying λ and n at fixed d")


def poisoning_figure(rows: list[dict], path: Path) -> Path:
    plt = _plt()
    ok = [r for r in rows if r.get("converged")]
    if not ok:
        return _empty_figure(path, "no converged poisoned fit")
    exact = np.array([r["exact"] for r in ok])
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for m in ("if", "rif"):
        ax.scatter(exact, [r[m] for r in ok], s=12, alpha=0.8, color=COLOURS[m], label=LABELS[m])
    _identity(ax, exact, [r["rif"] for r in ok] + [r["if"] for r in ok])
    ax.set_xlabel("exact change of the logit (clean − poisoned)")
    ax.set_ylabel("predicted")
    ax.set_title(f"Poisoning: {len(ok)} test points")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return "nan" if not np.isfinite(v) else f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(report_dir: Path, *, title: str, intro: str, sections: list[dict]) -> Path:
    """``index.html`` in ``report_dir``: each section has a heading, text, figures (file
    names in ``report_dir``) and tables (rows + columns)."""
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s['heading'])}</h2>")
        if s.get("text"):
            parts.append(f"<p>{html.escape(s['text'])}</p>")
        for fig in s.get("figures", []):
            parts.append(f'<figure><img src="{html.escape(fig)}" alt="{html.escape(fig)}"></figure>')
        for rows, columns in s.get("tables", []):
            parts.append(_table(rows, columns))
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
             "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:12px;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}")
    # records how many figures the browser could decode (read by the tests; harmless otherwise)
    script = ("<script>window.addEventListener('load',function(){var i=document.images,k=0;"
              "for(var j=0;j<i.length;j++){if(i[j].complete&&i[j].naturalWidth>0)k++;}"
              "document.body.setAttribute('data-images-loaded',k+'/'+i.length);});</script>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}{script}</body></html>")
    path = Path(report_dir) / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def write_json(path: Path, obj) -> Path:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(type(o))

    Path(path).write_text(json.dumps(obj, indent=1, default=default, allow_nan=True))
    return Path(path)
