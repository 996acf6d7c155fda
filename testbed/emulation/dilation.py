"""Time dilation: one factor that stretches every emulated duration when the host is oversubscribed.

A client whose profile says `speed` s (per core, relative to one host core) and `threads` t computes
as fast as s x t host cores would (intra-op threads assumed to scale linearly). When the fleet's
demand, the sum over clients busy at once, exceeds what the host can give, some clients would be
CPU-starved and fall behind their targets, which distorts exactly the ratios we measure. Stretching
every duration (compute, transfer, deadline) by a common factor f keeps the ratios: a client then
needs only s x t / f cores. All reported times are emulated seconds = wall seconds / f.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from testbed.config.loader import ClientSpec
from testbed.config.schema import EmulationSpec, Profile, Scenario


def demand_cores(profile: Profile) -> float:
    """Host cores the profile's device is worth while it computes."""
    return profile.speed * profile.threads


def host_cores(spec: EmulationSpec) -> int:
    """Cores available here: the scenario's figure, else this process's CPU affinity."""
    return spec.host_cores or len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Dilation:
    factor: float  # wall seconds per emulated second (>= 1)
    demand: float  # host cores the busy fleet asks for
    cores: int  # host cores there are
    reason: str  # one sentence, shown by the run and kept in its events

    def to_event(self) -> dict:
        return {"factor": round(self.factor, 4), "demand_cores": round(self.demand, 3), "host_cores": self.cores,
                "reason": self.reason}


def choose_dilation(spec: EmulationSpec, profiles: Iterable[Profile], concurrent: int | None = None) -> Dilation:
    """The factor for a fleet whose selected clients may all compute at once.

    `concurrent`: clients selected per round (None = all); the busiest that many count.
    """
    profiles = list(profiles)
    demands = sorted((demand_cores(profile) for profile in profiles), reverse=True)
    demand = sum(demands[:concurrent] if concurrent else demands)
    cores = host_cores(spec)
    usable = cores * spec.headroom
    # and no single client may need more cores than it has threads to run on
    fastest = max(profiles, key=lambda p: demand_cores(p) / min(p.threads, p.cores, cores), default=None)
    single = demand_cores(fastest) / min(fastest.threads, fastest.cores, cores) if fastest else 1.0
    needed = max(1.0, demand / usable, single)
    if spec.dilation is not None:
        verdict = ("enough" if spec.dilation >= needed else
                   f"below the {needed:.2f} needed: clients may be CPU-starved (see each update's overshoot)")
        return Dilation(spec.dilation, demand, cores,
                        f"set by the scenario: {spec.dilation:g}x ({verdict}; fleet demand {demand:.2f} cores "
                        f"on {cores} host cores)")
    if needed == 1.0:
        return Dilation(1.0, demand, cores, f"none needed: fleet demand {demand:.2f} cores fits "
                                            f"{usable:.2f} of {cores} host cores ({spec.headroom:.0%} headroom)")
    # (fastest is None only without profiles, whose factor of 1.0 was returned above)
    if fastest is not None and single > demand / usable:
        return Dilation(needed, demand, cores,
                        f"automatic: profile {fastest.name} alone is worth {demand_cores(fastest):.2f} cores but "
                        f"runs {min(fastest.threads, fastest.cores, cores)} thread(s) here")
    return Dilation(needed, demand, cores,
                    f"automatic: fleet demand {demand:.2f} cores (sum of speed x threads) over {usable:.2f} usable "
                    f"of {cores} host cores ({spec.headroom:.0%} headroom)")


def fleet_dilation(scenario: Scenario, clients: list[ClientSpec]) -> Dilation:
    """The run's initial factor (the launcher and the aggregator must agree on it)."""
    if scenario.emulation.clock == "events":  # no process waits: emulated time costs no host time
        cores = host_cores(scenario.emulation)
        demand = sum(demand_cores(client.profile) for client in clients)
        return Dilation(1.0, demand, cores, "none: the event clock bills compute and transfers instead of "
                                            "waiting for them")
    strategy = scenario.strategy
    concurrent = (math.ceil(strategy.clients_per_round * strategy.over_selection - 1e-9)
                  if strategy.clients_per_round else None)
    return choose_dilation(scenario.emulation, [client.profile for client in clients], concurrent)


def raised(factor: float, worst_overshoot: float, tolerance: float = 0.10) -> float | None:
    """A larger factor when a client missed its compute target by more than `tolerance`, else None.

    `worst_overshoot` = achieved wall / target wall of the most starved client last round. The
    new factor absorbs that shortfall with the same headroom margin, at most doubling per round.
    """
    if worst_overshoot <= 1.0 + tolerance:
        return None
    return factor * min(2.0, worst_overshoot * (1.0 + tolerance))
