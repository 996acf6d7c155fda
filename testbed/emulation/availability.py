"""When a client is reachable, and which faults it suffers: per-round draws from the client's seed.

Availability: online at a round's start with `online_probability`, and, when periods are given,
only during the online part of the alternating online_s / offline_s cycle, or inside one of the
explicit `intervals` (repeating every `period_s`); times are emulated seconds since the client
started, which begins online. Faults: each round, a crash with `crash_rate` (the process
dies abruptly mid-training, as on a power loss, and the launcher restarts it like a reboot) or a
freeze with `freeze_rate` (the process hangs for `freeze_s`: no heartbeats, no messages).
"""

from __future__ import annotations

import numpy as np

from testbed.config.schema import Availability, Failure

CRASH_EXIT_CODE = 86  # exit status of an injected crash: the launcher restarts such a client


class DeviceSchedule:
    """Online/offline and fault draws for one client; the same seed gives the same schedule."""

    def __init__(self, availability: Availability, failure: Failure, seed: int):
        self.availability, self.failure, self.seed = availability, failure, seed

    def _rng(self, round_index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, round_index, stream])

    def online(self, round_index: int, emulated_s: float) -> bool:
        """Whether the device is reachable when round `round_index` starts, `emulated_s` after it booted."""
        availability = self.availability
        if availability.intervals is not None:  # explicit periods (e.g. from a FedScale behaviour trace)
            t = emulated_s % availability.period_s if availability.period_s else emulated_s
            if not any(start <= t < end for start, end in availability.intervals):
                return False
        online_s, offline_s = availability.online_s, availability.offline_s
        if online_s is not None and offline_s is not None:  # the two go together (Availability.problems)
            cycle = online_s + offline_s
            if emulated_s % cycle >= online_s:
                return False
        return bool(self._rng(round_index, 0).random() < availability.online_probability)

    def fault(self, round_index: int) -> str | None:
        """"crash", "freeze" or None for this round (crash checked first)."""
        draw = self._rng(round_index, 1).random()
        if draw < self.failure.crash_rate:
            return "crash"
        if draw < self.failure.crash_rate + self.failure.freeze_rate:
            return "freeze"
        return None

    def fault_step(self, round_index: int, steps: int) -> int:
        """The local step (0-based) after which a drawn fault strikes: somewhere mid-training."""
        return int(self._rng(round_index, 2).integers(0, max(1, steps)))
