"""Where events come from: a growing events.jsonl, the aggregator's PUB socket, or a finished run replayed.

Each source has `read() -> list[dict]` returning the events that are new since the last call.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

log = logging.getLogger("testbed.monitor")

MAX_EVENT_BYTES = 16 << 20  # an event is a few kB; a bigger message on the PUB socket is refused by ZeroMQ


def parse_event(raw: bytes | str) -> dict | None:
    """One event from a JSON line or message; None (logged) when it is not a JSON object with a `kind`."""
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        log.warning("dropped an event that is not JSON (%s): %.120r", error, raw)
        return None
    if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
        log.warning("dropped an event that is not an object with a 'kind': %.120r", raw)
        return None
    return event


class FileTail:
    """The complete lines added to an events.jsonl since the last read; a line still being written waits."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0  # bytes already consumed

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                chunk = file.read()
        except FileNotFoundError:  # the run has not written its first event yet
            return []
        complete = chunk.rfind(b"\n") + 1
        self.offset += complete
        return [event for line in chunk[:complete].splitlines() if line.strip()
                if (event := parse_event(line)) is not None]


class Subscription:
    """Events published by a running aggregator (ZeroMQ SUB); only those sent after it connects."""

    def __init__(self, address: str):
        import zmq

        self.zmq = zmq
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_EVENT_BYTES)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.connect(address)

    def read(self, limit: int = 10_000) -> list[dict]:
        events: list[dict] = []
        while len(events) < limit:
            try:
                frames = self.socket.recv_multipart(self.zmq.NOBLOCK)
            except self.zmq.Again:
                break
            if len(frames) != 1:
                log.warning("dropped a published message of %d frames (an event is one frame)", len(frames))
                continue
            if (event := parse_event(frames[0])) is not None:
                events.append(event)
        return events

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


class Replay:
    """The events of a recorded run, handed out `speed` times faster than they happened (math.inf: all at once)."""

    def __init__(self, events: list[dict], speed: float, clock=time.monotonic):
        if not speed > 0:
            raise ValueError(f"replay speed must be > 0 (got {speed})")
        self.events, self.speed, self.clock = events, speed, clock
        self.first_t = next((e["t"] for e in events if isinstance(e.get("t"), (int, float))), 0.0)
        self.started = clock()
        self.next = 0  # index of the next event to hand out

    def now_t(self) -> float:
        """The run seconds the replay has reached."""
        if self.speed == math.inf:
            return max((self._t(e) for e in self.events), default=self.first_t)
        return self.first_t + (self.clock() - self.started) * self.speed

    def read(self) -> list[dict]:
        now_t, start = self.now_t(), self.next
        while self.next < len(self.events) and self._t(self.events[self.next]) <= now_t:
            self.next += 1
        return self.events[start:self.next]

    @property
    def done(self) -> bool:
        return self.next >= len(self.events)

    def _t(self, event: dict) -> float:
        t = event.get("t")
        return t if isinstance(t, (int, float)) else self.first_t  # an event without a time goes out at once
