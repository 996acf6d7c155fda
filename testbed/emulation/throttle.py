"""Compute slowdown by duty cycling: the process sleeps so that wall time = own CPU time / throughput.

`throughput` is in host cores (profile speed x threads); with dilation f the target wall time is
f x CPU time / throughput. Pacing happens between work chunks (a training step, ~0.05-1 s of CPU),
so the process runs at full speed inside a chunk and sleeps after it: the same average rate as a
slower device, measured by the process's own CPU clock (all its threads), hence independent of what
else the host runs. A chunk that took longer in wall time than its target (the host was busy) cannot
be undone; `overshoot` reports it, and the aggregator raises the dilation when it grows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ThrottleReport:
    cpu_s: float  # CPU seconds the work took on this host (all threads)
    target_s: float  # wall seconds the emulated device should take: dilation x cpu_s / throughput
    wall_s: float  # wall seconds it took, sleeps included

    @property
    def overshoot(self) -> float:
        """Achieved over target wall time: 1.0 = on target, 1.2 = 20 % slower than the device."""
        return self.wall_s / self.target_s if self.target_s > 0 else 1.0


class ComputeThrottle:
    """Paces one phase of work: `start()`, `pace()` after each chunk, `finish()` for the report."""

    def __init__(self, throughput: float, dilation: float = 1.0, sleep=time.sleep):
        if throughput <= 0 or dilation < 1:
            raise ValueError(f"throughput must be > 0 and dilation >= 1 (got {throughput}, {dilation})")
        self.dilation = dilation
        self.seconds_per_cpu_second = dilation / throughput
        self._sleep = sleep
        self._cpu0 = self._wall0 = self._cpu_start = 0.0
        self._target_before = 0.0  # target wall seconds accumulated at earlier rates (see retune)

    def start(self) -> None:
        self._cpu0 = self._cpu_start = time.process_time()
        self._wall0 = time.perf_counter()
        self._target_before = 0.0

    def _target(self) -> float:
        return self._target_before + (time.process_time() - self._cpu0) * self.seconds_per_cpu_second

    def pace(self) -> None:
        """Sleep until the wall time since start() matches the CPU time spent, scaled."""
        behind = self._target() - (time.perf_counter() - self._wall0)
        if behind > 0:
            self._sleep(behind)

    def retune(self, throughput: float) -> None:
        """A new pace from now on (an injected slowdown); the work done so far keeps its old pace."""
        self._target_before, self._cpu0 = self._target(), time.process_time()
        self.seconds_per_cpu_second = self.dilation / throughput

    def finish(self) -> ThrottleReport:
        self.pace()
        return ThrottleReport(time.process_time() - self._cpu_start, self._target(), time.perf_counter() - self._wall0)
