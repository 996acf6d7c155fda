"""The event stream: every state change is one JSON line in events.jsonl and one message on a PUB socket.

Events are the single source of truth for the dashboard and the report: each carries
`seq` (0, 1, ...), `t` (emulated seconds since the run started: under the real clock this process's
monotonic clock divided by the run's time dilation, see emulation/dilation.py; under the event clock
the time the aggregator moved it to, see aggregator/timeline.py), `wall` (Unix time) and `kind`,
plus the fields its kind declares (testbed/event_kinds.py: every kind, its fields and their units).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from testbed.emulation.clock import EventClock
from testbed.event_kinds import ENDINGS, Event

__all__ = ["ENDINGS", "EventLog", "read_events"]


class EventLog:
    """Append-only event writer (flushed per event) with an optional ZeroMQ PUB mirror."""

    def __init__(self, path: Path, publisher=None, start_seq: int = 0, clock_offset: float = 0.0,
                 clock: str = "real"):
        self.file = open(path, "a", encoding="utf-8")
        self.publisher = publisher  # zmq PUB socket or None
        self.seq = start_seq
        self.dilation = 1.0  # wall seconds per emulated second
        self._anchor_wall = time.monotonic()  # the clock reads _anchor_t at _anchor_wall
        self._anchor_t = clock_offset  # a resumed run continues its clock
        # clock "events": emulated seconds since _anchor_t, moved only by advance_to
        self.ticks = EventClock() if clock == "events" else None

    def now(self) -> float:
        """Emulated seconds since the run started."""
        if self.ticks is not None:
            return self._anchor_t + self.ticks.now()
        return self._anchor_t + (time.monotonic() - self._anchor_wall) / self.dilation

    def advance_to(self, t: float) -> None:
        """Event clock: the run's time moves on to `t` emulated seconds (never back)."""
        if self.ticks is None:
            raise RuntimeError("advance_to needs the event clock: the real clock moves by itself")
        self.ticks.advance_to(t - self._anchor_t)

    def set_dilation(self, factor: float) -> None:
        """From now on one emulated second lasts `factor` wall seconds; the clock stays continuous."""
        if self.ticks is not None:
            self.ticks.set_dilation(factor)  # 1, or a clear error: no host time stands for emulated time
            return
        self._anchor_t, self._anchor_wall = self.now(), time.monotonic()
        self.dilation = factor

    def emit(self, record: Event) -> dict:
        """Write one event (and publish it); returns it as written."""
        event = {"seq": self.seq, "t": round(self.now(), 4), "wall": round(time.time(), 3), "kind": record.kind,
                 **record.fields()}
        line = json.dumps(event, separators=(",", ":"), allow_nan=False)
        self.file.write(line + "\n")
        self.file.flush()
        if self.publisher is not None:
            self.publisher.send_string(line)  # PUB never blocks: slow subscribers just miss events
        self.seq += 1
        return event

    def close(self) -> None:
        self.file.close()


def read_events(path: Path) -> list[dict]:
    """All complete events of a log; a torn last line (crash mid-write) is ignored."""
    events = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return events
