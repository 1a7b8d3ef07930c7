"""The softmax family (docs/design.md §9) against the binary run on the same rows and against
scikit-learn's multinomial ``LogisticRegression``.

    .venv/bin/python benchmarks/bench_softmax.py                # n = 100 000, d = 256, K = 10
    .venv/bin/python benchmarks/bench_softmax.py --quick        # n = 20 000, d = 64, K = 5
    .venv-peers/bin/python benchmarks/bench_softmax.py --out benchmarks/results/softmax-x.json

Data: ``rifscale.testing.make_softmax_problem(n, d, K, n_test=2000, seed=0)`` as float32,
in memory (``Corpus.from_arrays``, row chunks of ``--chunk-rows``), dask's threaded
scheduler (the default of ``rifscale run`` without ``--scheduler``); λ = 1.

It measures, each once (``--repeats`` for more; tables show the fastest):

* **Hessian block**: one ``newton_block`` (loss, gradient, float64 Hessian) on
  ``--block-rows`` rows at θ̂, with the Hessian summed as one stacked symmetric product
  (``HESSIAN_METHOD = "stacked"``, the default) and as K(K+1)/2 weighted Grams ("grams"),
  beside the binary kernel on the same rows (3 repeats each, fastest);
* **softmax run**: ``rifscale.attribute(model="softmax")`` (fit, factor, metrics) plus the
  scores pass (``scores.table.compute()``), its fit's passes and certified error bound;
* **binary run**: the same on the same rows with labels ``y mod 2``;
* **scikit-learn**: ``LogisticRegression(C = 1/λ, tol=1e-10, max_iter=10000)`` (lbfgs,
  multinomial) on the same float64 rows: fit time, and how far its W and probabilities
  are from rifscale's θ̂ (its optimum is the same: sum-form loss, unpenalised intercepts).
  It gives no influence scores; the issue's second peer (its P × P Hessian, Cholesky and
  per-row K × K solves in dense NumPy) is ``--peer-scores`` (n ≤ 20 000).

Every section records the share of the CPUs that other processes used meanwhile
(``OtherLoad`` of bench_engine.py): timings with a visible share are inflated.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import OtherLoad, _blas, _cpu_model, say, source_info  # noqa: E402  (a sibling script)


def timed(fn, repeats: int = 1):
    """(fastest seconds, all seconds, last result, largest other-load share)."""
    times, shares, out = [], [], None
    for _ in range(repeats):
        with OtherLoad() as load:
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        shares.append(load.share)
    return min(times), times, out, max(shares)


def hessian_block(X, y, theta, K: int, rows: int, binary_theta) -> dict:
    import rifscale.engine.kernels.softmax as sm
    from rifscale.engine.family import BINARY

    fam = sm.Softmax(K)
    x, yy = X[:rows], y[:rows]
    out = {}
    for method in ("stacked", "grams"):
        sm.HESSIAN_METHOD = method
        best, times, packed, share = timed(lambda: fam.newton_block(x, yy, theta=theta, fit_intercept=True), 3)
        out[method] = {"seconds": best, "all": times, "other_load": share}
        out[method]["_H"] = packed
    sm.HESSIAN_METHOD = "stacked"
    P = len(theta)
    Hs, Hg = (out[m].pop("_H")[0, 2 + P :] for m in ("stacked", "grams"))
    out["stacked_vs_grams_rel"] = float(np.max(np.abs(Hs - Hg)) / np.max(np.abs(Hg)))
    best, times, _, share = timed(lambda: BINARY.newton_block(x, yy % 2, theta=binary_theta, fit_intercept=True), 3)
    out["binary"] = {"seconds": best, "all": times, "other_load": share}
    out["rows"] = int(x.shape[0])
    return out


def run_model(corpus, lam: float, model: str, repeats: int) -> dict:
    import rifscale

    def once():  # as `rifscale run` on threads: one BLAS thread per dask task, the scores pass included
        with rifscale.blas_per_task():
            t = time.perf_counter()
            res = rifscale.attribute(corpus, lam=lam, model=model)
            fit_s = time.perf_counter() - t
            t = time.perf_counter()
            table = res.scores.table.compute()
        return res, fit_s, time.perf_counter() - t, table

    best, times, (res, fit_s, scores_s, table), share = timed(once, repeats)
    return {
        "model": model, "seconds": best, "all": times, "other_load": share,
        "attribute_seconds": fit_s, "scores_seconds": scores_s, "timings": dict(res.timings),
        "p": int(res.model.p), "n_iter": res.fit.n_iter, "n_passes": res.fit.n_passes,
        "hessian_passes": res.fit.hessian_passes, "rel_error_bound": res.fit.rel_error_bound,
        "certified": res.fit.certified, "flagged": int(np.sum(table[:, res.scores.columns.index("flag")] > 0.5)),
        "max_leverage": float(np.nanmax(table[:, res.scores.columns.index("leverage")])),
        "_theta": res.theta, "_linv": res.model.factor.linv,
    }


def multiclass_floor(X, y, theta, linv, K: int, block_rows: int) -> dict:
    """The issue's multiclass floor, in memory in this process (BLAS on every core, no dask):
    one float64 pass of the K × K Hessian blocks (the family's ``newton_block``, stacked
    summation) plus one pass of the K(K+1)/2 leverage forms ``M_i`` (``_leverage_blocks``),
    block by block of ``block_rows`` rows."""
    from rifscale.engine.kernels.products import design
    from rifscale.engine.kernels.softmax import Softmax

    fam = Softmax(K)
    n, d = X.shape

    def hessian_pass():
        total = None
        for s in range(0, n, block_rows):
            packed = fam.newton_block(X[s : s + block_rows], y[s : s + block_rows], theta=theta, fit_intercept=True)
            total = packed if total is None else total + packed
        return total

    def leverage_pass():
        ops = fam._leverage_operands(linv, d, True)
        for s in range(0, n, block_rows):
            fam._leverage_blocks(design(X[s : s + block_rows], fit_intercept=True), None, True, ops=ops)

    h, h_all, _, h_share = timed(hessian_pass)
    lv, lv_all, _, lv_share = timed(leverage_pass)
    return {"hessian_seconds": h, "leverage_seconds": lv, "seconds": h + lv, "other_load": max(h_share, lv_share),
            "block_rows": block_rows}


def sklearn_peer(X, y, lam: float, theta, K: int, d: int) -> dict:
    from sklearn.linear_model import LogisticRegression

    from rifscale.engine.kernels.softmax import expand

    X64 = np.asarray(X, dtype=np.float64)

    def fit():
        return LogisticRegression(C=1.0 / lam, tol=1e-10, max_iter=10_000).fit(X64, y)

    best, times, clf, share = timed(fit)
    Theta = expand(theta, K, d, True)  # (d + 1, K)
    W, b = Theta[:d].T, Theta[d]
    b_sk = clf.intercept_ - clf.intercept_.mean()  # the same optimum, intercepts centred
    logits = X64[:5000] @ W.T + b
    p_ours = np.exp(logits - logits.max(axis=1, keepdims=True))
    p_ours /= p_ours.sum(axis=1, keepdims=True)
    return {
        "seconds": best, "all": times, "other_load": share, "n_iter": int(np.max(clf.n_iter_)),
        "rel_W": float(np.max(np.abs(clf.coef_ - W)) / np.max(np.abs(W))),
        "rel_b": float(np.max(np.abs(b_sk - b)) / max(np.max(np.abs(b)), 1e-300)),
        "max_abs_prob": float(np.max(np.abs(clf.predict_proba(X64[:5000]) - p_ours))),
    }


def dense_peer_scores(X, y, Xt, yt, lam: float, K: int) -> dict:
    """What a user would write instead: scikit-learn's fit, then in dense NumPy the P × P
    Hessian (reference-class intercepts: b_{K−1} = 0, an equivalent parametrisation), its
    inverse by Cholesky, the K × K blocks ``M_i`` as quadratic forms ``z_iᵀ (H⁻¹)_kl z_i`` and
    one batched K × K solve per row for the RIF of the summed test loss."""
    import scipy.linalg
    from sklearn.linear_model import LogisticRegression

    X64, Xt64 = np.asarray(X, dtype=np.float64), np.asarray(Xt, dtype=np.float64)
    n, d = X64.shape
    q = d + 1

    def run():
        clf = LogisticRegression(C=1.0 / lam, tol=1e-10, max_iter=10_000).fit(X64, y)
        Z = np.hstack([X64, np.ones((n, 1))])
        W = np.hstack([clf.coef_, clf.intercept_[:, None]])  # (K, q)
        W[:, d] -= W[K - 1, d]  # the reference class's intercept is 0
        eta = Z @ W.T
        p = np.exp(eta - eta.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        Hf = np.empty((K * q, K * q))
        for k in range(K):
            for l in range(k, K):
                a = (k == l) * p[:, k] - p[:, k] * p[:, l]
                Hf[k * q:(k + 1) * q, l * q:(l + 1) * q] = (Z * a[:, None]).T @ Z
                Hf[l * q:(l + 1) * q, k * q:(k + 1) * q] = Hf[k * q:(k + 1) * q, l * q:(l + 1) * q].T
        keep = np.ones(K * q, dtype=bool)
        keep[K * q - 1] = False  # b_{K−1} = 0: drop its row and column
        pen = np.ones(K * q)
        pen[q - 1 :: q] = 0.0
        H = Hf[np.ix_(keep, keep)] + lam * np.diag(pen[keep])
        c = scipy.linalg.cho_factor(H, lower=True)
        Hinv = np.zeros((K * q, K * q))
        Hinv[np.ix_(keep, keep)] = scipy.linalg.cho_solve(c, np.eye(H.shape[0]))
        Zt = np.hstack([Xt64, np.ones((Xt64.shape[0], 1))])
        et = Zt @ W.T
        pt = np.exp(et - et.max(1, keepdims=True))
        pt /= pt.sum(1, keepdims=True)
        pt[np.arange(len(yt)), yt] -= 1.0
        u = Z @ (Hinv @ (pt.T @ Zt).ravel()).reshape(K, q).T  # u_i = J_i H⁻¹ ∇f, (n, K)
        M = np.empty((n, K, K))
        for k in range(K):
            for l in range(k, K):
                M[:, k, l] = M[:, l, k] = np.einsum("ia,ia->i", Z @ Hinv[k * q:(k + 1) * q, l * q:(l + 1) * q], Z)
        r = p.copy()
        r[np.arange(n), y] -= 1.0
        A = -p[:, :, None] * p[:, None, :]
        A[:, np.arange(K), np.arange(K)] += p
        s = np.linalg.solve(np.eye(K) - A @ M, r[:, :, None])[:, :, 0]
        return np.einsum("ik,ik->i", u, s)

    best, times, rif, share = timed(run)
    return {"seconds": best, "all": times, "other_load": share, "_rif": rif}


def markdown(res: dict) -> str:
    a = res["args"]
    m = res["machine"]
    s, b, hb = res["softmax"], res["binary"], res["hessian_block"]
    lines = [
        f"# bench_softmax: n = {a['n']}, d = {a['d']}, K = {a['K']}, λ = {a['lam']}",
        "",
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, load average at start {m['loadavg_start']}, "
        f"NumPy {m['numpy']} ({m['blas'].get('name')} {m['blas'].get('version')}), commit {res['source']['commit']}"
        f"{' (rifscale/ modified)' if res['source']['rifscale_locally_modified'] else ''}; {res['date']}.",
        "",
        "| | seconds | other load | notes |",
        "|---|---:|---:|---|",
        f"| softmax run (attribute + scores pass) | {s['seconds']:.1f} | {s['other_load']:.0%} | P = {s['p']}, "
        f"{s['n_iter']} iterations / {s['n_passes']} passes, Hessians {s['hessian_passes']}, fit {s['timings']['fit']:.1f} s, "
        f"factor {s['timings']['factor']:.1f} s, scores {s['scores_seconds']:.1f} s; error bound "
        f"{s['rel_error_bound']:.1e} ({'certified' if s['certified'] else 'not certified'}) |",
        f"| binary run, same rows (labels y mod 2) | {b['seconds']:.1f} | {b['other_load']:.0%} | p = {b['p']}, "
        f"{b['n_iter']} iterations / {b['n_passes']} passes, scores {b['scores_seconds']:.1f} s |",
    ]
    if res.get("floor"):
        f = res["floor"]
        lines.append(f"| multiclass floor (in memory: one float64 pass of the K × K Hessian blocks + one pass of "
                     f"the K(K+1)/2 leverage forms) | {f['seconds']:.1f} | {f['other_load']:.0%} | Hessian "
                     f"{f['hessian_seconds']:.1f} s, leverage forms {f['leverage_seconds']:.1f} s; softmax run / floor "
                     f"= {s['seconds'] / f['seconds']:.2f} |")
    if res.get("sklearn"):
        k = res["sklearn"]
        lines.append(f"| scikit-learn LogisticRegression fit only (lbfgs, tol 1e-10) | {k['seconds']:.1f} | "
                     f"{k['other_load']:.0%} | {k['n_iter']} iterations; W vs rifscale {k['rel_W']:.1e} rel, "
                     f"centred b {k['rel_b']:.1e}, probabilities {k['max_abs_prob']:.1e} abs |")
    if res.get("peer_scores"):
        k = res["peer_scores"]
        lines.append(f"| dense NumPy peer (sklearn fit + P × P Hessian + per-row solves; RIF of test_loss "
                     f"over all test points) | {k['seconds']:.1f} | {k['other_load']:.0%} | its RIF vs rifscale's "
                     f"{k['rif_rel_to_rifscale']:.1e} rel (sklearn's tolerance) |")
    lines += [
        "",
        f"Hessian of one block of {hb['rows']} rows (loss, gradient, float64 Hessian; fastest of 3):",
        "",
        "| summation | seconds | other load |",
        "|---|---:|---:|",
        f"| stacked (one YᵀY + K diagonal Grams; default) | {hb['stacked']['seconds']:.3f} | {hb['stacked']['other_load']:.0%} |",
        f"| K(K+1)/2 weighted Grams | {hb['grams']['seconds']:.3f} | {hb['grams']['other_load']:.0%} |",
        f"| binary kernel, same rows | {hb['binary']['seconds']:.3f} | {hb['binary']['other_load']:.0%} |",
        "",
        f"The two summations agree to {hb['stacked_vs_grams_rel']:.1e} (relative).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--chunk-rows", type=int, default=25_000)
    ap.add_argument("--block-rows", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="n = 20 000, d = 64, K = 5")
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--peer-scores", action="store_true", help="also time the dense NumPy peer (slow: n ≤ 20 000)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/softmax-<date>[-quick].json; .md beside it)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.d, args.K = 20_000, 64, 5
    import dask
    import scipy
    import sklearn

    import rifscale
    from rifscale.testing import make_softmax_problem

    date = _dt.date.today().isoformat()
    out = Path(args.out or HERE / "results" / f"softmax-{date}{'-quick' if args.quick else ''}.json")
    res = {
        "date": date, "args": vars(args), "source": source_info(),
        "machine": {"cpu_model": _cpu_model(), "logical_cpus": os.cpu_count(),
                    "loadavg_start": [round(v, 1) for v in os.getloadavg()], "numpy": np.__version__,
                    "scipy": scipy.__version__, "dask": dask.__version__, "sklearn": sklearn.__version__,
                    "rifscale": rifscale.__version__, "blas": _blas(),
                    "threads": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}},
    }
    say(f"data: n = {args.n}, d = {args.d}, K = {args.K}")
    pr = make_softmax_problem(args.n, args.d, args.K, n_test=2000, seed=0, dtype=np.float32)
    corpus = rifscale.Corpus.from_arrays(pr.X, pr.y, pr.X_test, pr.y_test, chunk_rows=args.chunk_rows)
    warm = make_softmax_problem(2000, 8, args.K, n_test=200, seed=1)
    rifscale.attribute(rifscale.Corpus.from_arrays(warm.X, warm.y, warm.X_test, warm.y_test), lam=args.lam,
                       model="softmax")  # warm-up (imports, thread pools)
    say("softmax run")
    res["softmax"] = run_model(corpus, args.lam, "softmax", args.repeats)
    say(f"  {res['softmax']['seconds']:.1f} s")
    say("binary run")
    binary_corpus = rifscale.Corpus.from_arrays(pr.X, pr.y % 2, pr.X_test, pr.y_test % 2, chunk_rows=args.chunk_rows)
    res["binary"] = run_model(binary_corpus, args.lam, "binary", args.repeats)
    say(f"  {res['binary']['seconds']:.1f} s")
    say("multiclass floor")
    res["floor"] = multiclass_floor(pr.X, pr.y, res["softmax"]["_theta"], res["softmax"]["_linv"], args.K,
                                    args.block_rows)
    say(f"  {res['floor']['seconds']:.1f} s")
    say("Hessian block")
    res["hessian_block"] = hessian_block(pr.X, pr.y, res["softmax"]["_theta"], args.K, args.block_rows,
                                         res["binary"]["_theta"])
    if not args.no_sklearn:
        say("scikit-learn")
        res["sklearn"] = sklearn_peer(pr.X, pr.y, args.lam, res["softmax"]["_theta"], args.K, args.d)
        say(f"  {res['sklearn']['seconds']:.1f} s")
    if args.peer_scores:
        say("dense NumPy peer")
        peer = dense_peer_scores(pr.X, pr.y, pr.X_test, pr.y_test, args.lam, args.K)
        ours = rifscale.attribute(corpus, lam=args.lam, model="softmax", test_subset="all",
                                  metrics=("test_loss",)).rif_scores["test_loss"].compute()
        rif = peer.pop("_rif")
        peer["rif_rel_to_rifscale"] = float(np.max(np.abs(rif - ours)) / np.max(np.abs(ours)))
        res["peer_scores"] = peer
        say(f"  {peer['seconds']:.1f} s")
    for key in ("softmax", "binary"):
        res[key].pop("_theta")
        res[key].pop("_linv")
    res["machine"]["loadavg_end"] = [round(v, 1) for v in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown(res))
    say(f"wrote {out} and {out.with_suffix('.md')}")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
