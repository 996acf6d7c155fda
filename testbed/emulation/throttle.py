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
    """Paces one phase of work: `start()`, `step()` after each chunk, `finish()` for the report.

    `paced=False`: something else paces the process (a cgroup CPU quota); the throttle only measures.
    `step_cpu_s` (`emulation.compute: modeled`): each chunk is billed these host CPU seconds, whatever
    it took here, so that its emulated time is a function of the run's settings alone.
    """

    def __init__(self, throughput: float, clock: Clock, *, paced: bool = True, step_cpu_s: float | None = None):
        if throughput <= 0:
            raise ValueError(f"throughput must be > 0 (got {throughput})")
        self.throughput, self.clock, self.paced = throughput, clock, paced
        self.step_cpu_s = step_cpu_s
        self._steps = 0  # chunks done since start()
        self._cpu_start = 0.0  # host CPU seconds at start()
        self._work0 = 0.0  # work (billed CPU seconds) at the latest rate change
        self._work_start = 0.0  # work (billed CPU seconds) at start()
        self._started = 0.0  # emulated seconds (clock.now() at start)
        self._target_before = 0.0  # emulated seconds of work done at earlier rates (see retune)

    def _work(self, cpu_now: float) -> float:
        """Billed CPU seconds of the work so far: measured (the process's CPU clock), or modeled per step."""
        return cpu_now if self.step_cpu_s is None else self._steps * self.step_cpu_s

    def start(self) -> None:
        self._steps = 0
        self._cpu_start = time.process_time()
        self._work0 = self._work_start = self._work(self._cpu_start)
        self._started = self.clock.now()
        self._target_before = 0.0

    def _target(self, cpu_now: float) -> float:
        """Emulated seconds the work done since start() (until `cpu_now`, host CPU seconds) should take."""
        return self._target_before + (self._work(cpu_now) - self._work0) / self.throughput

    def pace(self, cpu_now: float | None = None) -> None:
        """Let the clock catch up with the work done so far."""
        if self.paced:
            self.clock.advance_to(self._started + self._target(time.process_time() if cpu_now is None else cpu_now))

    def step(self) -> None:
        """One chunk of work is done: count it, then pace."""
        self._steps += 1
        self.pace()

    def retune(self, throughput: float, since_t: float | None = None) -> None:
        """A new pace (an injected slowdown): from now on, the work done so far keeping its old pace; or, when
        `since_t` (emulated seconds on this clock) is no later than this phase's start, for all of the phase's
        work. An event clock's client reads an injection some host time after it was scripted, at
        `since_t`: a phase that began after it must be billed at the new pace throughout."""
        cpu_now = time.process_time()
        if since_t is not None and since_t <= self._started:
            self._target_before, self._work0 = 0.0, self._work_start
        else:
            self._target_before, self._work0 = self._target(cpu_now), self._work(cpu_now)
        self.throughput = throughput

    def finish(self) -> ThrottleReport:
        cpu_now = time.process_time()  # one reading: the report's CPU and target seconds describe the same work
        self.pace(cpu_now)
        return ThrottleReport(cpu_now - self._cpu_start, self._target(cpu_now),
                              self.clock.now() - self._started, self.clock.dilation)
