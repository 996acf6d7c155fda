"""Exit policies: how a client picks the depth it trains this round.

- static:   the profile's cap (`max_exit`).
- budget:   the deepest exit whose predicted round time (download + local steps + upload, from this
            device's measured per-depth step cost, its speed and its link) fits the deadline.
- task:     min(budget depth, the task's preferred exit).
- adaptive: task, re-decided every round from measured times (moving averages), so a client that
            slows down mid-run drops to a shallower exit instead of straggling.
Every policy only ever picks a depth whose predicted memory fits the profile's `memory_mb`; when
even the shallowest exit does not fit, it is still chosen (the round then fails as out of memory,
which is what the emulated device would do).

A resumed run (`testbed run --resume`) gives every policy what decides its depth on the aggregator's side (the
`auto` preferred exits, the dilation: see aggregator/checkpoint.py), but its clients are new processes that
measure their step costs, memory peaks and (adaptive) round times afresh: those are measurements of the host,
not state, and two uninterrupted runs of the same seed do not measure them alike either. So static and task
depths are reproduced by a resume wherever the budget is not at its edge; adaptive depths only as far as the
host's timings are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from testbed.model.geometry import exit_depth

DEADLINE_MARGIN = 0.85  # plan to finish within 85 % of the deadline: jitter, loss and waiting room
DEFAULT_EMA = 0.5  # weight of the newest timing in the adaptive moving average (the schema's default too)


# What a policy reads of its device, declared here rather than imported: this module stays free of torch and of
# the emulation (the config's allowed policy names come from its registry, so testbed.config imports it).
class StepCost(Protocol):
    """One depth's measured cost (testbed/client/costs.py DepthCost). Read-only properties: a frozen dataclass's
    fields are, and a plain attribute here would ask for settable ones."""

    @property
    def step_cpu_s(self) -> float:
        """Host CPU seconds of one local step, all threads."""

    @property
    def state_bytes(self) -> int:
        """Bytes of the layers and heads trained, each way per round."""


class LinkTimes(Protocol):
    """The link as a policy plans with it (testbed/emulation/link.py LinkModel)."""

    def expected_s(self, nbytes: int, direction: str) -> float:
        """Mean emulated seconds to move `nbytes` "up" or "down"."""


class MemoryFit(Protocol):
    """The memory budget (testbed/emulation/memory.py MemoryBudget)."""

    def fits(self, depth: int) -> bool:
        """True when training to `depth` is predicted to stay within the device's memory."""


@dataclass
class DeviceModel:
    """Everything a policy knows about its device: measured costs, speed, link, memory, workload."""

    exits: tuple[int, ...]
    costs: Mapping[int, StepCost]
    throughput: float  # host cores the device is worth: speed x threads
    link: LinkTimes
    memory: MemoryFit
    local_steps: int

    def fitting(self) -> list[int]:
        """Exits whose memory fits, shallowest first; at least the shallowest exit."""
        return [d for d in self.exits if self.memory.fits(d)] or [self.exits[0]]

    def predicted(self, depth: int, compute_scale: float = 1.0, link_scale: float = 1.0) -> dict[str, float]:
        """Emulated seconds of each phase at `depth`; the scales correct for what was measured since."""
        cost = self.costs[depth]
        return {"download_s": link_scale * self.link.expected_s(cost.state_bytes, "down"),
                "compute_s": compute_scale * self.local_steps * cost.step_cpu_s / self.throughput,
                "upload_s": link_scale * self.link.expected_s(cost.state_bytes, "up")}


