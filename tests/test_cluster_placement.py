"""What `testbed run --cluster` decides without a cluster: each client's seat, the refusals, the addresses; and a
node host (the object a Ray actor wraps) forking, following and ending real client processes. No Ray needed."""

import os
import signal
import time

import pytest

from testbed.config.loader import load_scenario, resolve_fleet
from testbed.errors import UserError
from testbed.launch.cluster import Seat, addresses, check_capacity, fleet_nodes, seats
from testbed.launch.cluster_host import NodeHost
from testbed.transport.keys import generate_keys
from tests.runs import alive, parent


def node(cpus: int, memory_mib: int = 16384, **resources: float) -> dict:
    return {"NodeID": f"n{cpus}{''.join(resources)}", "Alive": True,
            "Resources": {"CPU": float(cpus), "memory": float(memory_mib * 2 ** 20), **resources}}


def scenario(*fleet: dict):
    return load_scenario({"name": "c", "fleet": list(fleet)}, source="test")


def test_each_client_reserves_its_profile_cores_capped_by_the_largest_node_that_may_host_it():
    plan = scenario({"profile": "laptop", "count": 2}, {"profile": "workstation", "node": "big"})
    clients = resolve_fleet(plan)
    nodes = [node(2), node(6, big=1)]
    assert fleet_nodes(plan, clients) == {"c00": None, "c01": None, "c02": "big"}
    assert seats(plan, clients, nodes) == [Seat("c00", 4, None), Seat("c01", 4, None), Seat("c02", 6, "big")]
    assert Seat("c02", 6, "big").bundle() == {"CPU": 6.0, "memory": 400.0 * 2 ** 20, "big": 0.001}
    assert {seat.mib for seat in seats(plan, clients, nodes, client_mib=1500)} == {1500}  # --client-memory 1500


def test_a_fleet_beyond_the_cluster_is_refused_naming_what_it_asks_and_what_there_is():
    with pytest.raises(UserError, match=r"asks 12 CPUs \(3 clients: 4 each\), the Ray cluster has 8 CPUs on 2 node"):
        check_capacity([Seat(f"c0{i}", 4, None) for i in range(3)], [node(4), node(4)], "auto")
    with pytest.raises(UserError, match=r"node: rpi.*none does \(resources offered: big"):
        check_capacity([Seat("c00", 1, "rpi")], [node(4, big=1)], "auto")
    with pytest.raises(UserError, match=r"node: big ask 8 CPUs .* offering 'big' have 4 CPUs"):
        check_capacity([Seat("c00", 4, "big"), Seat("c01", 4, "big")], [node(4, big=1), node(8)], "auto")
    check_capacity([Seat("c00", 4, "big"), Seat("c01", 4, None)], [node(4, big=1), node(4)], "auto")


def test_a_fleet_beyond_the_clusters_memory_is_refused_before_anything_starts():
    """Each client reserves 400 MiB on its node by default (--client-memory), so that a node's memory caps how many
    it takes instead of Ray's memory monitor killing them mid-run."""
    fleet = [Seat(f"c{i:02d}", 1, None) for i in range(82)]
    with pytest.raises(UserError, match=r"asks 32800 MiB of memory \(82 clients: 400 MiB each, --client-memory\).*"
                                        r"has 32768 MiB on 2 node"):
        check_capacity(fleet, [node(64), node(64)], "auto")
    check_capacity(fleet[:81], [node(64), node(64)], "auto")  # 32400 MiB: fits
    light = [Seat(f"c{i:02d}", 1, None, mib=200) for i in range(160)]  # --client-memory 200
    check_capacity(light, [node(80), node(80)], "auto")
    with pytest.raises(UserError, match=r"node: big ask 800 MiB .* offering 'big' have 700 MiB"):
        check_capacity([Seat("c00", 1, "big"), Seat("c01", 1, "big")], [node(4, 700, big=1), node(4)], "auto")


