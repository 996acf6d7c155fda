"""The device's clock: every passage of emulated time in a client goes through one `Clock`.

Emulated seconds are the device's time; host seconds are what passes on this machine. Compute
pacing (`throttle.py`), link transfers (`link.py`), a frozen device and the client's round timings
all read and advance the same clock, so how time passes is decided in one place. A scenario picks
the implementation with `emulation.clock` (docs/architecture.md, "Emulated time"):

- `RealClock` ("real") lets time pass by really waiting: one emulated second lasts `dilation` host
  seconds, and the aggregator sees each update arrive when it really arrives.
- `EventClock` ("events") is a counter that jumps: no process sleeps to emulate anything. Compute
  costs its own CPU seconds / throughput, a transfer its link model's draw, and the aggregator
  orders the round's arrivals by the emulated times it computes (`aggregator/timeline.py`).
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

    def catch_up(self, run_t: float) -> None:
        """The aggregator announced a round at run time `run_t` (emulated seconds): an event clock jumps
        there, unless the device is still busy past it; a real clock's time has passed by itself."""


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

    def catch_up(self, run_t: float) -> None:
        pass  # counted from this process's boot, on the host's clock: nothing to move


# Host seconds a wait for a peer may last under the event clock: replies stand for no emulated time
# there, so only liveness bounds them (a round of 256 clients on 2 cores takes minutes of host time).
EVENT_WAIT_S = 1800.0


class EventClock:
    """Emulated time as a counter: `advance` and `advance_to` move it at once, nothing sleeps.

    Work done between two readings costs no emulated time by itself: a client bills its compute
    explicitly (`throttle.py` advances the clock by CPU seconds / throughput), its transfers by the
    link model's draws, and a round's start by the aggregator's announcement (`advance_to`).
    """

    dilation = 1.0  # no host time stands for emulated time: kept for the `Clock` interface

    def __init__(self, start_t: float = 0.0, *, wait_s: float = EVENT_WAIT_S):
        self._now = float(start_t)  # emulated seconds
        self.wait_s = wait_s  # host seconds any wait for a message may last (liveness only)

    def set_dilation(self, factor: float) -> None:
        if factor != 1.0:
            raise ValueError(f"the event clock has no dilation (got {factor}; it is 1 by construction)")

    def now(self) -> float:
        return self._now

    def host_s(self, emulated_s: float) -> float:
        return self.wait_s

    def advance(self, emulated_s: float) -> None:
        if not emulated_s >= 0:
            raise ValueError(f"emulated time only moves forward (asked to advance by {emulated_s} s)")
        self._now += emulated_s

    def advance_to(self, emulated_t: float) -> None:
        self._now = max(self._now, float(emulated_t))

    def catch_up(self, run_t: float) -> None:
        self.advance_to(run_t)  # the client's clock reads the run's time: the aggregator computes with the same

