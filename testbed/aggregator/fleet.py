"""The aggregator's view of its clients: who joined, what each is doing, who went silent."""

from __future__ import annotations

from dataclasses import dataclass, field

from testbed.config.loader import ClientSpec

UNRESPONSIVE_S = 3.0  # wall seconds without any message (heartbeats come every second): straggling
LOST_S = 10.0  # wall seconds without any message: lost (dead, frozen or cut off); it may come back
# ... while still loading (before it is ready): loading is CPU-heavy and holds the GIL for long
# stretches, so on a crowded host heartbeats lag (64 clients starting on 2 cores: up to ~15 s)
LOADING_LOST_S = 60.0


@dataclass
class ClientRecord:
    spec: ClientSpec
    joined: bool = False
    ready: bool = False  # loaded, profile applied, costs measured: it can take part in a round
    lost: bool = False
    pid: int | None = None
    last_seen: float = 0.0  # monotonic wall seconds (liveness is about the process, not emulated time)
    state: str = "expected"  # as last reported: idle, downloading, training, uploading, ...
    left: bool = False  # it said BYE (until it joins again)
    connections: dict[str, bytes] = field(default_factory=dict)  # channel -> routing id of the connection bound to it


@dataclass
class Fleet:
    records: dict[str, ClientRecord] = field(default_factory=dict)
    # routing id -> (client id, channel): the connections whose JOIN proved who they are; a message from any
    # other connection, or claiming another client, is dropped
    bound: dict[bytes, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, clients: dict[str, ClientSpec]) -> Fleet:
        return cls({cid: ClientRecord(spec) for cid, spec in clients.items()})

    def known(self, client_id: str) -> bool:
        return client_id in self.records

    def bind(self, identity: bytes, client_id: str, channel: str) -> None:
        """The connection `identity` is `client_id`'s `channel` now; the one it replaces (a process gone) is not."""
        record = self.records[client_id]
        previous = record.connections.get(channel)
        if previous is not None and previous != identity:
            self.bound.pop(previous, None)
        record.connections[channel] = identity
        self.bound[identity] = (client_id, channel)

    def unbind(self, identity: bytes) -> tuple[str, str] | None:
        """Forget a closed connection; (client id, channel) it was bound to, or None."""
        binding = self.bound.pop(identity, None)
        if binding is not None:
            self.records[binding[0]].connections.pop(binding[1], None)
        return binding

    def address(self, client_id: str) -> bytes | None:
        """The routing id of the client's main connection, None if none is bound."""
        return self.records[client_id].connections.get("main")

    def seen(self, client_id: str, now: float) -> bool:
        """Note a message from a client; True when it was lost and is back."""
        record = self.records[client_id]
        record.last_seen = now
        came_back = record.lost
        record.lost = False
        return came_back

    def active(self) -> list[str]:
        return [cid for cid, r in self.records.items() if r.joined and r.ready and not r.lost]

    def newly_lost(self, now: float) -> list[str]:
        """Joined clients silent for LOST_S, marked lost now."""
        lost = [cid for cid, r in self.records.items()
                if r.joined and not r.lost and now - r.last_seen > (LOST_S if r.ready else LOADING_LOST_S)]
        for cid in lost:
            self.records[cid].lost = True
        return lost

    def silent(self, client_id: str, now: float) -> bool:
        return now - self.records[client_id].last_seen > UNRESPONSIVE_S
