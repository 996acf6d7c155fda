"""Protocol messages: a msgpack envelope frame followed by one raw frame per tensor (no pickle).

Frame layout: [envelope, tensor_0, tensor_1, ...]; the envelope is a msgpack map
    {"v": version, "type": ..., "client": id, "round": n, "body": {...}, "tensors": [[name, dtype, shape], ...]}
Decoding validates everything before anything is used and raises `MessageRejected` with the reason;
tensors come back as read-only NumPy views of the received frames (zero copies).
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
MAX_ENVELOPE_BYTES = 1 << 20  # 1 MiB: bodies are small; tensors travel in their own frames
MAX_TENSORS = 4096
# Hostile envelopes may nest lists/maps ~1000 deep (msgpack's own limit); repr, json and friends
# recurse and would hit Python's recursion limit. Real envelopes nest fewer than 8 levels.
MAX_NESTING = 32
# Tensor rank: NumPy cannot reshape beyond 32 (1.x) or 64 (2.x) dims, and math.prod over a
# hostile shape of ~100k dims is quadratic (seconds). Model tensors have at most 4.
MAX_DIMS = 32
DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}
FLOAT_DTYPES = {"float32", "float16"}
# Peer-chosen values quoted in a reason: escaped and cut, so a reason stays one short line
_shown = reprlib.Repr()
_shown.maxstring = _shown.maxother = 120  # characters

# Required body fields per message type (extra fields are ignored: newer minor versions may add some).
# float accepts int; dict/list are checked only for their kind.
BODIES: dict[str, dict[str, type]] = {
    # client -> aggregator, first on each of its connections; optional: "channel" ("main" or "heartbeat")
    # and "token" (the secret `testbed run` gave this client alone: its proof of identity without CURVE)
    "JOIN": {"profile": str, "task": str, "pid": int},
    "WELCOME": {"run": dict},                                    # aggregator -> client: run settings
    "ROUND": {"deadline_s": float, "depth": int},                # aggregator -> client: a round starts (depth 0: yours to choose)
    "FETCH": {"depth": int},                                     # client -> aggregator: send layers <= depth
    "MODEL": {"depth": int},                                     # aggregator -> client: + tensors
    "UPDATE": {"depth": int, "samples": int, "loss": float, "timings": dict},  # client -> aggregator
    "SKIP": {"reason": str},                                     # client -> aggregator: sits this round out
    "HEARTBEAT": {"state": str},                                 # client -> aggregator, every second
    "PROGRESS": {"step": int, "steps": int, "layer": int},       # client -> aggregator, every local step
    "BYE": {"reason": str},                                      # either way: leaving / run over
}

CHANNELS = ("main", "heartbeat")  # a client's connections, each bound by its own JOIN
# what a client's HEARTBEAT may report (testbed/client/worker.py sets them; "ready" comes with its device)
HEARTBEAT_STATES = ("joining", "loading", "ready", "idle", "offline", "downloading", "training", "uploading")
MAX_PEER_TEXT = 200  # characters of a peer's free text (a BYE or SKIP reason) that reach the run's records


def capped(text: str, limit: int = MAX_PEER_TEXT) -> str:
    """`text` cut to `limit` characters, the cut marked by an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


class MessageRejected(Exception):
    """A message that failed validation; `reason` says why (logged, then the message is dropped)."""


@dataclass(frozen=True)
class Message:
    type: str
    client: str
    round: int = 0
    body: dict = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.tensors.values())


def encode(message: Message) -> list:
    """Frames for `socket.send_multipart(frames, copy=False)`: tensors go as buffers, never copied here."""
    # asarray(order="C") keeps a 0-d array 0-d (ascontiguousarray would send it as shape [1]); the
    # buffer goes out flat, as memoryview cannot cast an empty multi-dimensional view to bytes; `.data` is
    # memoryview(array) (numpy types its buffer protocol for Python >= 3.12 only)
    arrays = [np.asarray(array, order="C") for array in message.tensors.values()]
    specs = [[name, array.dtype.name, list(array.shape)] for name, array in zip(message.tensors, arrays)]
    envelope = {"v": PROTOCOL_VERSION, "type": message.type, "client": message.client,
                "round": message.round, "body": message.body, "tensors": specs}
    return [msgpack.packb(envelope, use_bin_type=True), *(array.reshape(-1).data.cast("B") for array in arrays)]


def decode(frames: list, max_bytes: int) -> Message:
    """Validate and decode received frames (bytes, memoryviews or zmq.Frame); raise MessageRejected on any fault."""
    buffers = [getattr(frame, "buffer", frame) for frame in frames]
    total = sum(len(memoryview(b)) for b in buffers)
    if not buffers:
        raise MessageRejected("empty message")
    if total > max_bytes:
        raise MessageRejected(f"oversized message: {total} bytes > limit {max_bytes}")
    envelope = _envelope(buffers[0])
    kind = envelope["type"]
    _check_body(kind, envelope["body"])
    specs = envelope["tensors"]
    if len(specs) != len(buffers) - 1:
        raise MessageRejected(f"{kind}: {len(specs)} tensor specs but {len(buffers) - 1} tensor frames (truncated?)")
    tensors = {}
    for spec, buffer in zip(specs, buffers[1:]):
        name, array = _tensor(spec, buffer)
        if name in tensors:
            raise MessageRejected(f"{kind}: tensor {_shown.repr(name)} sent twice")
        tensors[name] = array
    return Message(kind, envelope["client"], envelope["round"], envelope["body"], tensors)


