"""One round as the aggregator sees it: who was asked, what each sent, how long each phase took."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from testbed.aggregator.timeline import Arrival
from testbed.event_kinds import FINISHED, ClientStatus, UpdateReceived
from testbed.strategies.base import ClientUpdate
from testbed.transport.endpoint import Received
from testbed.transport.messages import Message

TIMING_KEYS = ("download_s", "compute_s", "elapsed_s")


def bookkeeping_fault(body: dict, fetched_depth: int, most_samples: int) -> str | None:
    """Why an UPDATE's claims cannot be true, as "<check>: <the claim>, allowed <bound>"; None when plausible.

    `most_samples` is the most clips the client can have trained on this round (`round_samples` of
    testbed.model.train: local steps x its batch): a larger claim would outweigh honest clients in
    the samples-weighted average.
    """
    if body["depth"] != fetched_depth:
        return f"depth: the update claims depth {body['depth']}, its FETCH was for depth {fetched_depth}"
    timings = body["timings"]
    bad = [key for key in TIMING_KEYS
           if not (isinstance(timings.get(key), (int, float)) and math.isfinite(timings[key]) and timings[key] >= 0)]
    if bad:
        return f"timings: {', '.join(bad)} missing or not a finite number >= 0 (allowed: seconds >= 0)"
    if not math.isfinite(body["loss"]):
        return f"loss: {body['loss']} (allowed: a finite number)"
    if not 1 <= body["samples"] <= most_samples:
        return (f"samples: claimed {body['samples']} clips, allowed 1..{most_samples} "
                "(its local steps x batch this round)")
    return None


@dataclass
class ClientRow:
    client: str
    profile: str
    task: str
    # asked -> fetched -> updated | discarded | rejected | straggler | lost | skipped
    status: ClientStatus = ClientStatus.ASKED
    depth: int = 0
    download_s: float | None = None
    compute_s: float | None = None
    upload_s: float | None = None
    idle_s: float | None = None
    bytes_down: int = 0
    bytes_up: int = 0
    samples: int = 0
    loss: float | None = None
    peak_mb: float | None = None
    cpu_s: float | None = None  # host CPU seconds of its local training
    overshoot: float | None = None  # achieved / target wall time of its training: > 1 = CPU-starved
    finished_t: float | None = None  # event clock when its update arrived


class PendingUpdate(NamedTuple):
    """Event clock: an UPDATE held until the round is replayed."""

    arrival: Arrival  # when it reaches the aggregator on the emulated timeline
    message: Message
    received: Received  # its delivery (connection, wire bytes)


@dataclass
class Round:
    index: int
    started_t: float  # event-clock seconds when ROUND went out
    deadline_s: float | None  # None: the round waits for every selected client (fedavg_full)
    rows: dict[str, ClientRow] = field(default_factory=dict)
    updates: list[ClientUpdate] = field(default_factory=list)
    # event clock (aggregator/timeline.py): the FETCH bytes of each client, and its UPDATE until the replay takes it
    fetch_bytes: dict[str, int] = field(default_factory=dict)
    arrivals: dict[str, PendingUpdate] = field(default_factory=dict)
    # event clock: clients whose one UPDATE of the round was dropped (it claimed another client, or came without a
    # FETCH): they send no other, so the round waits no longer for them (see Aggregator._spent_upload)
    spent: set[str] = field(default_factory=set)

    @property
    def deadline_t(self) -> float:
        return math.inf if self.deadline_s is None else self.started_t + self.deadline_s

    def waiting_for(self) -> list[str]:
        return [cid for cid, row in self.rows.items() if row.status not in FINISHED]

    def accept_update(self, row: ClientRow, body: dict, tensors: dict, nbytes: int, now: float) -> UpdateReceived:
        """Record an UPDATE that passed every check (bookkeeping_fault, the screen, the round's accept rule);
        returns its update_received event."""
        timings = body["timings"]
        row.status, row.finished_t, row.bytes_up = ClientStatus.UPDATED, now, nbytes
        peak = body.get("peak_mb")
        loss = float(body["loss"])
        row.samples, row.loss = body["samples"], loss
        row.peak_mb = float(peak) if isinstance(peak, (int, float)) and math.isfinite(peak) else None
        download_s, compute_s = timings["download_s"], timings["compute_s"]
        row.download_s, row.compute_s = download_s, compute_s
        for key in ("cpu_s", "overshoot"):  # optional: clients that emulate a device report them
            value = timings.get(key)
            setattr(row, key, float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None)
        # the client counts from the moment ROUND reached it; the rest of our clock is the upload
        upload_s = row.upload_s = max(0.0, (now - self.started_t) - timings["elapsed_s"])
        self.updates.append(ClientUpdate(row.client, row.samples, row.depth, row.task, tensors))
        # from the values above, not the row's fields: those are None until a row has an update
        return UpdateReceived(client=row.client, round=self.index, depth=row.depth, bytes=nbytes, samples=row.samples,
                              loss=round(loss, 4), download_s=round(download_s, 4), compute_s=round(compute_s, 4),
                              upload_s=round(upload_s, 4), peak_mb=row.peak_mb, cpu_s=row.cpu_s, overshoot=row.overshoot)

    def close(self, now: float) -> dict:
        """Mark stragglers, fill idle times; returns the round's summary (one event, one CSV row)."""
        wall_s = now - self.started_t
        for row in self.rows.values():
            if row.status in (ClientStatus.ASKED, ClientStatus.FETCHED):
                row.status = ClientStatus.STRAGGLER
            if row.status == ClientStatus.UPDATED:
                assert row.finished_t is not None  # accept_update sets it with the status
                row.idle_s = max(0.0, wall_s - (row.finished_t - self.started_t))
        statuses = [row.status for row in self.rows.values()]
        return {"round": self.index, "started_t": round(self.started_t, 3), "wall_s": round(wall_s, 3),
                "deadline_s": self.deadline_s, "selected": len(self.rows), "updates": statuses.count(ClientStatus.UPDATED),
                "stragglers": statuses.count(ClientStatus.STRAGGLER), "lost": statuses.count(ClientStatus.LOST),
                "discarded": statuses.count(ClientStatus.DISCARDED),
                "rejected": statuses.count(ClientStatus.REJECTED),
                "bytes_down": sum(r.bytes_down for r in self.rows.values()),
                "bytes_up": sum(r.bytes_up for r in self.rows.values())}

    def client_rows(self) -> list[dict]:
        rows = []
        for row in self.rows.values():
            data = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(row).items()}
            data.pop("finished_t")
            rows.append({"round": self.index, **data})
        return rows
