"""A round on the emulated timeline, under the event clock (`emulation.clock: events`).

No process waits to emulate anything there, so an update's arrival in host time says nothing about
when the device would have delivered it. The aggregator lets every selected client report (or be
lost), then replays the round in emulated time:

- a client starts when the round is announced, or when its previous upload ended if that is later
  (a straggler is still busy);
- its download (FETCH up, MODEL down) and upload (UPDATE up) take what its link model draws for the
  bytes that really crossed: the same seeded draws, in the same order, as the client's own shaper
  (`emulation/link.py`), computed here from what the aggregator knows, not from the client's claims;
- its compute takes what it reports (its CPU seconds / throughput, checked like every timing);
- arrivals are taken in emulated order, earliest first: the round's rule (deadline, first k of an
  over-selection) decides what counts exactly as it does in real time, and the round closes when the
  rule says so, at the deadline, or when the last update is in.

Emulated seconds throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from testbed.config.schema import LinkSpec
from testbed.emulation.link import LinkModel


def link_phases(link: LinkSpec, seed: int, round_index: int, fetch_bytes: int, model_bytes: int,
                update_bytes: int) -> tuple[float, float]:
    """(download_s, upload_s) of one client's round: its shaper's draws for FETCH, MODEL and UPDATE.

    The client reseeds its shaper with [seed, round] at each round and shapes exactly these three
    messages of it (progress and heartbeats travel unshaped), so both sides draw the same values.
    """
    model = LinkModel(link, [seed, round_index])
    download = model.transfer_s(fetch_bytes, "up") + model.transfer_s(model_bytes, "down")
    return download, model.transfer_s(update_bytes, "up")


@dataclass(frozen=True)
class Arrival:
    """An update as it reaches the aggregator on the emulated timeline."""

    client: str
    t: float  # run time it arrives (emulated seconds)
    start_t: float  # when its client began the round
    download_s: float
    compute_s: float
    upload_s: float


def arrival(client: str, start_t: float, download_s: float, compute_s: float, upload_s: float) -> Arrival:
    return Arrival(client, start_t + download_s + compute_s + upload_s, start_t, download_s, compute_s, upload_s)


@dataclass(frozen=True)
class Replay:
    close_t: float  # when the round closed
    late: tuple[Arrival, ...]  # arrivals after it closed, in emulated order: their clients are stragglers


def replay_round(started_t: float, deadline_s: float | None, arrivals: Sequence[Arrival],
                 take: Callable[[Arrival], None], complete: Callable[[float], bool]) -> Replay:
    """Take the round's arrivals in emulated order (ties by client id) until it closes.

    `take(arrival)` handles one update as if it arrived now (checks, the rule's accept, the records);
    `complete(elapsed_s)` says whether the round may close once what was taken is in. An arrival
    after the deadline, or after the round completed, is late. With nothing late the round closes
    with its last arrival (at the announcement when none came: every client skipped or was lost).
    """
    deadline_t = math.inf if deadline_s is None else started_t + deadline_s
    ordered = sorted(arrivals, key=lambda a: (a.t, a.client))
    close_t = started_t
    for index, update in enumerate(ordered):
        if update.t > deadline_t:
            return Replay(deadline_t, tuple(ordered[index:]))
        take(update)
        close_t = update.t
        if complete(update.t - started_t):
            return Replay(close_t, tuple(ordered[index + 1:]))
    return Replay(close_t, ())
