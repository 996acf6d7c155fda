"""Malformed messages for the aggregator's router, each with the reason the aggregator must drop it for.

Every attack is sent from a connection that never proved to be a fleet client ("intruder", or
"stranger-<n>" for an unknown client id), so the aggregator's own checks (decode, the connection's
binding to a client, fleet membership) are what these exercise. The sockets pick their own routing
ids, as any peer may: the aggregator trusts them for nothing, but names them in its drop events,
which is how a stress check pairs each attack with its drop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import numpy as np

from testbed.transport.messages import Message, encode

INTRUDER = b"intruder"  # routing id of the socket most attacks come from
_UPDATE_BODY = {"depth": 1, "samples": 8, "loss": 0.1, "timings": {}}


def _update(tensors: dict[str, np.ndarray], client: str = "intruder") -> list:
    return encode(Message("UPDATE", client, 1, _UPDATE_BODY, tensors))


def _with_version(version: int) -> list:
    envelope = {"v": version, "type": "HEARTBEAT", "client": "intruder", "round": 0, "body": {"state": "idle"},
                "tensors": []}
    return [msgpack.packb(envelope)]


def _frames(limit: int) -> dict[str, Callable[[], list]]:
    """Attack name -> frames; `limit` is the router's message size limit (bytes)."""
    four = np.ones(4, np.float32)
    return {
        "truncated": lambda: [_update({"w": four})[0], four.tobytes()[:-3]],
        "missing_frames": lambda: [_update({"w": four})[0]],
        "wrong_version": lambda: _with_version(9),
        "wrong_shape": lambda: [encode(Message("UPDATE", "intruder", 1, _UPDATE_BODY, {"w": np.ones((2, 3), np.float32)}))[0],
                                four.tobytes()],
        "nan": lambda: [_update({"w": four})[0], np.full(4, np.nan, np.float32).tobytes()],
        "inf": lambda: [_update({"w": four})[0], np.full(4, np.inf, np.float32).tobytes()],
        "not_a_map": lambda: [msgpack.packb([1, 2])],
        "garbage": lambda: [b"\xc1\xc1 not msgpack"],  # 0xc1 is never used in msgpack
        "unknown_type": lambda: [msgpack.packb({"v": 1, "type": "EXPLODE", "client": "intruder", "round": 0,
                                                "body": {}, "tensors": []})],
        "bad_body": lambda: encode(Message("FETCH", "intruder", 1, {"depth": "deep"})),
        "impostor": lambda: encode(Message("HEARTBEAT", "c00", 0, {"state": "idle"})),
        # beyond the limit but under twice it (libzmq would cut the connection instead of delivering)
        "oversized": lambda: [_update({"w": four})[0], b"\0" * (limit + 1024)],
    }


# attack -> the fragment the aggregator's drop reason must contain
ATTACKS = {
    "truncated": "13 bytes for shape [4]",
    "missing_frames": "0 tensor frames",
    "wrong_version": "protocol version 9",
    "wrong_shape": "for shape [2, 3]",
    "nan": "NaN or Inf",
    "inf": "NaN or Inf",
    "not_a_map": "not a map",
    "garbage": "not valid msgpack",
    "unknown_type": "unknown message type",
    "bad_body": "body field 'depth'",
    "impostor": "from a connection that has not joined",
    "oversized": "oversized message",
    "unknown_client": "unknown client",
}


@dataclass(frozen=True)
class Sent:
    attack: str
    identity: str  # the socket it came from
    expect: str    # fragment of the drop reason


def flood(router: str, attacks: list[str], repeat: int, limit: int) -> list[Sent]:
    """Send each attack `repeat` times to `router` (a ZeroMQ address); what was sent, in order."""
    import zmq

    frames = _frames(limit)
    context = zmq.Context()
    sockets = []
    sent: list[Sent] = []
    try:
        intruder = _dealer(context, router, INTRUDER)
        sockets.append(intruder)
        for round_ in range(repeat):
            for attack in attacks:
                if attack == "unknown_client":  # a socket of its own, claiming its own identity
                    name = f"stranger-{round_}"
                    stranger = _dealer(context, router, name.encode())
                    sockets.append(stranger)
                    stranger.send_multipart(encode(Message("JOIN", name, 0, {"profile": "", "task": "", "pid": 1})))
                    sent.append(Sent(attack, name, ATTACKS[attack]))
                else:
                    intruder.send_multipart(frames[attack]())
                    sent.append(Sent(attack, INTRUDER.decode(), ATTACKS[attack]))
        time.sleep(0.5)  # let libzmq hand every frame over before the sockets close
    finally:
        for socket in sockets:
            socket.close(linger=2000)
        context.term()
    return sent


def _dealer(context, router: str, identity: bytes):
    import zmq

    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.ROUTING_ID, identity)
    socket.connect(router)
    return socket
