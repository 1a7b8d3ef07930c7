"""The search behind the flip-set audits (docs/design.md §8.11): pure driver logic.

A *target* is something a removal set can achieve, judged by an exact retrain: the flip
of one test point's predicted label, or a fall of the test accuracy. Its search has two
phases, each a state machine that names the removal sets it wants judged next; the
caller judges every target's sets of one round in ONE batched retrain
(:func:`rifscale.audit.audit` does), so that a round costs a few passes over the data
whatever the number of targets and sets.

* :class:`Bisection`: over the sizes k of the greedy prefixes ``order[:k]`` (the training
  rows sorted by their RIF effect). It keeps a bracket ``lo < hi``: the prefix ``hi``
  achieves the target (checked), the prefix ``lo`` does not (checked; 0, removing
  nothing, never does). Until a size achieves it the candidates grow geometrically from
  the RIF estimate; then each round checks up to ``fanout`` sizes spread evenly inside
  the bracket. It ends with ``hi − lo = 1``: the prefix ``hi`` achieves the target and the
  one smaller does not; when achieving it is monotone in k (it is in practice), ``hi`` is
  the smallest prefix that does.
* :class:`Refinement`: from the set found, it checks every set less one member; a member
  whose removal is not needed (the set without it still achieves the target) is dropped,
  the least needed first, and a round also tries dropping all (and half) of the others
  found droppable before. It ends when every member is needed, checked by retrain.

A judgement is ``(achieved, score, fit)``: ``score`` orders achieving sets (lower = with
more room, e.g. the signed retrained margin); ``fit`` is the retrain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Bisection:
    """Smallest achieving prefix of ``order`` (see the module notes)."""

    order: np.ndarray  # training rows, most helpful first
    guess: float = math.inf  # the RIF estimate of the smallest achieving size
    fanout: int = 8
    lo: int = 0
    hi: int | None = None
    judged: dict = field(default_factory=dict)  # k -> (achieved, score, fit)
    rounds: int = 0

    @property
    def kmax(self) -> int:
        return int(self.order.size)

    @property
    def done(self) -> bool:
        if self.hi is not None:
            return self.hi - self.lo <= 1
        return self.lo >= self.kmax

    def candidates(self) -> list[int]:
        if self.done:
            return []
        if self.hi is None:  # grow: geometric from the estimate (or from lo + 1)
            start = self.lo + 1
            if not self.judged and math.isfinite(self.guess):
                start = max(start, int(self.guess) // 4)
            ks = {min(self.kmax, start * 2**j) for j in range(self.fanout)}
        else:  # shrink the bracket: sizes spread evenly strictly inside it
            ks = {int(round(v)) for v in np.linspace(self.lo, self.hi, self.fanout + 2)[1:-1]}
        upper = self.hi if self.hi is not None else self.kmax + 1
        return sorted(k for k in ks if self.lo < k < upper and k not in self.judged)

    def sets(self) -> dict:
        return {k: self.order[:k] for k in self.candidates()}

    def take(self, judged: dict) -> None:
        """Record ``{k: (achieved, score, fit)}`` and narrow the bracket."""
        self.rounds += 1
        self.judged.update(judged)
        hits = [k for k, j in self.judged.items() if j[0]]
        self.hi = min(hits) if hits else None
        misses = [k for k, j in self.judged.items() if not j[0] and (self.hi is None or k < self.hi)]
        self.lo = max(misses, default=0)

    @property
    def found(self):
        """``(rows, judgement)`` of the prefix ``hi``, or None."""
        return (np.sort(self.order[: self.hi]), self.judged[self.hi]) if self.hi is not None else None


@dataclass
class Refinement:
    """Drops members whose removal is not needed, until every one is (see the module notes)."""

    rows: np.ndarray  # the current set (sorted training rows)
    judgement: tuple  # (achieved, score, fit) of the current set
    pending: list = field(default_factory=list)  # members found droppable from an earlier set, least needed first
    minimal: bool = False
    rounds: int = 0
    dropped: int = 0

    @property
    def done(self) -> bool:
        return self.minimal

    def sets(self) -> dict:
        """``{("single", j): set − {j}}`` for every member, and ``{("multi", m): set − the
        first m pending}`` for a few m ≥ 2."""
        if self.rows.size <= 1:  # removing nothing changes nothing: a lone member is needed
            self.minimal = True
        if self.minimal:
            return {}
        out = {("single", int(j)): self.rows[self.rows != j] for j in self.rows}
        m = min(len(self.pending), self.rows.size - 1)  # never the empty set: removing nothing changes nothing
        while m >= 2:
            drop = np.asarray(self.pending[:m])
            out[("multi", m)] = self.rows[~np.isin(self.rows, drop)]
            m //= 2
        return out

    def take(self, judged: dict) -> None:
        self.rounds += 1
        multi = [m for (kind, m), j in judged.items() if kind == "multi" and j[0]]
        if multi:
            m = max(multi)
            drop = np.asarray(self.pending[:m])
            self.rows, self.judgement = self.rows[~np.isin(self.rows, drop)], judged[("multi", m)]
            self.pending, self.dropped = [], self.dropped + m
            return
        droppable = sorted(((j[1], member) for (kind, member), j in judged.items() if kind == "single" and j[0]),
                           key=lambda t: t[0])
        if not droppable:
            self.minimal = True  # every member is needed: checked by retrain
            return
        best = droppable[0][1]
        self.rows, self.judgement = self.rows[self.rows != best], judged[("single", best)]
        self.pending = [member for _, member in droppable[1:]]
        self.dropped += 1
