"""A background thread that tells the aggregator this process is alive, and what it is doing."""

from __future__ import annotations

import threading
from pathlib import Path

import zmq

from testbed.transport.endpoint import Dealer
from testbed.transport.messages import Message

HEARTBEAT_S = 1.0  # seconds between heartbeats; the aggregator marks a client lost after a few misses


class Heartbeat:
    """Sends HEARTBEAT {state} every second on its own connection, which its own JOIN binds to the client
    (`join_body`: the main connection's, with its proof of identity); states: messages.HEARTBEAT_STATES."""

    def __init__(self, context: zmq.Context, connect: str, client_id: str, curve_dir: Path | None, join_body: dict):
        self.client_id = client_id
        self.state = "joining"  # read by the thread; plain attribute writes are atomic in CPython
        self.round = 0
        self._dealer = Dealer(context, connect, client_id, max_bytes=1 << 16, curve_dir=curve_dir)
        self._dealer.hello = Message("JOIN", client_id, 0, {**join_body, "channel": "heartbeat"})  # sent first
        self._stop = threading.Event()
        self._running = threading.Event()  # cleared while the process plays frozen
        self._running.set()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._running.wait()
            if self._dealer.writable(0):  # never block: a beat that cannot leave now (no connection) is skipped
                self._dealer.send(Message("HEARTBEAT", self.client_id, self.round, {"state": self.state}))
        self._dealer.close()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        self._thread.join(timeout=2 * HEARTBEAT_S)
