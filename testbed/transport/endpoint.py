"""ZeroMQ endpoints: the aggregator's ROUTER and a client's DEALER, over ipc or tcp, optionally CURVE-secured.

Both sides send with zero copies (tensor buffers go straight to libzmq) and receive without copying
(frames are decoded in place). Every received message is validated by `messages.decode`; a bad
one comes back as a `Received` carrying the rejection reason, never as an exception.

Clients do not choose their routing ids: the ROUTER gives each connection its own, so no process can
take a client's id before it connects. Who a connection is comes from what it proves in its JOIN
(see testbed/aggregator/credentials.py); with CURVE, every message carries the public key its
connection authenticated with (`Received.user_id`).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import zmq
from zmq.utils.monitor import recv_monitor_message

from testbed.transport.messages import Message, MessageRejected, decode, encode

LINGER_MS = 200  # on close, how long unsent messages may delay shutdown
# the socket monitor events each side reads (connections, handshakes, disconnections)
HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | \
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
_PROTOCOL_ERRORS = {getattr(zmq, name): name.removeprefix("PROTOCOL_ERROR_") for name in dir(zmq)
                    if name.startswith("PROTOCOL_ERROR_")}


@dataclass(frozen=True)
class Received:
    identity: bytes  # the connection's routing id, given by the ROUTER (not chosen by the client)
    message: Message | None  # None when rejected
    reason: str | None  # why it was rejected
    nbytes: int  # bytes on the wire, all frames
    user_id: str | None = None  # CURVE: the z85 public key the connection authenticated with; else None


@dataclass(frozen=True)
class ConnectionEvent:
    """Something that happened to a connection below the messages: a failed handshake, or a closed connection."""

    kind: str  # "handshake_failed" or "closed"
    reason: str
    identity: bytes | None = None  # "closed": the routing id of the connection, None if it never delivered a message


def handshake_failure(event: int, value: int) -> str:
    """One line for a failed handshake event (`value`: a ZAP status, a protocol error code, or an errno)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"CURVE key refused (ZAP status {value}: the key is not in the aggregator's authorized/)"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        name = _PROTOCOL_ERRORS.get(value, hex(value))
        return f"protocol error {name} (CURVE on one side only, another server key, or not ZeroMQ)"
    return f"{os.strerror(value) if value else 'no detail'} (CURVE on one side only, or another server key)"


def identity_text(identity: bytes) -> str:
    """A routing id as events show it: printable ASCII as is (a peer may pick its own), else '#' + hex."""
    if identity and all(32 < byte < 127 for byte in identity):
        return identity[:64].decode()
    return "#" + identity[:32].hex()


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
        # read in this thread, before each receive: see _watch
        self.monitor = self.socket.get_monitor_socket(HANDSHAKE_FAILURES | zmq.EVENT_DISCONNECTED)
        self._delivered: dict[int, bytes] = {}  # file descriptor -> routing id of the connection on it
        self._unexplained_failures = 0  # failed handshakes whose disconnection is still to come
        self._events: list[ConnectionEvent] = []
        self.socket.bind(bind)
        self.address: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, identity: bytes, message: Message, wait: bool = True) -> int:
        """Send to one client (zero copy); the bytes put on the wire, 0 when it is no longer connected
        (or, with `wait` False, when its queue is full: a peer that does not read must not block us)."""
        frames = encode(message)
        try:
            self.socket.send_multipart([identity, *frames], copy=False, flags=0 if wait else zmq.DONTWAIT)
        except zmq.ZMQError as error:
            if error.errno == zmq.EHOSTUNREACH or (error.errno == errno.EAGAIN and not wait):
                return 0
            raise
        return sum(len(memoryview(frame)) for frame in frames)

    def poll(self, timeout_s: float) -> Received | None:
        """The next message within `timeout_s` seconds, validated; None on timeout."""
        if not self.socket.poll(max(0, int(timeout_s * 1000))):
            self._watch()
            return None
        self._watch()  # first: a disconnection noted before this message's connection may reuse its descriptor
        frames = self.socket.recv_multipart(copy=False)
        identity, payload = frames[0].bytes, frames[1:]
        self._delivered[frames[-1].get(zmq.SRCFD)] = identity
        nbytes = sum(len(frame.buffer) for frame in payload)
        user_id = frames[-1].get("User-Id") if self.authenticator is not None else None
        try:
            message = decode(payload, self.max_bytes)
        except MessageRejected as error:
            return Received(identity, None, str(error), nbytes, user_id)
        return Received(identity, message, None, nbytes, user_id)

    def connection_events(self) -> list[ConnectionEvent]:
        """Failed handshakes and closed connections since the last call (the monitor is read by `poll`)."""
        self._watch()
        events, self._events = self._events, []
        return events

    def _watch(self) -> None:
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            kind, value = int(event["event"]), int(event["value"])
            if kind & HANDSHAKE_FAILURES:
                self._unexplained_failures += 1
                self._events.append(ConnectionEvent("handshake_failed", handshake_failure(kind, value)))
            elif kind == zmq.EVENT_DISCONNECTED:  # value: the connection's file descriptor
                identity = self._delivered.pop(value, None)
                if identity is None and self._unexplained_failures:
                    self._unexplained_failures -= 1  # the end of a failed handshake, already told
                    continue
                reason = ("a connection closed before delivering any message: its process died early, or libzmq "
                          f"cut it for a frame over {2 * self.max_bytes} bytes" if identity is None else
                          f"the connection closed without a BYE: the process died, or libzmq cut it for a frame "
                          f"over {2 * self.max_bytes} bytes")
                self._events.append(ConnectionEvent("closed", reason, identity))

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close()
        if self.authenticator is not None:
            self.authenticator.stop()


