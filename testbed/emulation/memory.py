"""The memory side of a profile: resident-set measurements, a per-depth budget, an out-of-memory rule.

Peaks come from the kernel's high-water mark (VmHWM in /proc/self/status), which sees the transient
peak of a backward pass that sampling between steps would miss; writing "5" to /proc/self/clear_refs
resets it (Linux >= 4.0), so each measurement covers only its own phase.
"""

from __future__ import annotations

import ctypes

OOM_EXIT_CODE = 87  # exit status of a client that exceeded its profile's memory: not restarted


class OutOfMemory(Exception):
    """The process went beyond its profile's memory_mb: the emulated device would have killed it."""


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MiB
    raise RuntimeError(f"/proc/self/status has no {field}")


def resident_mb() -> float:
    """Resident set now, MiB."""
    return _status_mb("VmRSS")


def reset_peak() -> None:
    """Start a new high-water mark from the current resident set."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:  # not permitted here: peaks then cover the process's lifetime (an over-estimate)
        pass


def release_free_memory() -> None:
    """Hand memory freed by the last training step back to the kernel (glibc keeps it otherwise).

    A backward pass frees a few hundred MB of activations and temporaries; without this, every idle
    client would keep them resident until its next round (measured: ~530 MB private per tiny client
    between rounds, ~330 MB after).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def peak_mb() -> float:
    """Peak resident set since the last reset_peak(), MiB."""
    return _status_mb("VmHWM")


class MemoryBudget:
    """Which depths fit in `limit_mb`: measured per depth, refined by every round's observed peak."""

    def __init__(self, limit_mb: float, predicted_mb: dict[int, float]):
        self.limit_mb = limit_mb
        self.predicted_mb = dict(predicted_mb)  # depth -> MiB expected at the peak of a training round

    def observe(self, depth: int, peak: float) -> None:
        self.predicted_mb[depth] = peak

    def fits(self, depth: int) -> bool:
        return self.predicted_mb.get(depth, float("inf")) <= self.limit_mb

    def check(self) -> None:
        """Raise OutOfMemory when the process is above its limit right now (called after every step)."""
        peak = peak_mb()
        if peak > self.limit_mb:
            raise OutOfMemory(f"peak resident memory {peak:.0f} MiB > memory_mb {self.limit_mb:.0f} MiB")
