"""Straggler handling around any strategy: which clients a round asks, which updates it keeps, when it closes.

A round rule decides only the round's bookkeeping; the strategy (what `aggregate` does with the updates
kept) is untouched, so every rule works with every strategy and rules wrap one another
(`OverSelection(Deadline(120.0), k=8)`): a wrapper, not a copy per variant. Rules are
pure: no sockets and no clock; the aggregator passes in the candidates, a seeded generator and the
seconds elapsed since it announced the round.

Contract for the aggregator's round loop (`round_rule` builds the scenario's rule):
  rule = round_rule(strategy, deadline_s, over_selection_k)     # once per run
  rng = numpy.random.default_rng(seed)                          # once per run, from the scenario seed
  per round:
    1. selected = rule.select(active_clients, rng)              # ask only these (ROUND message)
    2. serve until rule.complete(selected, kept, elapsed_s), polling no longer than
       rule.deadline_s (None: no deadline); also end when no selected client is still working
       (all updated, lost or skipped: liveness, not policy);
    3. for each valid UPDATE, in arrival order: keep it iff rule.accept(len(kept), elapsed_s),
       else record it as discarded (late or surplus) and do not aggregate it;
    4. strategy.aggregate(global_state, kept updates).
`elapsed_s` is seconds since the round was announced; `kept` lists the ids of the updates kept so far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from testbed.strategies.base import Strategy

OVER_SELECTION_FACTOR = 1.3  # ask 30 % more clients than needed (Bonawitz et al., "Towards Federated
# Learning at Scale: System Design", SysML 2019, select 130 % of the target and keep the first ones)


class RoundRule(Protocol):
    """What the aggregator consults each round (see the module docstring for when)."""

    @property  # read-only: a wrapper passes on its inner rule's
    def deadline_s(self) -> float | None:
        """Seconds after the announcement; None: the round has no deadline."""

    def select(self, candidates: Sequence[str], rng: np.random.Generator) -> list[str]: ...

    def accept(self, arrived_so_far: int, elapsed_s: float) -> bool: ...

    def complete(self, selected: Sequence[str], arrived: Sequence[str], elapsed_s: float) -> bool: ...


class WaitForAll:
    """Ask every candidate, keep every update, close when every selected client's update is in."""

    deadline_s: float | None = None  # no deadline

    def select(self, candidates: Sequence[str], rng: np.random.Generator) -> list[str]:
        """The clients asked this round, in candidate order."""
        if len(set(candidates)) != len(candidates):
            raise ValueError(f"round candidates must be distinct client ids (got {list(candidates)})")
        return list(candidates)

    def accept(self, arrived_so_far: int, elapsed_s: float) -> bool:
        """Keep an update that arrives after `arrived_so_far` kept ones, `elapsed_s` into the round?"""
        return True

    def complete(self, selected: Sequence[str], arrived: Sequence[str], elapsed_s: float) -> bool:
        """Can the round close now, with the updates of `arrived` kept?"""
        return set(selected) <= set(arrived)


class Deadline(WaitForAll):
    """Close at the deadline with what arrived; an update after it is discarded (or everyone is in earlier)."""

    deadline_s: float  # always a deadline

    def __init__(self, deadline_s: float):
        if not (math.isfinite(deadline_s) and deadline_s > 0):
            raise ValueError(f"deadline_s must be a finite number of seconds > 0 (got {deadline_s})")
        self.deadline_s = float(deadline_s)

    def accept(self, arrived_so_far: int, elapsed_s: float) -> bool:
        return elapsed_s <= self.deadline_s

    def complete(self, selected: Sequence[str], arrived: Sequence[str], elapsed_s: float) -> bool:
        return elapsed_s >= self.deadline_s or super().complete(selected, arrived, elapsed_s)


class OverSelection:
    """Ask ceil(k * factor) clients drawn at random, keep the first k updates, discard later ones.

    Wraps another rule (`inner`): its candidates are the pool drawn from, its deadline still holds,
    and the round also closes when `inner` would close it.
    """

    def __init__(self, inner: RoundRule, k: int, factor: float = OVER_SELECTION_FACTOR):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"over-selection k (updates a round needs) must be an integer >= 1 (got {k!r})")
        if not (math.isfinite(factor) and factor >= 1):
            raise ValueError(f"over-selection factor must be a finite number >= 1 (got {factor})")
        self.inner, self.k, self.factor = inner, k, float(factor)

    @property
    def deadline_s(self) -> float | None:
        return self.inner.deadline_s

    def select(self, candidates: Sequence[str], rng: np.random.Generator) -> list[str]:
        pool = self.inner.select(candidates, rng)
        # the tolerance keeps 50 * 1.1 = 55.00000000000001 at 55 clients, not 56
        wanted = min(len(pool), math.ceil(self.k * self.factor - 1e-9))
        if wanted == len(pool):  # everyone is needed: no draw, so the generator is not advanced
            return pool
        chosen = rng.choice(len(pool), size=wanted, replace=False)
        return [pool[index] for index in sorted(chosen)]  # candidate order, for readable logs

    def accept(self, arrived_so_far: int, elapsed_s: float) -> bool:
        return arrived_so_far < self.k and self.inner.accept(arrived_so_far, elapsed_s)

    def complete(self, selected: Sequence[str], arrived: Sequence[str], elapsed_s: float) -> bool:
        # fewer selected than k (a small fleet): everyone's update completes the round
        return len(arrived) >= min(self.k, len(selected)) or self.inner.complete(selected, arrived, elapsed_s)


def round_rule(strategy: Strategy, deadline_s: float, over_selection_k: int | None = None,
               factor: float = OVER_SELECTION_FACTOR) -> RoundRule:
    """The rule for a strategy: no deadline if it `waits_for_all`, else `deadline_s`; first-k if asked."""
    rule = WaitForAll() if strategy.waits_for_all else Deadline(deadline_s)
    return rule if over_selection_k is None else OverSelection(rule, over_selection_k, factor)
