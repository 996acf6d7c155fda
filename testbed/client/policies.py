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

from dataclasses import dataclass

from testbed.client.costs import DepthCost
from testbed.emulation.link import LinkModel
from testbed.emulation.memory import MemoryBudget
from testbed.model.early_exit import exit_depth

DEADLINE_MARGIN = 0.85  # plan to finish within 85 % of the deadline: jitter, loss and waiting room


@dataclass
class DeviceModel:
    """Everything a policy knows about its device: measured costs, speed, link, memory, workload."""

    exits: tuple[int, ...]
    costs: dict[int, DepthCost]
    throughput: float  # host cores the device is worth: speed x threads
    link: LinkModel
    memory: MemoryBudget
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


class StaticPolicy:
    """`static`: always the profile's cap, within memory."""

    def __init__(self, device: DeviceModel, max_exit: int | None, preferred: int | None):
        self.device = device
        cap = exit_depth(device.exits, max_exit)
        self.depth = max([d for d in device.fitting() if d <= cap] or [device.fitting()[0]])

    def choose(self, deadline_s: float, preferred: int | None = None) -> int:
        return self.depth

    def observe(self, depth: int, timings: dict) -> None:
        """Measured round timings (emulated seconds); the static policy ignores them."""


class BudgetPolicy:
    """`budget`: the deepest exit predicted to fit the deadline (from the costs measured at join)."""

    def __init__(self, device: DeviceModel, max_exit: int | None, preferred: int | None):
        self.device, self.preferred = device, preferred
        self.compute_scale = self.link_scale = 1.0

    def budget_depth(self, deadline_s: float) -> int:
        fitting = self.device.fitting()
        in_time = [d for d in fitting
                   if sum(self.device.predicted(d, self.compute_scale, self.link_scale).values())
                   <= DEADLINE_MARGIN * deadline_s]
        return max(in_time) if in_time else fitting[0]

    def choose(self, deadline_s: float, preferred: int | None = None) -> int:
        return self.budget_depth(deadline_s)

    def observe(self, depth: int, timings: dict) -> None:
        """Budget plans from the join-time measurements only."""


class TaskPolicy(BudgetPolicy):
    """`task`: the budget's depth, but no deeper than the task's preferred exit."""

    def choose(self, deadline_s: float, preferred: int | None = None) -> int:
        budget = self.budget_depth(deadline_s)
        wanted = preferred or self.preferred  # the aggregator's pick for "auto" (per round) or the scenario's
        return min(budget, wanted) if wanted else budget


class AdaptivePolicy(TaskPolicy):
    """`adaptive`: task, with predictions corrected every round by moving averages of measured/predicted."""

    def __init__(self, device: DeviceModel, max_exit: int | None, preferred: int | None, ema: float = 0.5):
        super().__init__(device, max_exit, preferred)
        self.ema = ema

    def observe(self, depth: int, timings: dict) -> None:
        predicted = self.device.predicted(depth)
        compute = timings["compute_s"] / max(predicted["compute_s"], 1e-9)
        link = (timings["download_s"] + timings.get("upload_s", 0.0)) / max(
            predicted["download_s"] + (predicted["upload_s"] if "upload_s" in timings else 0.0), 1e-9)
        self.compute_scale += self.ema * (compute - self.compute_scale)
        self.link_scale += self.ema * (link - self.link_scale)


POLICIES = {"static": StaticPolicy, "budget": BudgetPolicy, "task": TaskPolicy, "adaptive": AdaptivePolicy}


def make_policy(name: str, device: DeviceModel, max_exit: int | None, preferred: int | None, ema: float):
    if name not in POLICIES:
        raise ValueError(f"unknown exit policy '{name}' (allowed: {', '.join(POLICIES)})")
    if name == "adaptive":
        return AdaptivePolicy(device, max_exit, preferred, ema)
    return POLICIES[name](device, max_exit, preferred)
