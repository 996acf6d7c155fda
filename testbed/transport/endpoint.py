"""ZeroMQ endpoints: the aggregator's ROUTER and a client's DEALER, over ipc or tcp, optionally CURVE-secured.

Both sides send with zero copies (tensor buffers go straight to libzmq) and receive without copying
(frames are decoded in place). Every received message is validated by `messages.decode`; a bad
one comes back as a `Received` carrying the rejection reason, never as an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import zmq

from testbed.transport.messages import Message, Rejected, decode, encode

LINGER_MS = 200  # on close, how long unsent messages may delay shutdown


@dataclass(frozen=True)
class Received:
    identity: bytes  # the sender's ZeroMQ routing id (the client id it claims)
    message: Message | None  # None when rejected
    reason: str | None  # why it was rejected
    nbytes: int  # bytes on the wire, all frames


class Router:
    """The aggregator's socket: one ROUTER bound where clients connect."""

    def __init__(self, context: zmq.Context, bind: str, *, max_bytes: int, curve_dir: Path | None = None):
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a gone client raises, not vanishes
        # libzmq disconnects a peer sending a frame beyond twice the limit (memory safety); between
        # the limit and that, `decode` rejects the message with a logged reason
        self.socket.setsockopt(zmq.MAXMSGSIZE, 2 * max_bytes)
        self.max_bytes = max_bytes
        self.authenticator = None
        if curve_dir is not None:
            from testbed.transport.keys import start_authenticator

            self.authenticator = start_authenticator(context, self.socket, Path(curve_dir))
        self.socket.bind(bind)
        self.address: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, identity: bytes, message: Message) -> int:
        """Send to one client (zero copy); the bytes put on the wire, 0 when it is no longer connected."""
        frames = encode(message)
        try:
            self.socket.send_multipart([identity, *frames], copy=False)
        except zmq.ZMQError as error:
            if error.errno == zmq.EHOSTUNREACH:
                return 0
            raise
        return sum(len(memoryview(frame)) for frame in frames)

    def poll(self, timeout_s: float) -> Received | None:
        """The next message within `timeout_s` seconds, validated; None on timeout."""
        if not self.socket.poll(max(0, int(timeout_s * 1000))):
            return None
        frames = self.socket.recv_multipart(copy=False)
        identity, payload = frames[0].bytes, frames[1:]
        nbytes = sum(len(frame.buffer) for frame in payload)
        try:
            message = decode(payload, self.max_bytes)
        except Rejected as error:
            return Received(identity, None, str(error), nbytes)
        claimed = message.client.encode()
        if identity not in (claimed, claimed + b"/hb"):  # its main socket or its heartbeat socket
            return Received(identity, None, f"client id {message.client!r} differs from its socket identity", nbytes)
        return Received(identity, message, None, nbytes)

    def close(self) -> None:
        self.socket.close()
        if self.authenticator is not None:
            self.authenticator.stop()


class Shaper(Protocol):
    """Link emulation seen by a socket: block for the time `nbytes` take on the link ("down" or "up")."""

    def wait(self, nbytes: int, direction: str) -> None: ...


class Dealer:
    """A client's socket: one DEALER whose routing id is the client id (its heartbeat: '<id>/hb')."""

    def __init__(self, context: zmq.Context, connect: str, client_id: str, *, max_bytes: int,
                 curve_dir: Path | None = None, routing_id: str | None = None):
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        self.socket.setsockopt(zmq.ROUTING_ID, (routing_id or client_id).encode())
        self.socket.setsockopt(zmq.MAXMSGSIZE, 2 * max_bytes)
        if curve_dir is not None:
            from testbed.transport.keys import configure_client

            configure_client(self.socket, Path(curve_dir), client_id)
        self.socket.connect(connect)
        self.client_id, self.max_bytes = client_id, max_bytes
        self.shaper: Shaper | None = None  # the device's link (user backend); None = the host's own

    def send(self, message: Message, wait_s: float = 0.0, shaped: bool = True) -> int:
        """Send with zero copies; returns the bytes put on the wire.

        With `wait_s` > 0, block until libzmq has released the tensor buffers (at most `wait_s`
        seconds), so the caller may overwrite them afterwards (e.g. the model's own parameters).
        With a shaper, the message first waits its emulated uplink time (unless `shaped` is False:
        telemetry that a real deployment would send out of band, such as progress).
        """
        frames = encode(message)
        nbytes = sum(len(memoryview(frame)) for frame in frames)
        if shaped and self.shaper is not None:
            self.shaper.wait(nbytes, "up")
        # one tracker per frame: send_multipart returns only the last frame's, and pyzmq copies a frame
        # under its copy threshold (64 KiB) and reports it done at once, so a small last tensor (a
        # bias) would end the wait while the large ones are still queued
        last = len(frames) - 1
        trackers = [self.socket.send(frame, zmq.SNDMORE if index < last else 0, copy=False, track=wait_s > 0)
                    for index, frame in enumerate(frames)]
        if wait_s > 0:
            try:
                zmq.MessageTracker(*trackers).wait(wait_s)
            except zmq.NotDone:  # still queued (slow peer): the caller decides what that means
                pass
        return nbytes

    def recv(self, timeout_s: float) -> tuple[Message | None, int]:
        """(message, wire bytes) within `timeout_s`; (None, 0) on timeout. A bad message raises Rejected."""
        if not self.socket.poll(max(0, int(timeout_s * 1000))):
            return None, 0
        frames = self.socket.recv_multipart(copy=False)
        nbytes = sum(len(frame.buffer) for frame in frames)
        if self.shaper is not None:  # delivered as the link would have delivered it
            self.shaper.wait(nbytes, "down")
        return decode(frames, self.max_bytes), nbytes

    def close(self) -> None:
        self.socket.close()
