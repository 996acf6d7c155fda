"""The device a client process becomes at WELCOME: built once, fixed for the process's life."""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from testbed.client.costs import DepthCost
from testbed.client.injected import StressInjection
from testbed.client.local import LocalSession
from testbed.client.policies import DeviceModel, make_policy
from testbed.config.convert import from_data
from testbed.config.loader import ClientSpec
from testbed.emulation.availability import DeviceSchedule
from testbed.emulation.device import apply_cpu
from testbed.emulation.dilation import demand_cores
from testbed.emulation.link import LinkModel
from testbed.emulation.memory import MemoryBudget, release_free_memory
from testbed.emulation.slots import compute_slots
from testbed.model.early_exit import exit_depth


class ExitPolicy(Protocol):
    """What the round asks of an exit policy (`client/policies.py`)."""

    def choose(self, deadline_s: float, preferred: int | None) -> int: ...

    def observe(self, depth: int, timings: dict[str, float]) -> None: ...


@dataclass(frozen=True)
class Device:
    """One client's emulated device. Frozen: its parts are fixed, though some keep their own state
    (the policy learns, the memory budget observes peaks, the injection follows its control file)."""

    session: LocalSession  # data shard, model, local training
    policy: ExitPolicy  # which depth to train each round
    schedule: DeviceSchedule  # when it is online, which faults it suffers
    memory: MemoryBudget  # the profile's memory and what each depth needs
    link: LinkModel  # the profile's link, seeded by the client's seed (rounds reseed the shaper's copy)
    throughput: float  # host cores the profile is worth while it computes (speed x threads)
    injection: StressInjection  # what a stress test changes; inert otherwise
    lean: bool  # data and model are released between rounds (a large fleet of which a few train)
    # compute: modeled: the run's host CPU seconds per step by depth, billed whatever a step takes here; None: measured
    modeled: dict[int, float] | None
    slots: AbstractContextManager  # held while computing (event clock: emulation/slots.py); else a no-op
    info: dict  # the "device" field of the ready heartbeat: CPU placement, throughput, costs per depth


def become_device(run: dict, frontend: dict[str, np.ndarray], control: Path | None, run_dir: Path | None) -> Device:
    """Apply the profile (CPU first, before any work), load data and model, measure what depths cost."""
    spec = from_data(ClientSpec, run["client"], source="aggregator WELCOME")
    cpu = apply_cpu(spec.profile, run.get("slot", 0))
    session = LocalSession(run, frontend)
    slots = compute_slots(session.scenario.emulation, run_dir)
    with slots:
        costs = session.measure_costs()
    modeled = {int(depth): float(seconds) for depth, seconds in run["costs"].items()} if run.get("costs") else None
    if modeled is not None:  # the exit policy plans with what a round will be billed
        costs = {d: dataclasses.replace(c, step_cpu_s=modeled[d]) for d, c in costs.items()}
    lean = session.scenario.strategy.clients_per_round is not None
    if lean:
        session.release()
    release_free_memory()
    link = LinkModel(spec.link, session.seed)
    throughput = demand_cores(spec.profile)
    memory = MemoryBudget(spec.profile.memory_mb, {d: c.peak_mb for d, c in costs.items()})
    policy = _policy(session, DeviceModel(session.exits, costs, throughput, link, memory,
                                          session.scenario.training.local_steps))
    info = {**cpu.to_event(), "throughput_cores": round(throughput, 4), "costs": _costs_event(costs)}
    return Device(session, policy, DeviceSchedule(spec.profile.availability, spec.profile.failure, session.seed),
                  memory, link, throughput, StressInjection(control, spec.link, session.seed), lean, modeled, slots,
                  info)


def _policy(session: LocalSession, model: DeviceModel) -> ExitPolicy:
    """The scenario's exit policy for this client's task and profile."""
    settings, spec = session.scenario.exit_policy, session.spec
    preferred = settings.preferred_exits.get(spec.task)  # an exit index, "auto" or None
    preferred_depth = exit_depth(session.exits, preferred) if isinstance(preferred, int) else None
    return make_policy(settings.name, model, spec.profile.max_exit, preferred_depth, settings.ema)


def _costs_event(costs: dict[int, DepthCost]) -> dict:
    return {str(d): {"step_cpu_s": round(c.step_cpu_s, 4), "peak_mb": round(c.peak_mb, 1),
                     "state_bytes": c.state_bytes} for d, c in costs.items()}
