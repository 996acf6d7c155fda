"""Hostile frames against `messages.decode`: it raises nothing but MessageRejected, stays small and fast.

Every property feeds frames a peer could put on the wire (random bytes, truncated or tampered valid
encodings, absurd declared sizes, deep nesting, non-finite payloads) and checks that decoding either
rejects them with a reason or returns a message that obeys every rule of the protocol.
"""

import math
import tracemalloc
from datetime import timedelta

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from testbed.transport.messages import (BODIES, DTYPES, MAX_DIMS, MAX_ENVELOPE_BYTES, MAX_NESTING,
                                        PROTOCOL_VERSION, Message, MessageRejected, decode, encode)

LIMIT = 1 << 20  # bytes: the max_bytes every decode here runs with
SLACK = 256 << 10  # bytes: what decoding a tiny message may allocate (msgpack objects, reasons)
# The deadline is what "never hangs" means here; generous for a loaded 2-core machine.
FUZZ = settings(max_examples=60, deadline=timedelta(seconds=2), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------------ strategies
SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
           | st.text(max_size=12) | st.binary(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10)
# valid body fields; NaN stays out of dict fields only because NaN != NaN would fail the round trip
FIELD_VALUES = {str: st.text(max_size=12), int: st.integers(-(2**63), 2**63 - 1),
                float: st.floats(allow_nan=False, allow_infinity=False),
                dict: st.dictionaries(st.text(max_size=6), SCALARS.filter(lambda v: v == v), max_size=3)}
FLOAT_DTYPES = ["float32", "float16"]
# [name, dtype, shape] with each part either plausible or anything at all
SPECS = st.builds(lambda *parts: list(parts), st.text(max_size=6),
                  st.sampled_from(sorted(DTYPES)) | st.lists(SCALARS, max_size=2) | st.dictionaries(st.text(), SCALARS)
                  | VALUES, st.lists(st.integers(-2, 2**41), max_size=MAX_DIMS + 2) | VALUES)


@st.composite
def arrays(draw, dtypes=tuple(DTYPES), finite=True):
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    elements = (st.floats(width=np.finfo(dtype).bits, allow_nan=False, allow_infinity=False)
                if dtype in FLOAT_DTYPES and finite else None)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def messages(draw, tensors=st.dictionaries(st.text(min_size=1, max_size=8), arrays(), max_size=3)):
    kind = draw(st.sampled_from(sorted(BODIES)))
    body = {key: draw(FIELD_VALUES[kind_]) for key, kind_ in BODIES[kind].items()}
    return Message(kind, draw(st.text(max_size=64)), draw(st.integers(0, 2**31)), body, draw(tensors))


def wire(message: Message) -> list[bytes]:
    return [bytes(frame) for frame in encode(message)]


def envelope_of(message: Message) -> dict:
    return msgpack.unpackb(wire(message)[0])


def pack(envelope: dict) -> bytes:
    return msgpack.packb(envelope, use_bin_type=True)


def raw_map(items: list[tuple[str, bytes]]) -> bytes:
    """A msgpack map whose values are already packed (so hostile raw bytes can sit inside)."""
    assert len(items) < 16
    return bytes([0x80 | len(items)]) + b"".join(msgpack.packb(key) + value for key, value in items)


def raw_envelope(message: Message, **raw_values: bytes) -> bytes:
    """The message's envelope with some values replaced by raw msgpack bytes."""
    items = [(key, raw_values.pop(key, None) or msgpack.packb(value, use_bin_type=True))
             for key, value in envelope_of(message).items()]
    return raw_map(items + list(raw_values.items()))


# ------------------------------------------------------------------ what "accepted" must mean
def is_field(value, kind: type) -> bool:
    if kind is float:
        return type(value) in (int, float) and math.isfinite(value)
    if kind is int:
        return type(value) is int
    return isinstance(value, kind)


def assert_obeys_protocol(message: Message, frames: list[bytes]) -> None:
    assert message.type in BODIES and isinstance(message.client, str) and len(message.client) <= 64
    assert type(message.round) is int
    assert all(is_field(message.body.get(key), kind) for key, kind in BODIES[message.type].items())
    assert len(message.tensors) == len(frames) - 1
    for array, frame in zip(message.tensors.values(), frames[1:]):
        assert array.dtype.name in DTYPES and array.ndim <= MAX_DIMS and array.nbytes == len(frame)
        assert array.size == 0 or np.shares_memory(array, np.frombuffer(frame, np.uint8))  # zero copies
        if array.dtype.name in FLOAT_DTYPES:
            assert np.isfinite(array).all()


def outcome(frames: list, limit: int = LIMIT) -> Message | MessageRejected:
    """Decode; any exception but MessageRejected escapes and fails the test."""
    try:
        message = decode(frames, limit)
    except MessageRejected as rejection:
        assert str(rejection) and "\n" not in str(rejection) and len(str(rejection)) < 1000
        return rejection
    assert_obeys_protocol(message, frames)
    return message


def peak_bytes_of_decode(frames: list) -> int:
    """Peak bytes allocated while decoding (frames already exist, so they are not counted)."""
    tracemalloc.start()
    try:
        outcome(frames)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def rejected(frames: list, reason: str, limit: int = LIMIT) -> None:
    result = outcome(frames, limit)
    assert isinstance(result, MessageRejected), f"accepted {result!r}"
    assert reason in str(result), str(result)


# ------------------------------------------------------------------ valid input still works
@FUZZ
@given(messages())
def test_every_valid_message_round_trips(message):
    decoded = outcome(wire(message))
    assert isinstance(decoded, Message), str(decoded)
    assert (decoded.type, decoded.client, decoded.round, decoded.body) == (
        message.type, message.client, message.round, message.body)
    for name, array in message.tensors.items():
        assert decoded.tensors[name].dtype == array.dtype and decoded.tensors[name].shape == array.shape
        np.testing.assert_array_equal(decoded.tensors[name], array)


# ------------------------------------------------------------------ garbage and tampering
@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_random_frames_raise_only_rejected(frames):
    outcome(frames)


@FUZZ
@given(messages(), st.data())
def test_a_truncated_envelope_is_rejected(message, data):
    frames = wire(message)
    cut = data.draw(st.integers(0, len(frames[0]) - 1))
    rejected([frames[0][:cut], *frames[1:]], "")


@FUZZ
@given(messages(), st.data())
def test_single_byte_corruption_never_escapes_as_another_error(message, data):
    frames = wire(message)
    index = data.draw(st.integers(0, len(frames) - 1))
    if not frames[index]:
        return
    at = data.draw(st.integers(0, len(frames[index]) - 1))
    flipped = bytearray(frames[index])
    flipped[at] ^= data.draw(st.integers(1, 255))
    outcome([*frames[:index], bytes(flipped), *frames[index + 1:]])


@FUZZ
@given(messages(), st.sampled_from(["v", "type", "client", "round", "body", "tensors"]), VALUES | st.just(KeyError))
def test_an_envelope_field_of_any_value_is_accepted_only_when_valid(message, key, value):
    envelope = envelope_of(message)
    if value is KeyError:
        del envelope[key]
    else:
        envelope[key] = value
    outcome([pack(envelope), *wire(message)[1:]])


@FUZZ
@given(messages(), VALUES.filter(lambda v: not (type(v) is int and v == PROTOCOL_VERSION)))
@example(Message("BYE", "c01", 1, {"reason": "x"}), True)
@example(Message("BYE", "c01", 1, {"reason": "x"}), 1.0)
def test_any_other_protocol_version_is_rejected(message, version):
    envelope = envelope_of(message)
    envelope["v"] = version
    rejected([pack(envelope), *wire(message)[1:]], "protocol version")


@FUZZ
@given(messages(), st.text(max_size=5000).filter(lambda kind: kind not in BODIES))
def test_an_unknown_message_type_is_rejected(message, kind):
    envelope = envelope_of(message)
    envelope["type"] = kind
    rejected([pack(envelope), *wire(message)[1:]], "unknown message type")


@FUZZ
@given(messages(tensors=st.just({})), st.dictionaries(st.text(max_size=8), VALUES, max_size=5))
def test_a_body_of_any_content_is_accepted_only_when_its_fields_are_valid(message, extra):
    body = {**message.body, **extra}
    outcome(wire(Message(message.type, message.client, message.round, body)))


# ------------------------------------------------------------------ tensor specs and frames
@FUZZ
@given(messages(tensors=st.just({})),
       st.lists(st.tuples(SPECS | SPECS | VALUES, st.binary(max_size=64)), min_size=1, max_size=4))
def test_tensor_specs_of_any_content_raise_only_rejected(message, specs_and_frames):
    envelope = envelope_of(message)
    envelope["tensors"] = [spec for spec, _ in specs_and_frames]
    outcome([pack(envelope), *(frame for _, frame in specs_and_frames)])


@FUZZ
@given(messages(tensors=st.just({})), st.sampled_from(sorted(DTYPES)), st.lists(st.integers(0, 2**40 - 1),
       min_size=1, max_size=MAX_DIMS), st.binary(max_size=64))
@example(Message("BYE", "c01", 1, {"reason": "x"}), "float16", [0, 1988, 72579, 159430, 200476], b"")
def test_huge_declared_shapes_allocate_nothing_like_them(message, dtype, shape, frame):
    envelope = envelope_of(message)
    envelope["tensors"] = [["w", dtype, shape]]
    frames = [pack(envelope), frame]
    assert peak_bytes_of_decode(frames) < SLACK


@pytest.mark.parametrize("dtype, shape", [("float16", [0, 1988, 72579, 159430, 200476]),
                                          ("int64", [0, 2**29, 2**30, 2])])
def test_an_empty_tensor_whose_other_dims_numpy_cannot_index_is_rejected(dtype, shape):
    envelope = envelope_of(Message("BYE", "c01", 1, {"reason": "x"}))
    envelope["tensors"] = [["w", dtype, shape]]
    rejected([pack(envelope), b""], "spans 2**62 bytes or more")


def test_an_empty_tensor_of_ordinary_dims_is_accepted():
    envelope = envelope_of(Message("BYE", "c01", 1, {"reason": "x"}))
    envelope["tensors"] = [["w", "float32", [0, 256]]]
    assert outcome([pack(envelope), b""]).tensors["w"].shape == (0, 256)


@FUZZ
@given(messages(tensors=st.just({})), st.integers(MAX_DIMS + 1, 100_000), st.sampled_from([0, 1, 2**40 - 1]))
@example(Message("BYE", "c01", 1, {"reason": "x"}), 100_000, 2**40 - 1)
def test_a_shape_with_too_many_dims_is_rejected_at_once(message, dims, side):
    envelope = envelope_of(message)
    envelope["tensors"] = [["w", "float32", [side] * dims]]
    rejected([pack(envelope), b"\0" * 4], "malformed tensor spec")


@FUZZ
@given(messages(tensors=st.dictionaries(st.text(min_size=1, max_size=8), arrays(), min_size=1, max_size=3)),
       st.data())
def test_a_frame_whose_length_does_not_match_shape_and_dtype_is_rejected(message, data):
    frames = wire(message)
    index = data.draw(st.integers(1, len(frames) - 1))
    change = data.draw(st.integers(-len(frames[index]), 64).filter(bool))
    frame = frames[index][:change] if change < 0 else frames[index] + b"\0" * change
    rejected([*frames[:index], frame, *frames[index + 1:]], "bytes for shape")


@FUZZ
@given(messages(), st.integers(-3, 3).filter(bool), st.binary(max_size=16))
def test_a_wrong_number_of_tensor_frames_is_rejected(message, change, spare):
    frames = wire(message)
    if change < 0 and len(frames) - 1 < -change:
        return
    frames = frames[:change] if change < 0 else frames + [spare] * change
    rejected(frames, "tensor specs but")


@FUZZ
@given(arrays(dtypes=FLOAT_DTYPES), st.sampled_from([np.nan, np.inf, -np.inf]), st.data())
def test_nan_or_inf_anywhere_in_a_float_tensor_is_rejected(array, bad, data):
    if array.size == 0:
        return
    array = array.copy()
    array.flat[data.draw(st.integers(0, array.size - 1))] = bad
    rejected(wire(Message("MODEL", "c01", 1, {"depth": 1}, {"w": array})), "NaN or Inf")


@FUZZ
@given(st.integers(1, 64))
def test_an_oversized_message_is_rejected_before_it_is_parsed(extra):
    rejected([b"\xc1" * (LIMIT + extra)], "oversized message")
    rejected([b"\xc1", b"\0" * (MAX_ENVELOPE_BYTES + extra)], "oversized message", limit=MAX_ENVELOPE_BYTES)


# ------------------------------------------------------------------ msgpack bombs
def nested(depth: int, container: str) -> bytes:
    """`depth` lists (or maps) inside each other, built by hand: msgpack.packb refuses such depth."""
    return (b"\x91" if container == "list" else b"\x81\xa1k") * depth + b"\xc0"


@FUZZ
@given(messages(tensors=st.just({})), st.integers(MAX_NESTING + 1, 3000), st.sampled_from(["list", "map"]),
       st.sampled_from(["v", "type", "tensors", "body extra", "whole envelope"]))
@example(Message("BYE", "c01", 1, {"reason": "x"}), 1020, "list", "tensors")
@example(Message("BYE", "c01", 1, {"reason": "x"}), 1020, "list", "v")
def test_deep_nesting_is_rejected_without_recursion(message, depth, container, where):
    deep = nested(depth, container)
    if where == "whole envelope":
        frame = deep
    elif where == "body extra":
        frame = raw_envelope(message, body=raw_map([(k, msgpack.packb(v)) for k, v in message.body.items()]
                                                   + [("extra", deep)]))
    elif where == "tensors":
        frame = raw_envelope(message, tensors=b"\x91" + deep)
    else:
        frame = raw_envelope(message, **{where: deep})
    assert isinstance(outcome([frame, b"\0" * 4]), MessageRejected)


def body_with_nested_extra(message: Message, depth: int) -> bytes:
    """The envelope (level 1) holds the body (level 2) whose extra field nests `depth` more maps."""
    extra = raw_map([(k, msgpack.packb(v)) for k, v in message.body.items()] + [("extra", nested(depth, "map"))])
    return raw_envelope(message, body=extra)


@FUZZ
@given(messages(tensors=st.just({})), st.integers(1, MAX_NESTING - 2))
def test_nesting_up_to_the_limit_is_accepted(message, depth):
    assert isinstance(outcome([body_with_nested_extra(message, depth)]), Message)


def test_nesting_one_level_beyond_the_limit_is_rejected():
    rejected([body_with_nested_extra(Message("BYE", "c01", 1, {"reason": "x"}), MAX_NESTING - 1)],
             f"deeper than {MAX_NESTING} levels")


GIANT_HEADERS = {  # msgpack headers that declare n items / bytes (n is packed after the tag)
    "array32": b"\xdd", "map32": b"\xdf", "str32": b"\xdb", "bin32": b"\xc6", "ext32": b"\xc9"}


@FUZZ
@given(messages(tensors=st.just({})), st.sampled_from(sorted(GIANT_HEADERS)), st.integers(1 << 16, 2**32 - 1),
       st.binary(max_size=32), st.sampled_from(["whole envelope", "body", "tensors", "client", "body extra"]))
def test_giant_declared_containers_and_strings_allocate_nothing_like_them(message, header, size, tail, where):
    giant = GIANT_HEADERS[header] + size.to_bytes(4, "big") + (b"\x01" if header == "ext32" else b"") + tail
    if where == "whole envelope":
        frame = giant
    elif where == "body extra":
        frame = raw_envelope(message, body=raw_map([(k, msgpack.packb(v)) for k, v in message.body.items()]
                                                   + [("extra", giant)]))
    else:
        frame = raw_envelope(message, **{where: giant})
    assert isinstance(outcome([frame]), MessageRejected)
    assert peak_bytes_of_decode([frame]) < SLACK


# ------------------------------------------------------------------ memory of a full-size message
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_a_full_size_message_decodes_within_its_limit(dtype):
    array = np.ones((LIMIT - 4096) // np.dtype(dtype).itemsize, dtype)
    frames = wire(Message("MODEL", "c01", 1, {"depth": 1}, {"w": array}))
    assert peak_bytes_of_decode(frames) < LIMIT  # the NaN check's scratch is the only sizeable allocation
