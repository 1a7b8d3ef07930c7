"""Flip-set audits (docs/design.md §8.11) against the dense reference's exact retrains,
brute-force scans and exhaustive searches.

Each test names the bug it was written against; every one was planted and seen to fail."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import rifscale
from rifscale.audits.audit import AuditConfig, _Point, audit
from rifscale.cli import main
from rifscale.errors import ConfigError
from rifscale.audits.flipsearch import Bisection, Refinement
from rifscale.testing import Reference, make_problem

from .conftest import corpus_of


def _flipped(ref: Reference, z, T) -> bool:
    """Whether the reference's exact retrain without T puts z on the other side."""
    before = z @ ref.theta
    after = z @ (ref.theta + ref.delta_exact(np.asarray(T)))
    return bool(np.sign(after) != np.sign(before))


def _setup(n, d, lam, *, icpt=True, seed=0, n_test=40, chunk=16):
    pr = make_problem(n, d, seed=seed, n_test=n_test)
    ref = Reference(pr.X, pr.y, lam=lam, fit_intercept=icpt)
    res = rifscale.attribute(corpus_of(pr, chunk), lam=lam, fit_intercept=icpt, test_subset="all")
    return pr, ref, res, Reference.augment(pr.X_test, icpt)


# ------------------------------------------------------------------ the search, alone

def _bisect(kmax, threshold, guess, fanout):
    s = Bisection(np.arange(kmax), guess, fanout)
    while not s.done:
        ks = s.candidates()
        assert ks and len(ks) <= fanout and all(1 <= k <= kmax for k in ks)
        s.take({k: (threshold is not None and k >= threshold, 0.0, None) for k in ks})
    return s


def test_bisection_finds_the_smallest_achieving_prefix_of_every_monotone_predicate():
    """Bug: a bisection that skips the smallest achieving k (an off-by-one in the bracket)."""
    for kmax in (1, 2, 7, 50):
        for threshold in [*range(1, kmax + 1), None]:
            for guess in (math.inf, 1, threshold or 3, 3 * (threshold or 1), 8 * (threshold or 1) + 4):
                for fanout in (1, 2, 8):
                    s = _bisect(kmax, threshold, guess, fanout)
                    assert s.hi == threshold, (kmax, threshold, guess, fanout)
                    if threshold is not None:
                        assert s.found[0].size == threshold and s.lo == threshold - 1


def test_refinement_keeps_only_needed_members():
    """Bug: a refinement that stops with a member whose removal is not needed."""
    core = np.array([3, 8, 11])
    start = np.array([1, 3, 4, 8, 9, 11, 15])

    def judge(rows):  # achieved iff every core row is removed; more room with fewer extras
        return (bool(np.isin(core, rows).all()), float(rows.size), None)

    ref = Refinement(start, judge(start))
    while not ref.done:
        ref.take({tag: judge(rows) for tag, rows in ref.sets().items()})
    np.testing.assert_array_equal(ref.rows, core)
    assert ref.minimal and ref.judgement[0]
    # any two of {2, 5, 6}: the result has two members, each needed
    ref = Refinement(np.array([0, 2, 5, 6, 7]), (True, 0.0, None))
    while not ref.done:
        ref.take({tag: (np.isin([2, 5, 6], rows).sum() >= 2, float(rows.size), None)
                  for tag, rows in ref.sets().items()})
    assert ref.rows.size == 2 and set(ref.rows) <= {2, 5, 6}
    # every member droppable alone (any one row does it): never an empty set, ends with one
    ref = Refinement(np.arange(6), (True, 0.0, None))
    while not ref.done:
        sets = ref.sets()
        assert all(rows.size >= 1 for rows in sets.values())
        ref.take({tag: (rows.size >= 1, float(rows.size), None) for tag, rows in sets.items()})
    assert ref.rows.size == 1 and ref.minimal


def test_a_flip_counts_only_when_the_retrain_certifies_its_sign():
    """Bug: a flip "certified" by a sign change alone (an estimate, or a retrain whose error
    bound does not rule out the old sign)."""
    z = np.array([1.0, 2.0, 1.0])
    pt = _Point(row=0, test_id=0, label=1, margin=0.5, z=z, sign=1.0, guess=1.0, lower_bound=1, search=None)
    fit = lambda theta, bound: SimpleNamespace(theta=np.asarray(theta, float), error_bound=bound)  # noqa: E731
    assert pt.judge(fit([0.0, -0.1, 0.0], 1e-9))[0]  # margin −0.2, certain
    assert not pt.judge(fit([0.0, -0.1, 0.0], 0.2))[0]  # −0.2 but the error may reach +0.29
    assert not pt.judge(fit([0.0, -0.1, 0.0], math.inf))[0]  # nothing proven
    assert not pt.judge(fit([0.0, 0.1, 0.0], 1e-12))[0]  # no sign change
    assert pt.judge(fit([0.0, -0.1, 0.0], 1e-9))[1] == pytest.approx(-0.2)