def _envelope(buffer) -> dict:
    if len(memoryview(buffer)) > MAX_ENVELOPE_BYTES:
        raise MessageRejected(f"envelope of {len(memoryview(buffer))} bytes > limit {MAX_ENVELOPE_BYTES}")
    try:  # msgpack bounds every container by the input length, so no allocation bomb
        envelope = msgpack.unpackb(buffer, raw=False, strict_map_key=True, max_ext_len=0)
    except Exception as error:  # msgpack raises several unrelated exception types
        raise MessageRejected(f"envelope is not valid msgpack ({type(error).__name__})") from None
    if not isinstance(envelope, dict):
        raise MessageRejected("envelope is not a map")
    _check_nesting(envelope)
    # _is: True and 1.0 compare equal to 1 but are not a version number
    if not _is(envelope.get("v"), int) or envelope["v"] != PROTOCOL_VERSION:
        raise MessageRejected(f"protocol version {_shown.repr(envelope.get('v'))} "
                              f"(this side speaks {PROTOCOL_VERSION})")
    expected = {"type": str, "client": str, "round": int, "body": dict, "tensors": list}
    for key, kind in expected.items():
        if not _is(envelope.get(key), kind):
            raise MessageRejected(f"envelope field '{key}' missing or not {kind.__name__}")
    if envelope["type"] not in BODIES:
        raise MessageRejected(f"unknown message type {_shown.repr(envelope['type'])}")
    if len(envelope["tensors"]) > MAX_TENSORS or len(envelope["client"]) > 64:
        raise MessageRejected("too many tensors or client id too long")
    return envelope


def _check_nesting(envelope: dict) -> None:
    """Reject lists/maps nested deeper than MAX_NESTING; level by level, so nothing here recurses."""
    level: list[dict | list] = [envelope]
    for _ in range(MAX_NESTING):
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, (dict, list))]
        if not level:
            return
    raise MessageRejected(f"envelope nests lists/maps deeper than {MAX_NESTING} levels")


def _check_body(kind: str, body: dict) -> None:
    for key, expected in BODIES[kind].items():
        if not _is(body.get(key), expected):
            raise MessageRejected(f"{kind}: body field '{key}' missing or not {expected.__name__}")


def _is(value, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _tensor(spec, buffer) -> tuple[str, np.ndarray]:
    # isinstance(spec[1], str) first: an unhashable dtype (list, map) would make `in DTYPES` raise TypeError
    if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[1], str)
            and spec[1] in DTYPES and isinstance(spec[2], list) and len(spec[2]) <= MAX_DIMS
            and all(_is(d, int) and 0 <= d < 1 << 40 for d in spec[2])):
        raise MessageRejected(f"malformed tensor spec {_shown.repr(spec)} "
                              f"(want [name, dtype in {sorted(DTYPES)}, shape of <= {MAX_DIMS} dims])")
    name, dtype, shape = spec
    dtype = np.dtype(DTYPES[dtype])
    # NumPy refuses a shape whose non-zero dims span more bytes than it can index (2**63), even
    # when another dim is 0 and the tensor is empty; no real tensor comes near 2**62 bytes.
    if math.prod(d for d in shape if d) * dtype.itemsize >= 1 << 62:
        raise MessageRejected(f"tensor {_shown.repr(name)}: shape {_shown.repr(shape)} {dtype.name} spans "
                              f"2**62 bytes or more, counting zero dims as 1")
    expected = math.prod(shape) * dtype.itemsize
    if len(memoryview(buffer)) != expected:
        raise MessageRejected(f"tensor {_shown.repr(name)}: {len(memoryview(buffer))} bytes for shape {shape} "
                              f"{dtype.name} (expected {expected}; truncated?)")
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    if dtype.name in FLOAT_DTYPES and not np.isfinite(array).all():
        raise MessageRejected(f"tensor {_shown.repr(name)} carries NaN or Inf")
    return name, array


def check_tensors(message: Message, expected: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """The tensors must be exactly the expected names, each with the expected shape and dtype."""
    names = set(message.tensors)
    if names != set(expected):
        unknown, missing = sorted(names - set(expected)), sorted(set(expected) - names)
        raise MessageRejected(f"{message.type}: unexpected tensors {_shown.repr(unknown[:3])}, missing {missing[:3]}")
    for name, array in message.tensors.items():
        shape, dtype = expected[name]
        if tuple(array.shape) != tuple(shape) or array.dtype.name != dtype:
            raise MessageRejected(f"{message.type}: tensor {_shown.repr(name)} is "
                                  f"{array.dtype.name}{list(array.shape)}, expected {dtype}{list(shape)}")