class Shaper(Protocol):
    """Link emulation seen by a socket: block for the time `nbytes` take on the link ("down" or "up")."""

    def wait(self, nbytes: int, direction: str) -> None: ...


class Dealer:
    """A client's socket: one DEALER connected to the aggregator (its routing id is the ROUTER's choice).

    `hello`, when set, is the message that proves who this connection is (a JOIN): sent again first
    whenever the connection was re-established, as the ROUTER sees a new connection then.
    """

    def __init__(self, context: zmq.Context, connect: str, client_id: str, *, max_bytes: int,
                 curve_dir: Path | None = None):
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        self.socket.setsockopt(zmq.MAXMSGSIZE, 2 * max_bytes)
        if curve_dir is not None:
            from testbed.transport.keys import configure_client

            configure_client(self.socket, Path(curve_dir), client_id)
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
                                                      | HANDSHAKE_FAILURES)
        self.socket.connect(connect)
        self.address, self.client_id, self.max_bytes = connect, client_id, max_bytes
        self.shaper: Shaper | None = None  # the device's link (user backend); None = the host's own
        self.hello: Message | None = None
        self.connected = False  # a TCP/ipc connection was made at least once
        self.handshakes = 0  # completed handshakes so far: more than one means the connection was re-made
        self.failure: str | None = None  # the last failed handshake, in words
        self.key_refused = False  # the last failed handshake was the server refusing our CURVE key
        self._hello_at: int | None = None  # `handshakes` when the hello was last sent

    def writable(self, timeout_s: float) -> bool:
        """True when a message can be queued without blocking within `timeout_s` (False: no usable connection)."""
        return bool(self.socket.poll(max(0, int(timeout_s * 1000)), zmq.POLLOUT))

    def watch(self) -> None:
        """Take up what the socket monitor saw: connections, handshakes (made or failed)."""
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            kind, value = int(event["event"]), int(event["value"])
            if kind == zmq.EVENT_CONNECTED:
                self.connected = True
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshakes, self.failure, self.key_refused = self.handshakes + 1, None, False
            elif kind & HANDSHAKE_FAILURES:
                self.failure = handshake_failure(kind, value)
                self.key_refused = kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH

    def send(self, message: Message, wait_s: float = 0.0, shaped: bool = True) -> int:
        """Send with zero copies; returns the bytes put on the wire.

        With `wait_s` > 0, block until libzmq has released the tensor buffers (at most `wait_s`
        seconds), so the caller may overwrite them afterwards (e.g. the model's own parameters).
        With a shaper, the message first waits its emulated uplink time (unless `shaped` is False:
        telemetry that a real deployment would send out of band, such as progress).
        """
        if self.hello is not None and message is not self.hello:
            self.watch()
            if self._hello_at is None or self.handshakes > max(self._hello_at, 1):  # never sent, or a new connection
                self.send(self.hello, shaped=False)
        if message is self.hello:
            self._hello_at = self.handshakes
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
        """(message, wire bytes) within `timeout_s`; (None, 0) on timeout. A bad message raises MessageRejected."""
        if not self.socket.poll(max(0, int(timeout_s * 1000))):
            return None, 0
        frames = self.socket.recv_multipart(copy=False)
        nbytes = sum(len(frame.buffer) for frame in frames)
        if self.shaper is not None:  # delivered as the link would have delivered it
            self.shaper.wait(nbytes, "down")
        return decode(frames, self.max_bytes), nbytes

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close()