# ------------------------------------------------------------------ against the reference

@pytest.mark.parametrize("n, d, lam, icpt", [(80, 6, 0.5, True), (30, 45, 0.3, True), (60, 8, 1.0, False)])
def test_flip_sets_flip_and_are_minimal_by_the_reference(n, d, lam, icpt, synchronous):
    """Every set reported flips its point in the reference's exact retrain, and no member
    can go: the reference retrain without it does not flip. Bugs: a flip certified by the
    estimate (planted: NS start accepted, no certificate), a refinement that leaves an
    unneeded member (planted: refinement ends after its first round)."""
    pr, ref, res, Zt = _setup(n, d, lam, icpt=icpt, seed=7)
    robust = np.argsort(np.abs(Zt @ ref.theta))[[10, 20, 30]].tolist()  # beside the least robust: larger margins
    out = audit(res, least_robust=1, ids=robust, max_size=n - 1)
    assert len(out.points) == 4 and out.counts["flips_found"] == 4
    refined = 0
    for r in out.points:
        z, T = Zt[r["test_row"]], np.asarray(r["train_rows"])
        assert r["found"] and r["minimal"] and r["size"] == T.size >= r["lower_bound"] >= 1
        assert _flipped(ref, z, T), r
        for j in T:
            assert not _flipped(ref, z, T[T != j]), (r["test_id"], j)
        exact = z @ ref.delta_exact(T)
        assert abs(r["exact_change"] - exact) <= 1e-7 * abs(exact)
        assert abs(r["if_change"] - z @ ref.delta_if(T)) <= 1e-8 * abs(exact)
        assert abs(r["ns_change"] - z @ ref.delta_ns(T)) <= 1e-7 * abs(exact)
        assert abs(r["rif_change"] - z @ ref.delta_rif(T)) <= 1e-8 * abs(exact)
        assert np.sign(r["retrained_margin"]) != np.sign(r["margin"]) and abs(r["retrained_margin"]) > r["margin_error"]
        assert r["train_ids"] == T.tolist()  # in-memory corpus: ids are row numbers
        refined += r["prefix_size"] > r["size"]
    assert refined, "expected the refinement to drop members somewhere"


def _greedy_order(ref: Reference, z, K):
    """The reference's RIF order of the training rows for the margin of z."""
    sign = 1.0 if z @ ref.theta > 0 else -1.0
    s_rif = ref.r * (ref.Z @ (ref.Hinv @ z)) / (1 - ref.h)
    v = sign * s_rif
    order = np.argsort(v, kind="stable")[:K]
    return order[v[order] < 0]


def test_bisection_agrees_with_a_brute_force_scan_of_the_prefixes(synchronous):
    """The greedy prefix is the reference's RIF order, and the size found is the smallest
    prefix whose exact retrain flips the point, scanning every size. Bug: a bisection that
    skips the smallest flipping k (planted: lo + 1 after each round)."""
    n, d, lam = 120, 5, 0.5
    pr, ref, res, Zt = _setup(n, d, lam, seed=11, n_test=80)
    spread = np.argsort(np.abs(Zt @ ref.theta))[[8, 24, 40, 48, 56]].tolist()  # small to large margins
    out = audit(res, ids=spread, max_size=n - 1, fanout=1, refine=False)  # one size per round: a true bisection
    checked = 0
    for r in out.points:
        z = Zt[r["test_row"]]
        order = _greedy_order(ref, z, n - 1)
        first = next((k for k in range(1, order.size + 1) if _flipped(ref, z, order[:k])), None)
        assert r["found"] == (first is not None)
        if first is not None:
            assert r["size"] == first, (r["test_id"], r["size"], first)
            assert r["train_rows"] == sorted(order[:first].tolist())
            checked += first > 1
    assert checked >= 4  # sizes beyond 1: the bisection had something to skip


