"""Refusals made visible without letting a peer flood the run's records.

Every refusal (a dropped message, a refused JOIN, a failed handshake, a closed connection) is an event
and a log line. Within an interval of INTERVAL_S, the first refusal of each (kind, sender, reason) is
told in full; the others are counted and told at the interval's end in one summary event of the same
kind, whose `count` says how many refusals it stands for (a full one stands for 1). So a sender
repeating itself costs two events per interval, and one varying its reasons, or many senders at once,
at most MAX_SHOWN full events and MAX_PENDING summaries per interval.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass

from testbed.event_kinds import KINDS, Refusal
from testbed.events import EventLog
from testbed.transport.messages import capped

log = logging.getLogger("testbed.aggregator")

INTERVAL_S = 10.0  # wall seconds between summaries of the refusals not told in full
MAX_SHOWN = 50  # refusals told in full per interval, all senders together
MAX_SHOWN_PER_SENDER = 16  # ... from one sender (distinct reasons)
MAX_PENDING = 64  # (kind, sender, reason) counted apart per interval; beyond that, one count for the rest
MAX_REASON = 300  # characters of a reason (peer-chosen values in it are already cut by `messages`)


def reason_class(reason: str) -> str:
    """What makes two reasons alike: their text without quoted values and numbers."""
    return re.sub(r"\d+", "#", re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason))


@dataclass
class _Pending:
    fields: dict  # the event fields of the first refusal not told in full (those of a Refusal)
    count: int = 0


class Refusals:
    def __init__(self, events: EventLog, clock=time.monotonic):
        self.events, self.clock = events, clock
        self._start(clock())

    def _start(self, now: float) -> None:
        self.since = now
        self._shown: set[tuple[str, str, str]] = set()
        self._per_sender: Counter[str] = Counter()
        self._pending: dict[tuple[str, str, str], _Pending] = {}

    def refuse(self, kind: str, reason: str, sender: str = "", **fields) -> None:
        """One refusal of `kind` (a Refusal's) for `reason`; `sender` (a connection) tells refusals apart; `fields`:
        its event's."""
        self.tick()
        fields = {**fields, "reason": capped(reason, MAX_REASON)}
        key = (kind, sender, reason_class(fields["reason"]))
        room = len(self._shown) < MAX_SHOWN and self._per_sender[sender] < MAX_SHOWN_PER_SENDER
        if key not in self._shown and room:
            self._shown.add(key)
            self._per_sender[sender] += 1
            self.events.emit(_refusal(kind, fields))
            log.warning("%s from %s: %s", kind, sender or "?", fields["reason"])
            return
        if key not in self._pending and len(self._pending) >= MAX_PENDING:
            key = (kind, "*", "*")
            fields = {"identity": "*", "reason": "refusals beyond this interval's limits (many senders or reasons)"}
        self._pending.setdefault(key, _Pending(fields)).count += 1

    def tick(self) -> None:
        """Tell the counted refusals once the interval is over (called often: by the serve loop)."""
        if self.clock() - self.since >= INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Tell every counted refusal now (at an interval's end, and before the run's last event)."""
        now = self.clock()
        over_s = round(now - self.since, 1)
        for (kind, sender, _), pending in self._pending.items():
            self.events.emit(_refusal(kind, {**pending.fields, "count": pending.count, "over_s": over_s}))
            log.warning("%s from %s: %d more in %.0f s, e.g. %s", kind, sender or "?", pending.count, over_s,
                        pending.fields["reason"])
        self._start(now)


def _refusal(kind: str, fields: dict) -> Refusal:
    declaration = KINDS[kind]
    if not issubclass(declaration, Refusal):
        raise ValueError(f"{kind} is not a refusal")
    return declaration(**fields)