class ExitPolicy:
    """What the client worker calls on a policy (testbed/client/worker.py): it builds one after measuring its
    costs (`make_policy`), then every round calls `choose` (unless the strategy imposes a depth) and, once the
    round's update is sent, `observe` with the round's measured timings.

    A new policy is a subclass with its own `name`, listed in POLICIES: the scenario's `exit_policy.name`
    accepts the registry's names (testbed/config/names.py)."""

    name = "base"

    def __init__(self, device: DeviceModel, max_exit: int | None, preferred: int | None, ema: float = DEFAULT_EMA):
        """max_exit: the profile's cap (1-based exit index; None = the deepest exit); preferred: the task's
        preferred depth (transformer layers; None = none); ema: weight of the newest timing in a moving average.
        Every policy takes the same settings and ignores those it does not use."""
        self.device, self.max_exit, self.preferred, self.ema = device, max_exit, preferred, ema

    def choose(self, deadline_s: float, preferred: int | None = None) -> int:
        """The depth (transformer layers, one of device.exits) to train this round, whose deadline is `deadline_s`
        emulated seconds; `preferred` is the aggregator's pick for an `auto` preferred exit this round."""
        raise NotImplementedError

    def observe(self, depth: int, timings: Mapping[str, float]) -> None:
        """The round's measured emulated seconds (download_s, compute_s, upload_s); ignored unless overridden."""


class StaticPolicy(ExitPolicy):
    """`static`: always the profile's cap, within memory."""

    name = "static"

    def __init__(self, device: DeviceModel, max_exit: int | None, preferred: int | None, ema: float = DEFAULT_EMA):
        super().__init__(device, max_exit, preferred, ema)
        cap = exit_depth(device.exits, max_exit)
        self.depth = max([d for d in device.fitting() if d <= cap] or [device.fitting()[0]])

    def choose(self, deadline_s: float, preferred: int | None = None) -> int:
        return self.depth


class BudgetPolicy(ExitPolicy):
    """`budget`: the deepest exit predicted to fit the deadline (from the costs measured at join)."""

    name = "budget"

    def __init__(self, device: DeviceModel, max_exit: int | None, preferred: int | None, ema: float = DEFAULT_EMA):
        super().__init__(device, max_exit, preferred, ema)
        self.compute_scale = self.link_scale = 1.0  # measured / predicted; only the adaptive policy moves them

    def budget_depth(self, deadline_s: float) -> int:
        fitting = self.device.fitting()
        in_time = [d for d in fitting
                   if sum(self.device.predicted(d, self.compute_scale, self.link_scale).values())
                   <= DEADLINE_MARGIN * deadline_s]
        return max(in_time) if in_time else fitting[0]

    def choose(self, deadline_s: float, preferred: int | None = None) -> int:
        return self.budget_depth(deadline_s)


class TaskPolicy(BudgetPolicy):
    """`task`: the budget's depth, but no deeper than the task's preferred exit."""

    name = "task"

    def choose(self, deadline_s: float, preferred: int | None = None) -> int:
        budget = self.budget_depth(deadline_s)
        wanted = preferred or self.preferred  # the aggregator's pick for "auto" (per round) or the scenario's
        return min(budget, wanted) if wanted else budget


class AdaptivePolicy(TaskPolicy):
    """`adaptive`: task, with predictions corrected every round by moving averages of measured/predicted."""

    name = "adaptive"

    def observe(self, depth: int, timings: Mapping[str, float]) -> None:
        predicted = self.device.predicted(depth)
        compute = timings["compute_s"] / max(predicted["compute_s"], 1e-9)
        link = (timings["download_s"] + timings.get("upload_s", 0.0)) / max(
            predicted["download_s"] + (predicted["upload_s"] if "upload_s" in timings else 0.0), 1e-9)
        self.compute_scale += self.ema * (compute - self.compute_scale)
        self.link_scale += self.ema * (link - self.link_scale)


# The registry: name -> policy, in the order errors list them. The scenario schema allows exactly these names.
POLICIES: dict[str, type[ExitPolicy]] = {cls.name: cls for cls in (StaticPolicy, BudgetPolicy, TaskPolicy,
                                                                      AdaptivePolicy)}


def make_policy(name: str, device: DeviceModel, max_exit: int | None, preferred: int | None,
                ema: float = DEFAULT_EMA) -> ExitPolicy:
    """The policy registered under `name`; an unknown name fails listing the valid ones."""
    if name not in POLICIES:
        raise ValueError(f"unknown exit policy '{name}' (allowed: {', '.join(POLICIES)})")
    return POLICIES[name](device, max_exit, preferred, ema)