def _min_flip(ref, z, upto):
    """Smallest set (exhaustive over all subsets) whose removal flips z, or None."""
    n = ref.Z.shape[0]
    for k in range(1, upto + 1):
        if any(_flipped(ref, z, list(T)) for T in itertools.combinations(range(n), k)):
            return k
    return None


@pytest.mark.parametrize("icpt", [True, False])
def test_lower_bound_is_never_above_an_exhaustive_search(icpt, synchronous):
    """No set smaller than the lower bound flips a point: every subset up to the size
    found is retrained by the reference. With an intercept the features sit around 3 and
    λ is large, so the intercept carries the prediction: a bound that takes λ as the
    curvature of the intercept coordinate (planted: the Euclidean bound used with an
    intercept) claims more removals than the exhaustive search needs."""
    rng = np.random.default_rng(2)
    n, d = 10, 2
    X = 0.3 * rng.normal(size=(n, d)) + (3.0 if icpt else 0.0)
    y = np.array([1, 1, 1, 0, 1, 1, 0, 1, 0, 1], dtype=np.int8)
    Xt = 0.3 * rng.normal(size=(3, d)) + (3.0 if icpt else 0.0)
    lam = 50.0 if icpt else 0.3
    ref = Reference(X, y, lam=lam, fit_intercept=icpt)
    c = rifscale.Corpus.from_arrays(X, y, Xt, np.array([0, 1, 1], np.int8), chunk_rows=4)
    res = rifscale.attribute(c, lam=lam, fit_intercept=icpt, test_subset="all")
    out = audit(res, ids=[0, 1, 2], max_size=n - 1)
    Zt = Reference.augment(Xt, icpt)
    for r in out.points:
        upto = r["size"] if r["found"] else 5
        smallest = _min_flip(ref, Zt[r["test_row"]], upto)
        assert smallest is None or r["lower_bound"] <= smallest, (r["test_id"], r["lower_bound"], smallest)
        if r["found"]:
            assert smallest is not None and smallest <= r["size"]
    assert max(r["lower_bound"] for r in out.points) >= 2  # the bound says something here


def test_accuracy_audit_is_certified_and_minimal_by_the_reference(synchronous):
    """The removals found lower the test accuracy by the asked amount in the reference's
    exact retrain, and each is needed."""
    pr, ref, res, Zt = _setup(80, 6, 0.5, seed=5, n_test=50)
    out = audit(res, accuracy_drop=0.06)
    a = out.accuracy
    correct = lambda theta: int(((Zt @ theta > 0) == (pr.y_test == 1)).sum())  # noqa: E731
    before = correct(ref.theta)
    assert a["found"] and a["minimal"] and a["correct_before"] == before and a["needed"] == 3
    T = np.asarray(a["train_rows"])
    assert before - correct(ref.theta + ref.delta_exact(T)) >= a["needed"] <= a["certified_drop"]
    for j in T:
        assert before - correct(ref.theta + ref.delta_exact(T[T != j])) < a["needed"]


def test_sets_above_refine_max_are_reported_unchecked(synchronous):
    pr, ref, res, Zt = _setup(60, 8, 1.0, seed=7)
    robust = np.argsort(np.abs(Zt @ ref.theta))[[30]].tolist()
    r = audit(res, ids=robust, refine_max=1).points[0]
    assert r["found"] and r["size"] == r["prefix_size"] > 1 and r["minimal"] is None and r["refinement_rounds"] == 0


def test_config_errors_name_the_problem(synchronous):
    pr, ref, res, Zt = _setup(40, 4, 1.0, seed=1, n_test=10)
    with pytest.raises(ConfigError, match="Nothing to audit"):
        AuditConfig()
    with pytest.raises(ConfigError, match="accuracy_drop must be a fraction"):
        AuditConfig(accuracy_drop=5)
    with pytest.raises(ConfigError, match=r"--ids names 2 id\(s\).*\[123, 456\]"):
        audit(res, ids=[1, 123, 456])
    with pytest.raises(ConfigError, match="only .* are right"):
        audit(res, accuracy_drop=1.0)


# ------------------------------------------------------------------ the command

