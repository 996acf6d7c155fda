"""Resident memory of this process, sampled while training (peak per round, MB)."""

import resource


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


class PeakTracker:
    """Max resident set over the samples taken since `reset()`."""

    def __init__(self):
        self.peak = 0.0

    def reset(self) -> None:
        self.peak = resident_mb()

    def sample(self) -> None:
        self.peak = max(self.peak, resident_mb())
