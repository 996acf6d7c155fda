"""The wire: message encoding and validation, ROUTER/DEALER over real sockets, CURVE authentication."""

import time

import msgpack
import numpy as np
import pytest
import zmq

from testbed.transport.endpoint import Dealer, Router
from testbed.transport.keys import authorized_keys, generate_keys
from testbed.transport.messages import Message, MessageRejected, check_tensors, decode, encode

LIMIT = 1 << 20


def update(**tensors) -> Message:
    body = {"depth": 2, "samples": 8, "loss": 0.5, "timings": {}}
    return Message("UPDATE", "c01", 3, body, tensors or {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})


def test_round_trip_keeps_names_shapes_dtypes_and_values():
    message = update(a=np.ones((2, 3), np.float32), b=np.arange(4, dtype=np.int64), c=np.zeros(5, np.float16))
    decoded = decode([bytes(frame) for frame in encode(message)], LIMIT)
    assert (decoded.type, decoded.client, decoded.round, decoded.body) == ("UPDATE", "c01", 3, message.body)
    for name, array in message.tensors.items():
        np.testing.assert_array_equal(decoded.tensors[name], array)
        assert decoded.tensors[name].dtype == array.dtype


def test_encoding_does_not_copy_tensor_buffers():
    array = np.ones(1000, np.float32)
    frames = encode(update(w=array))
    assert np.shares_memory(np.frombuffer(frames[1], np.float32), array)


def envelope(**changes) -> bytes:
    base = {"v": 1, "type": "UPDATE", "client": "c01", "round": 1,
            "body": {"depth": 2, "samples": 8, "loss": 0.5, "timings": {}}, "tensors": [["w", "float32", [2]]]}
    base.update(changes)
    return msgpack.packb(base)


GOOD_TENSOR = np.ones(2, np.float32).tobytes()


@pytest.mark.parametrize("frames, reason", [
    ([], "empty message"),
    ([b"\xc1\x00"], "not valid msgpack"),
    ([msgpack.packb([1, 2])], "not a map"),
    ([envelope(v=2), GOOD_TENSOR], "protocol version 2"),
    ([envelope(type="EXPLODE"), GOOD_TENSOR], "unknown message type"),
    ([envelope(round="1"), GOOD_TENSOR], "'round' missing or not int"),
    ([envelope(body={"depth": 2}), GOOD_TENSOR], "body field 'samples' missing"),
    ([envelope(body={"depth": True, "samples": 1, "loss": 0.1, "timings": {}}), GOOD_TENSOR], "'depth'"),
    ([envelope()], "1 tensor specs but 0 tensor frames"),
    ([envelope(), GOOD_TENSOR[:-1]], "7 bytes for shape [2] float32"),
    ([envelope(tensors=[["w", "complex64", [2]]]), GOOD_TENSOR], "malformed tensor spec"),
    ([envelope(tensors=[["w", "float32", [-2]]]), GOOD_TENSOR], "malformed tensor spec"),
    ([envelope(tensors=[["w", "float32", [2]], ["w", "float32", [2]]]), GOOD_TENSOR, GOOD_TENSOR], "sent twice"),
    ([envelope(), np.array([1, np.nan], np.float32).tobytes()], "NaN or Inf"),
    ([envelope(), np.array([np.inf, 1], np.float32).tobytes()], "NaN or Inf"),
    ([envelope(), b"x" * (LIMIT + 1)], "oversized message"),
])
def test_bad_messages_are_rejected_with_a_reason(frames, reason):
    with pytest.raises(MessageRejected) as error:
        decode(frames, LIMIT)
    assert reason in str(error.value)


def test_check_tensors_wants_exact_names_shapes_and_dtypes():
    message = update(w=np.ones((2, 3), np.float32))
    check_tensors(message, {"w": ((2, 3), "float32")})
    for expected, reason in [({"w": ((3, 2), "float32")}, "expected float32[3, 2]"),
                             ({"w": ((2, 3), "float16")}, "expected float16"),
                             ({"v": ((2, 3), "float32")}, "unexpected tensors ['w']")]:
        with pytest.raises(MessageRejected) as error:
            check_tensors(message, expected)
        assert reason in str(error.value)


@pytest.fixture
def context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def exchange(router: Router, dealer: Dealer, message: Message, timeout_s: float = 5.0):
    dealer.send(message)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        received = router.poll(0.1)
        if received is not None:
            return received
    return None


def test_router_and_dealer_over_ipc(context, tmp_path):
    router = Router(context, f"ipc://{tmp_path}/r", max_bytes=LIMIT)
    dealer = Dealer(context, router.address, "c01", max_bytes=LIMIT)
    received = exchange(router, dealer, update())
    assert received.message.type == "UPDATE" and received.reason is None and received.user_id is None
    assert router.send(received.identity, Message("BYE", "c01", 0, {"reason": "done"})) > 0
    reply, nbytes = dealer.recv(5.0)
    assert reply.body == {"reason": "done"} and nbytes > 0
    assert router.send(b"nobody", Message("BYE", "nobody", 0, {"reason": "x"})) == 0  # unknown peer
    router.close()