def test_audit_cli_writes_refuses_to_overwrite_and_names_unknown_ids(tmp_path, capsys, synchronous):
    pr = make_problem(70, 6, n_test=30, seed=4, dtype=np.float32)
    c = rifscale.ingest(tmp_path / "c.zarr", train_X=pr.X, train_y=pr.y, test_X=pr.X_test, test_y=pr.y_test,
                        test_ids=np.arange(100, 130))
    rifscale.attribute(c, lam=0.5).to_zarr(tmp_path / "run")
    run, out = str(tmp_path / "run"), tmp_path / "audit"
    assert main(["audit", run, "--out", str(out), "--ids", "105", "--least-robust", "2", "--accuracy-drop", "0.04",
                 "-q"]) == 0
    assert "certified by an exact retrain" in capsys.readouterr().out
    points = pd.read_parquet(out / "points.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rifscale_audit"] == 1 and manifest["status"] == "complete"
    assert points["test_id"].tolist()[0] == 105 and len(points) == 3 and points["found"].all()
    assert pd.read_csv(out / "points.csv")["test_id"].tolist() == points["test_id"].tolist()
    assert (out / "accuracy.parquet").exists() and manifest["accuracy"]["found"]
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert main(["audit", run, "--out", str(out), "--ids", "105", "-q"]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "manifest.json").stat().st_mtime_ns == stamp
    assert main(["audit", run, "--out", str(tmp_path / "other"), "--ids", "105", "7", "-q"]) == 2
    err = capsys.readouterr().err
    assert "[7]" in err and "--ids" in err and not (tmp_path / "other").exists()
    assert main(["audit", run, "--out", str(out), "--ids", "106", "--overwrite", "-q"]) == 0
    assert pd.read_parquet(out / "points.parquet")["test_id"].tolist() == [106]
    # rifscale.audit is the function whether or not its module was imported first
    assert rifscale.audit(rifscale.open_run(run), ids=[106]).points[0]["test_id"] == 106


@pytest.mark.parametrize("n, d, lam, icpt", [(200, 6, 0.5, True), (200, 6, 0.5, False), (40, 60, 20.0, True)])
def test_the_margin_bound_holds_for_every_set_as_a_theorem(n, d, lam, icpt):
    """For sets T of every size, the reference's exact margin change is at least the bound
    the lower bound rests on: ``s_t Δm ≥ −Σ_T c_i / μ′_T`` (and ``−Σ_T c^e_i / λ`` without an
    intercept), and it comes close for some T (so a bound too strong fails). Bugs: μ′
    without the removed leverage, or without the localisation factor."""
    from rifscale.audits.flipbound import curvature_factor

    pr = make_problem(n, d, seed=3, n_test=6)
    ref = Reference(pr.X, pr.y, lam=lam, fit_intercept=icpt)
    q = np.einsum("ij,jk,ik->i", ref.Z, ref.Hinv, ref.Z)
    sq, gam = np.sqrt(q), np.abs(ref.r) * np.sqrt(q)
    rho = np.unique(sq)
    mass = np.array([ref.h[sq > v].sum() for v in rho])
    rng = np.random.default_rng(0)
    tight, proven = 0.0, 0
    # training rows as test points, removed alone: the bound is nearly tight there
    own = np.argsort(ref.h)[-n // 4 :][:: n // 24][:6]
    for k, zt in enumerate([*Reference.augment(pr.X_test, icpt), *ref.Z[own]]):
        s = 1.0 if zt @ ref.theta > 0 else -1.0
        u = ref.Hinv @ zt
        c = (np.sqrt(zt @ u) * gam - s * ref.r * (ref.Z @ u)) / 2
        ce = (np.linalg.norm(zt) * np.abs(ref.r) * np.linalg.norm(ref.Z, axis=1) - s * ref.r * (ref.Z @ zt)) / 2
        order = np.argsort(s * ref.r * (ref.Z @ u))  # the most helpful first: where the bound is tested hardest
        sets = [order[:k] for k in (1, 2, 3, 5)] + [rng.choice(n, k, replace=False) for k in (1, 2, 4, 8)]
        sets += [own[k - 6 : k - 5]] if k >= 6 else []
        for T in sets:
            change = s * (zt @ ref.delta_exact(T))
            mu = curvature_factor(ref.h[T].sum(), gam[T].sum(), rho, mass)[0]
            if mu > 0:
                proven += 1
                assert change >= -c[T].sum() / mu * (1 + 1e-9), (T, change, -c[T].sum() / mu)
                tight = max(tight, change / (-c[T].sum() / mu)) if change < 0 else tight
            if not icpt:
                assert change >= -ce[T].sum() / lam * (1 + 1e-9)
    assert proven >= 5 and tight > (0.9 if n > d else 0.3), (proven, tight)
