"""A corpus held in (worker) memory for several attributions: the notebook-on-a-cluster case.

A user in Jupyter calls :func:`~rifscale.attribute` several times on one corpus — other
λ, other test subsets, other metrics — and then :func:`~rifscale.group_effects` and
:func:`~rifscale.retrain` on the results. Each call on a path reads the corpus from the
store again. A :class:`Session` reads it once: the training rows (laid out and placed as
:func:`rifscale.engine.partition.prepare_split` does for a run), their ids and the test split
stay in the workers' memory until :meth:`Session.close` (or the end of a ``with``
block), and every call made through the session reads nothing from the store but the
corpus's metadata, to check that it has not changed.

    with rifscale.Session("corpus.zarr", client=client) as s:
        a = s.attribute(lam=1.0)
        b = s.attribute(lam=0.1, metrics=("test_loss",))
        est = s.group_effects(a, {"first": [0, 1, 2]})
        fits = s.retrain(a, {"first": [0, 1, 2]})

Results keep referring to the held rows: compute or write what you need from them
(``.to_zarr``, ``.to_dataframe``) before the session is closed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

import numpy as np

from .cluster import check_worker_profiling, current_client
from .config import RunConfig
from .errors import ConfigError, CorpusError
from .corpus.model import Corpus, corpus_fingerprint, open_corpus
from .engine.partition import check_device, hold_split, prepare_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Held:
    """A result's model with the session's held corpus (what group_effects and retrain read)."""

    corpus: Corpus
    model: object


class Session:
    """A corpus read once and held in memory for several calls with one client.

    Every call through the session reads nothing from the store but the corpus's
    metadata, to check that the data did not change (a changed corpus is an error, not a
    stale answer). Results keep referring to the held rows: compute or write what you
    need from them before the session is closed.

    Parameters
    ----------
    corpus : str, os.PathLike or Corpus
        Path (or URL) of a Zarr corpus, or a :class:`rifscale.Corpus`.
    client : distributed.Client, optional
        Defaults to the active client; without one the rows are held in this process
        (dask's threaded scheduler).
    device : "cpu" or "gpu"
        Where the chunk kernels of every call run (as ``RunConfig.device``).

    Examples
    --------
    >>> import rifscale
    >>> from rifscale.demo import demo_corpus
    >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
    >>> with rifscale.Session(corpus) as s:    # client=... on a cluster (default: the active one)
    ...     runs = {lam: s.attribute(lam=lam) for lam in (0.1, 1.0, 10.0)}
    ...     est = s.group_effects(runs[1.0], {"first10": range(10)})
    ...     exact = s.retrain(runs[1.0], {"first10": range(10)})
    >>> [r.fit.converged for r in runs.values()], exact["first10"].certified
    ([True, True, True], True)
    """

    def __init__(self, corpus: Corpus | str | os.PathLike, *, client=None, device: str = "cpu"):
        self._source = corpus if isinstance(corpus, Corpus) else open_corpus(corpus)
        self.client = client if client is not None else current_client()
        check_device(device, self.client)
        if self.client is not None:
            check_worker_profiling(self.client)
        self.device = device
        train, self.layout = prepare_split(self._source.train, client=self.client, persist="always", device=device)
        self.corpus = replace(self._source, train=train, test=hold_split(self._source.test, self.client))
        self._closed = False
        self._fits = []  # (lam, (fit_intercept, model), theta) of every fit made through the session
        self._radius = {}  # fit_intercept -> max ‖z_i‖ of the held rows (the certificates' R)
        log.info("session: corpus %s held in %s (%d row blocks)", self.corpus.path or "in memory",
                 "worker memory" if self.client is not None else "this process", self.layout["blocks"])

    # ------------------------------------------------------------------ the calls
    def attribute(self, config: RunConfig | None = None, *, theta0=None, warm: bool = True, **overrides):
        """:func:`rifscale.attribute` on the held corpus (same parameters; ``persist``
        and ``device`` are the session's).

        With ``warm=True`` (the default) and no ``theta0``, the Newton fit starts from the
        θ̂ of this session's earlier fit whose λ is nearest (same intercept setting), and
        reuses the rows' max ‖z_i‖ of the error certificate: a fit along a λ path then
        takes a few Newton passes. The answer is the same to the certified bound
        (``result.fit.error_bound``), not bit for bit that of a fit started afresh
        (``warm=False`` gives those bits).

        Parameters
        ----------
        config : RunConfig, optional
            As in :func:`rifscale.attribute`.
        theta0 : (p,) array, optional
            Start the fit here (then ``warm`` does not choose a start).
        warm : bool, default True
            Start from the nearest earlier fit of this session.
        **overrides
            Fields of :class:`rifscale.RunConfig` (``lam``, ``metrics``, ...).

        Returns
        -------
        Attribution
            As :func:`rifscale.attribute` returns it, on the held rows.

        Examples
        --------
        >>> import numpy as np
        >>> import rifscale
        >>> from rifscale.demo import demo_corpus
        >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
        >>> with rifscale.Session(corpus) as s:
        ...     path = [s.attribute(lam=lam) for lam in (10.0, 1.0)]   # lam = 1 starts at lam = 10's theta
        ...     fresh = s.attribute(lam=1.0, warm=False)                # from the usual start
        >>> bool(np.linalg.norm(path[1].theta - fresh.theta) <= 1e-8 * np.linalg.norm(fresh.theta))
        True
        """
        from .pipeline import attribute

        self._check()
        overrides = self._overrides(overrides)
        cfg = (config or RunConfig()).replace(**overrides)
        start = None
        if theta0 is None and warm:
            start = self._nearest(cfg.lam, (cfg.fit_intercept, cfg.model))
            if start is not None:
                log.info("session: the fit starts from the theta of lam = %g", start[0])
        result = attribute(self.corpus, config, client=self.client, theta0=theta0 if start is None else start[1],
                           _layout=self.layout, _radius=self._radius.get(cfg.fit_intercept) if warm else None,
                           **overrides)
        self._fits.append((cfg.lam, (cfg.fit_intercept, cfg.model), result.theta))
        if np.isfinite(result.fit.row_norm_max):
            self._radius[cfg.fit_intercept] = float(result.fit.row_norm_max)
        return result

    def _nearest(self, lam: float, kind):
        """``(λ, θ̂)`` of the earlier fit of the same ``kind`` (intercept setting and model)
        nearest to ``lam`` on a log scale, or None."""
        same = [(lam0, theta) for lam0, kind0, theta in self._fits if kind0 == kind]
        if not same:
            return None
        return min(same, key=lambda f: abs(np.log(max(f[0], 1e-300)) - np.log(max(lam, 1e-300))))

    def group_effects(self, source, sets, **kwargs):
        """:func:`rifscale.group_effects` for a result (an Attribution or a run of this
        corpus), reading the held rows.

        Parameters
        ----------
        source : Attribution or Run
            A result of this session, or a run of the same corpus.
        sets : mapping, list or str
            The removal sets, as :func:`rifscale.group_effects` takes them.
        **kwargs
            Passed on to :func:`rifscale.group_effects` (``extra``).

        Returns
        -------
        dict of str to GroupEstimate
            One estimate per set.

        Examples
        --------
        >>> import rifscale
        >>> from rifscale.demo import demo_corpus
        >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
        >>> with rifscale.Session(corpus) as s:
        ...     est = s.group_effects(s.attribute(lam=1.0), {"first10": range(10)})
        >>> est["first10"].size
        10
        """
        from .estimates.groups import group_effects

        return group_effects(self._held(source), sets, client=self.client, **kwargs)

    def retrain(self, source, sets, **kwargs):
        """:func:`rifscale.retrain` (exact leave-set-out refits) on the held rows.

        Parameters
        ----------
        source : Attribution or Run
            A result of this session, or a run of the same corpus.
        sets : mapping, list or str
            The removal sets, as :func:`rifscale.group_effects` takes them.
        **kwargs
            Passed on to :func:`rifscale.retrain` (``tol``).

        Returns
        -------
        dict of str to Retrain
            One exact retrain per set.

        Examples
        --------
        >>> import rifscale
        >>> from rifscale.demo import demo_corpus
        >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
        >>> with rifscale.Session(corpus) as s:
        ...     fits = s.retrain(s.attribute(lam=1.0), {"first10": range(10)})
        >>> fits["first10"].converged
        True
        """
        from .validation.exact import retrain_sets

        return retrain_sets(self._held(source), sets, client=self.client, **kwargs)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release the held rows on the workers (also those results still refer to).

        Leaving a ``with`` block calls it; calling it again does nothing. A closed
        session refuses further calls.

        Returns
        -------
        None

        Examples
        --------
        >>> import rifscale
        >>> from rifscale.demo import demo_corpus
        >>> corpus = demo_corpus()  # the embedded Fashion-MNIST pair, in memory
        >>> s = rifscale.Session(corpus)
        >>> result = s.attribute(lam=1.0)
        >>> frame = result.to_dataframe()    # compute what you need first
        >>> s.close()
        >>> s
        Session(closed)
        """
        if self._closed:
            return
        self._closed = True
        if self.client is not None:
            from distributed import futures_of

            held = [self.corpus.train.X, self.corpus.train.y, self.corpus.train.ids]
            if self.corpus.test is not None:
                held += [self.corpus.test.X, self.corpus.test.y, self.corpus.test.ids]
            futures = [f for a in held for f in futures_of(a)]
            if futures and self.client.status == "running":
                self.client.cancel(futures, force=True)
        self.corpus = self._source = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return "Session(closed)"
        c = self.corpus
        return (f"Session({c.path or 'in memory'}: n = {c.n}, d = {c.d}, {self.layout['blocks']} row blocks held "
                f"in {'worker memory' if self.client is not None else 'this process'})")

    # ------------------------------------------------------------------ checks
    def _check(self) -> None:
        if self._closed:
            raise ConfigError("This rifscale Session is closed; open a new one (rifscale.Session(corpus)).")
        path = self.corpus.path
        if path is None:
            return
        try:
            now = corpus_fingerprint(path)
        except Exception as exc:  # the store is gone or no longer a Zarr group
            raise CorpusError(f"The corpus at {path!r} cannot be opened any more ({exc}); close this session.") from None
        if now != self.corpus.fingerprint:
            raise CorpusError(
                f"The corpus at {path!r} changed since this session read it (fingerprint "
                f"{self.corpus.fingerprint[:12]} -> {now[:12]}): the rows held in memory are stale. Close the "
                "session and open a new one on the corpus as it is now."
            )

    def _overrides(self, overrides: dict) -> dict:
        device = overrides.pop("device", self.device)
        if device != self.device:
            raise ConfigError(f"This session runs its kernels on device={self.device!r}; open another session "
                              f"for device={device!r}.")
        overrides.pop("persist", None)  # the session holds the rows
        return {**overrides, "device": self.device, "persist": "always"}

    def _held(self, source):
        self._check()
        fingerprint = getattr(getattr(source, "corpus", None), "fingerprint", None)
        manifest = getattr(source, "manifest", None)
        if manifest is not None:  # a run read back from disk
            fingerprint = manifest.get("corpus", {}).get("fingerprint")
        if fingerprint != self.corpus.fingerprint:
            raise CorpusError(
                "This result was computed on another corpus (or another version of it) than the one this "
                f"session holds (fingerprint {str(fingerprint)[:12]} vs {self.corpus.fingerprint[:12]})."
            )
        return _Held(corpus=self.corpus, model=source.model)