def test_routing_ids_are_the_routers_so_no_client_can_take_anothers(context):
    """Two sockets of the same client id get connections of their own: neither can lock the other out."""
    router = Router(context, "tcp://127.0.0.1:*", max_bytes=LIMIT)
    first = Dealer(context, router.address, "c01", max_bytes=LIMIT)
    second = Dealer(context, router.address, "c01", max_bytes=LIMIT)
    one, two = exchange(router, first, update()), exchange(router, second, update())
    assert one.identity != two.identity and b"c01" not in (one.identity, two.identity)
    assert "NaN or Inf" in exchange(router, first, update(w=np.array([np.nan], np.float32))).reason
    router.close()


def test_curve_admits_known_keys_and_refuses_unknown_ones(context, tmp_path):
    generate_keys(tmp_path / "fleet", ["c01"])
    generate_keys(tmp_path / "rogue", ["c01"])  # same id, keys the aggregator never saw
    router = Router(context, "tcp://127.0.0.1:*", max_bytes=LIMIT, curve_dir=tmp_path / "fleet")
    try:
        good = Dealer(context, router.address, "c01", max_bytes=LIMIT, curve_dir=tmp_path / "fleet")
        received = exchange(router, good, update())
        assert received.message.client == "c01"
        # every message names the key its connection authenticated with: what binds a client id to its key
        assert received.user_id == authorized_keys(tmp_path / "fleet")["c01"]
        rogue_dir = tmp_path / "rogue"
        (rogue_dir / "server.key").write_bytes((tmp_path / "fleet" / "server.key").read_bytes())
        rogue = Dealer(context, router.address, "c01", max_bytes=LIMIT, curve_dir=rogue_dir)
        assert exchange(router, rogue, update(), timeout_s=2.0) is None
        events = wait_for_connection_events(router, "handshake_failed")  # the refusal is seen, not silent
        assert "CURVE key refused" in events[0].reason
        deadline = time.monotonic() + 10.0
        while not rogue.key_refused and time.monotonic() < deadline:  # the client's own monitor tells it why
            rogue.watch()
            time.sleep(0.05)
        assert rogue.key_refused and "CURVE key refused" in rogue.failure
    finally:
        router.close()


def wait_for_connection_events(router: Router, kind: str, timeout_s: float = 10.0) -> list:
    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline and not any(e.kind == kind for e in seen):
        router.poll(0.1)
        seen += router.connection_events()
    return [e for e in seen if e.kind == kind]


def test_a_connection_cut_for_an_oversized_frame_is_reported(context):
    router = Router(context, "tcp://127.0.0.1:*", max_bytes=1024)
    raw = context.socket(zmq.DEALER)
    raw.connect(router.address)
    raw.send(b"x" * 5000)  # beyond twice the limit: libzmq cuts the connection, no message arrives
    try:
        closed = wait_for_connection_events(router, "closed")
        assert closed and closed[0].identity is None and "before delivering any message" in closed[0].reason
    finally:
        raw.close(0)
        router.close()


def test_keys_are_readable_by_their_owner_alone_also_when_a_directory_is_extended(tmp_path):
    import stat

    directory = tmp_path / "keys"
    (directory / "clients").mkdir(parents=True, mode=0o755)
    (directory / "clients").chmod(0o755)
    generate_keys(directory, ["c00"])
    generate_keys(directory, ["c00", "c01"])
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert {mode(d) for d in (directory, directory / "clients", directory / "authorized")} == {0o700}
    secrets = [directory / "server.key_secret", *(directory / "clients").glob("*.key_secret")]
    assert len(secrets) == 3 and {mode(path) for path in secrets} == {0o600}


def test_send_waits_until_every_tensor_buffer_is_released():
    """`wait_s` covers all frames, not only the last (pyzmq copies a small last frame and is done with it at once)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never speaks ZMTP: nothing can leave
    context = zmq.Context()
    try:
        dealer = Dealer(context, f"tcp://127.0.0.1:{listener.getsockname()[1]}", "c01", max_bytes=1 << 24)
        tensors = {"big": np.ones(1 << 20, np.float32), "small_last": np.ones(4, np.float32)}
        body = {"depth": 1, "samples": 1, "loss": 0.0, "timings": {}}
        started = time.monotonic()
        dealer.send(Message("UPDATE", "c01", 1, body, tensors), wait_s=0.3)
        assert time.monotonic() - started >= 0.25
        dealer.close()
    finally:
        context.destroy(linger=0)
        listener.close()
