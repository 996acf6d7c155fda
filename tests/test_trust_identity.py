"""Who may speak for a client (issue 16, classes 3-6): identities bound to credentials, refusals as events
(counted when repeated), peer text capped, and a client that gives up at its join timeout with one line."""

import json
import os
import shutil
import signal
import socket
import time

import zmq

from runs import events, run, start, wait_for_event
from testbed.transport.endpoint import Router
from testbed.transport.keys import generate_keys
from testbed.transport.messages import Message, decode, encode

JOIN_BODY = {"profile": "", "task": "", "pid": 1}


def finished(result) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def stop(*processes) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


def updated_rounds(log: list[dict], client: str) -> list[int]:
    return [e["round"] for e in log if e["kind"] == "round_closed"
            for row in e["clients"] if row["client"] == client and row["status"] == "updated"]


def test_a_process_joining_first_as_a_client_without_its_token_is_refused_and_locks_no_one_out(
        write_scenario, tmp_path):
    out = tmp_path / "run"
    process = start("run", str(write_scenario()), "--out", str(out))
    context = zmq.Context()
    impostor = context.socket(zmq.DEALER)
    answers = []
    try:
        deadline = time.monotonic() + 300
        while not (out / "endpoints.json").exists():  # connect before the aggregator even binds: first in line
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.01)
        impostor.setsockopt(zmq.ROUTING_ID, b"c00")  # the routing id c00 used to claim for itself
        impostor.connect(json.loads((out / "endpoints.json").read_text())["router"])
        for proof in ({}, {"token": "0" * 32}):  # no token, then a guessed one
            impostor.send_multipart(encode(Message("JOIN", "c00", 0, {**JOIN_BODY, "pid": os.getpid(), **proof})))
        impostor.send_multipart(encode(Message("HEARTBEAT", "c00", 0, {"state": "idle"})))
        while process.poll() is None:  # listen for what the impostor is told, until the run ends
            if impostor.poll(100):
                answers.append(decode(impostor.recv_multipart(), 1 << 30))
                assert answers[-1].type != "WELCOME", "the impostor was welcomed as c00"
        output, _ = process.communicate(timeout=60)
    finally:
        impostor.close(0)
        context.term()
        stop(process)
    assert process.returncode == 0, output
    log = events(out)
    refused = [e for e in log if e["kind"] == "join_refused" and e["claimed"] == "c00"]
    assert [e["reason"].split(" (")[0] for e in refused] == ["no token", "wrong token"], refused
    assert [a.type for a in answers] == ["BYE", "BYE"] and "JOIN refused: no token" in answers[0].body["reason"]
    assert any(e["kind"] == "message_dropped" and e["claimed"] == "c00" and "has not joined" in e["reason"]
               for e in log)
    assert updated_rounds(log, "c00") == [1, 2]  # the real c00 was not locked out
    assert "0" * 32 not in (out / "events.jsonl").read_text()  # a token is never written down


def test_curve_binds_each_client_id_to_its_own_key(write_scenario, tmp_path):
    scenario = write_scenario(fleet="[{profile: laptop, count: 2}]")
    keys, posing = tmp_path / "keys", tmp_path / "posing"
    finished(run("keys", str(keys), "--scenario", str(scenario)))
    shutil.copytree(keys, posing)  # c00's own valid key, presented as c01's
    shutil.copy(keys / "clients" / "c00.key_secret", posing / "clients" / "c01.key_secret")
    rogue = tmp_path / "rogue"  # a key pair the aggregator never saw
    finished(run("keys", str(rogue), "--clients", "c01"))
    shutil.copy(keys / "server.key", rogue / "server.key")
    address, out = free_address(), tmp_path / "run"
    aggregator = start("aggregator", str(scenario), "--bind", address, "--keys", str(keys), "--out", str(out),
                       "--join-timeout", "120")
    c00 = start("client", "--connect", address, "--id", "c00", "--keys", str(keys))
    processes = [aggregator, c00]
    try:
        impostor = run("client", "--connect", address, "--id", "c01", "--keys", str(posing), "--join-timeout", "120",
                       timeout=200)
        assert impostor.returncode == 2, impostor.stdout + impostor.stderr
        assert impostor.stderr.strip().splitlines() == [
            f"testbed client: error: the aggregator at {address} did not let c01 join: "
            f"its CURVE key is authorized for 'c00', not for 'c01'"]
        unknown = run("client", "--connect", address, "--id", "c01", "--keys", str(rogue), "--join-timeout", "5",
                      timeout=120)
        assert unknown.returncode == 2 and "did not accept this client's CURVE key" in unknown.stderr
        processes.append(start("client", "--connect", address, "--id", "c01", "--keys", str(keys)))
        output, _ = aggregator.communicate(timeout=240)
        assert aggregator.returncode == 0, output
    finally:
        stop(*processes)
    log = events(out)
    refused = [e for e in log if e["kind"] == "join_refused"]
    assert refused and all(e["claimed"] == "c01" and "authorized for 'c00'" in e["reason"] for e in refused)
    assert sorted(e["client"] for e in log if e["kind"] == "client_joined") == ["c00", "c01"]
    assert updated_rounds(log, "c01") == [1, 2] and log[0]["auth"] == "curve"
    assert any(e["kind"] == "handshake_failed" and "CURVE key refused" in e["reason"] for e in log)


