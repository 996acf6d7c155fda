"""The device's clock: every passage of emulated time in a client goes through one `Clock`.

Emulated seconds are the device's time; host seconds are what passes on this machine. Compute
pacing (`throttle.py`), link transfers (`link.py`), a frozen device and the client's round timings
all read and advance the same clock, so how time passes is decided in one place.

`RealClock`, the only implementation, lets time pass by really waiting: one emulated second lasts
`dilation` host seconds. An event-driven clock would implement the same interface without any
process sleeping: `now()` would read a counter, `advance` and `advance_to` would move it forward
at once (work done meanwhile costs no emulated time, so compute would be billed exactly its
CPU seconds / throughput), and `host_s` would bound waits for messages by something other than
the dilation, since the peer's replies would then arrive as events rather than after a delay.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Emulated time as one device sees it."""

    dilation: float  # host seconds per emulated second (>= 1)

    def now(self) -> float:
        """Emulated seconds since the clock started (the client process booted)."""

    def advance(self, emulated_s: float) -> None:
        """Let `emulated_s` pass while the device does nothing else (a link transfer, a freeze)."""

    def advance_to(self, emulated_t: float) -> None:
        """Let time pass until `now()` reaches `emulated_t`; nothing when it already has (compute pacing:
        work that should end at `emulated_t` ended earlier on this host)."""

    def host_s(self, emulated_s: float) -> float:
        """Host seconds a wait for a message may last when it stands for `emulated_s` of the device's time."""

    def set_dilation(self, factor: float) -> None:
        """A new factor from now on (the aggregator raises it when the host falls behind)."""


class RealClock:
    """The host's monotonic clock divided by the dilation; waiting means sleeping this process.

    `now()` divides all host seconds since the start by the current factor: a raised factor
    re-reads the past at the new rate (emulated times only ever compare within one factor).
    """

    def __init__(self, dilation: float = 1.0, *, sleep=time.sleep, monotonic=time.monotonic):
        self._sleep, self._monotonic = sleep, monotonic  # host seconds in, host seconds out
        self._epoch = monotonic()  # host seconds
        self.dilation = 1.0
        self.set_dilation(dilation)

    def set_dilation(self, factor: float) -> None:
        if not factor >= 1.0:
            raise ValueError(f"dilation must be >= 1 (got {factor})")
        self.dilation = float(factor)

    def now(self) -> float:
        return (self._monotonic() - self._epoch) / self.dilation

    def host_s(self, emulated_s: float) -> float:
        return emulated_s * self.dilation

    def advance(self, emulated_s: float) -> None:
        self._sleep(self.host_s(emulated_s))

    def advance_to(self, emulated_t: float) -> None:
        ahead = emulated_t - self.now()  # emulated seconds still to pass
        if ahead > 0:
            self.advance(ahead)
