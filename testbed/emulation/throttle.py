"""Compute slowdown by duty cycling: emulated time = own CPU time / throughput.

`throughput` is in host cores (profile speed x threads): a chunk of work that took c CPU seconds
here should take c / throughput emulated seconds on the device (dilation x as many host seconds
on a `RealClock`). Pacing happens between work chunks (a training step, ~0.05-1 s of CPU), so the
process runs at full speed inside a chunk and then lets its clock catch up with the work done:
the same average rate as a slower device, measured by the process's own CPU clock (all its
threads), hence independent of what else the host runs. A chunk that took longer than its target
(the host was busy) cannot be undone; `overshoot` reports it, and the aggregator raises the
dilation when it grows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from testbed.emulation.clock import Clock


@dataclass(frozen=True)
class ThrottleReport:
    cpu_s: float  # host CPU seconds the work took (all threads)
    target_s: float  # emulated seconds the device should take: cpu_s / throughput
    elapsed_s: float  # emulated seconds it took on the clock, waits included
    dilation: float  # the clock's host seconds per emulated second

    @property
    def wall_s(self) -> float:
        """Host seconds it took (on a `RealClock`)."""
        return self.elapsed_s * self.dilation

    @property
    def overshoot(self) -> float:
        """Achieved over target time: 1.0 = on target, 1.2 = 20 % slower than the device."""
        return self.elapsed_s / self.target_s if self.target_s > 0 else 1.0


class ComputeThrottle:
    """Paces one phase of work: `start()`, `pace()` after each chunk, `finish()` for the report.

    `paced=False`: something else paces the process (a cgroup CPU quota); the throttle only measures.
    """

    def __init__(self, throughput: float, clock: Clock, *, paced: bool = True):
        if throughput <= 0:
            raise ValueError(f"throughput must be > 0 (got {throughput})")
        self.throughput, self.clock, self.paced = throughput, clock, paced
        self._cpu0 = self._cpu_start = 0.0  # host CPU seconds
        self._started = 0.0  # emulated seconds (clock.now() at start)
        self._target_before = 0.0  # emulated seconds of work done at earlier rates (see retune)

    def start(self) -> None:
        self._cpu0 = self._cpu_start = time.process_time()
        self._started = self.clock.now()
        self._target_before = 0.0

    def _target(self, cpu_now: float | None = None) -> float:
        """Emulated seconds the work done since start() (until `cpu_now`, host CPU seconds) should take."""
        cpu_now = time.process_time() if cpu_now is None else cpu_now
        return self._target_before + (cpu_now - self._cpu0) / self.throughput

    def pace(self, cpu_now: float | None = None) -> None:
        """Let the clock catch up with the work done so far."""
        if self.paced:
            self.clock.advance_to(self._started + self._target(cpu_now))

    def retune(self, throughput: float) -> None:
        """A new pace from now on (an injected slowdown); the work done so far keeps its old pace."""
        self._target_before, self._cpu0 = self._target(), time.process_time()
        self.throughput = throughput

    def finish(self) -> ThrottleReport:
        cpu_now = time.process_time()  # one reading: the report's CPU and target seconds describe the same work
        self.pace(cpu_now)
        return ThrottleReport(cpu_now - self._cpu_start, self._target(cpu_now),
                              self.clock.now() - self._started, self.clock.dilation)