def test_the_aggregator_binds_where_the_nodes_reach_it():
    bind, connect = addresses(None, "127.0.0.1")
    assert bind == connect and bind.startswith("tcp://127.0.0.1:") and int(bind.rsplit(":", 1)[1]) > 0
    assert addresses("tcp://*:5555", "10.0.0.7") == ("tcp://*:5555", "tcp://10.0.0.7:5555")
    assert addresses("tcp://10.0.0.9:5555", "10.0.0.7") == ("tcp://10.0.0.9:5555", "tcp://10.0.0.9:5555")
    with pytest.raises(UserError, match=r"--bind ipc://x: not allowed \(allowed: tcp://HOST:PORT"):
        addresses("ipc://x", "10.0.0.7")


def test_a_node_resource_name_is_checked_by_the_scenario():
    with pytest.raises(UserError, match=r"fleet\[0\]\.node: 'CPU' is not allowed"):
        scenario({"profile": "laptop", "node": "CPU"})


def test_a_node_host_forks_its_clients_with_their_keys_hands_their_logs_back_and_ends_them(tmp_path):
    keys = tmp_path / "keys"
    generate_keys(keys, ["c07", "c08"])
    host = NodeHost(f"test-{os.getpid()}")
    server_key = (keys / "server.key").read_text()
    try:
        facts = {client_id: host.start(client_id, "tcp://127.0.0.1:9",  # no aggregator there: they wait to join
                                       {"server.key": server_key,
                                        "client.key_secret": (keys / "clients" / f"{client_id}.key_secret").read_text()},
                                       join_timeout_s=60)
                 for client_id in ("c07", "c08")}
        server = facts["c07"]["forkserver"]
        assert all(alive(f["pid"]) and f["hostname"] and f["testbed"] for f in facts.values())
        # both forked from the node's one fork server, in its process group: it imported torch for both
        assert {parent(f["pid"]) for f in facts.values()} == {server} == {f["forkserver"] for f in facts.values()}
        assert {os.getpgid(f["pid"]) for f in facts.values()} == {server}
        secret = host.root / "keys" / "c07" / "clients" / "c07.key_secret"
        assert secret.stat().st_mode & 0o777 == 0o600 and secret.parent.parent.stat().st_mode & 0o777 == 0o700
        state = host.poll("c07", 0)
        assert state["exitcode"] is None and state["affinity"]
        time.sleep(0.5)
        ended = host.stop("c07", 0)
        assert not alive(facts["c07"]["pid"]) and ended["exitcode"] in (-signal.SIGTERM, -signal.SIGKILL, 0, 2)
        assert isinstance(ended["log"], bytes)  # its log (empty while it only waits to join), handed back
        assert not (host.root / "keys" / "c07").exists() and alive(facts["c08"]["pid"])  # the other one runs on
    finally:
        host.close()
    assert not alive(facts["c08"]["pid"]) and not alive(server)  # closing the host ends its server and the rest
    assert not host.root.exists()  # the run's folder on the node is gone


def test_without_ray_cluster_says_in_one_line_how_to_get_it(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
            "from testbed.cli import main\n"
            f"sys.exit(main(['run', 'scenarios/smoke.yaml', '--cluster', 'auto', '--out', {str(tmp_path / 'run')!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "testbed run: error: --cluster needs Ray, which is not installed here: pip install -e '.[ray]' "
        "(or: pip install 'ray[client]>=2.9')"]
    assert not (tmp_path / "run").exists()


def test_a_mixed_fleet_is_counted_by_size():
    fleet = [Seat("c00", 4, None), Seat("c01", 4, None), Seat("c02", 2, None)]
    with pytest.raises(UserError, match=r"asks 10 CPUs \(3 clients: 2 x 4 \+ 1 x 2\), the Ray cluster has 4 CPUs"):
        check_capacity(fleet, [node(4)], "auto")