def test_a_client_whose_key_is_not_authorised_gives_up_at_its_join_timeout_with_one_line(tmp_path):
    generate_keys(tmp_path / "fleet", ["c00"])
    generate_keys(tmp_path / "rogue", ["c00"])  # a key pair the aggregator never saw
    shutil.copy(tmp_path / "fleet" / "server.key", tmp_path / "rogue" / "server.key")
    context = zmq.Context()
    router = Router(context, "tcp://127.0.0.1:*", max_bytes=1 << 20, curve_dir=tmp_path / "fleet")
    try:
        result = run("client", "--connect", router.address, "--id", "c00", "--keys", str(tmp_path / "rogue"),
                     "--join-timeout", "3", timeout=90)  # it used to block in send forever
    finally:
        router.close()
        context.term()
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"testbed client: error: the aggregator at {router.address} did not accept this client's CURVE key within "
        f"3 s (handshake failed: CURVE key refused (ZAP status 400: the key is not in the aggregator's authorized/))"]


def test_peer_text_is_capped_and_a_flood_of_drops_is_counted_not_written_out(write_scenario, tmp_path):
    address, out = free_address(), tmp_path / "run"
    aggregator = start("aggregator", str(write_scenario(fleet="[{profile: laptop, count: 1}]")), "--bind", address,
                       "--out", str(out), "--join-timeout", "300")
    context = zmq.Context()
    client, garbage = context.socket(zmq.DEALER), context.socket(zmq.DEALER)
    try:
        client.setsockopt(zmq.ROUTING_ID, b"c00")  # a peer may pick its routing id: it proves nothing
        client.connect(address)
        client.send_multipart(encode(Message("JOIN", "c00", 0, JOIN_BODY)))  # no --keys: nothing to prove
        assert client.poll(120_000) and decode(client.recv_multipart(), 1 << 30).type == "WELCOME"
        megabyte = "x" * 1_000_000
        client.send_multipart(encode(Message("HEARTBEAT", "c00", 0, {"state": megabyte})))
        client.send_multipart(encode(Message("BYE", "c00", 0, {"reason": megabyte})))
        garbage.setsockopt(zmq.ROUTING_ID, b"garbage")
        garbage.connect(address)
        for _ in range(1000):
            garbage.send(b"\xc1\xc1 not msgpack")
        garbage.send_multipart(encode(Message("HEARTBEAT", "c00", 0, {"state": "idle"})))  # handled after them all
        wait_for_event(out, lambda e: e["kind"] == "message_dropped" and e["identity"] == "garbage"
                       and "msgpack" not in e["reason"])
        aggregator.send_signal(signal.SIGINT)
        output, _ = aggregator.communicate(timeout=60)
    finally:
        client.close(0), garbage.close(0), context.term()
        stop(aggregator)
    lines = (out / "events.jsonl").read_text().splitlines()
    assert max(len(line) for line in lines) < 2000, "a peer's text reached the records uncut"
    assert output.startswith("warning: no --keys: any process that can reach") and aggregator.returncode == 130
    log = [json.loads(line) for line in lines]
    assert log[0]["auth"] == "none"
    left = next(e for e in log if e["kind"] == "client_left")
    assert len(left["reason"]) == 200 and left["reason"].endswith("…")
    assert any(e["kind"] == "message_dropped" and "state 'xxxx" in e["reason"] and "is unknown" in e["reason"]
               for e in log)
    floods = [e for e in log if e["kind"] == "message_dropped" and e["identity"] == "garbage"
              and "not valid msgpack" in e["reason"]]
    assert len(floods) <= 4 and sum(e.get("count", 1) for e in floods) == 1000  # a few events, every drop counted
    drops = sum(e.get("count", 1) for e in log if e["kind"] == "message_dropped")
    assert log[-1]["kind"] == "run_interrupted" and log[-1]["dropped_messages"] == drops
