"""What `testbed run --cluster` decides without a cluster: each client's seat, the refusals, the addresses; and a
client host (the object a Ray actor wraps) starting, following and ending a real client process. No Ray needed."""

import os
import signal
import time

import pytest

from testbed.config.loader import load_scenario, resolve_fleet
from testbed.errors import UserError
from testbed.launch.cluster import Seat, addresses, check_capacity, fleet_nodes, seats
from testbed.launch.cluster_host import ClientHost
from testbed.transport.keys import generate_keys
from tests.runs import alive


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
    assert Seat("c02", 6, "big").bundle() == {"CPU": 6.0, "memory": 600.0 * 2 ** 20, "big": 0.001}


def test_a_fleet_beyond_the_cluster_is_refused_naming_what_it_asks_and_what_there_is():
    with pytest.raises(UserError, match=r"asks 12 CPUs \(3 clients: 4 each\), the Ray cluster has 8 CPUs on 2 node"):
        check_capacity([Seat(f"c0{i}", 4, None) for i in range(3)], [node(4), node(4)], "auto")
    with pytest.raises(UserError, match=r"node: rpi.*none does \(resources offered: big"):
        check_capacity([Seat("c00", 1, "rpi")], [node(4, big=1)], "auto")
    with pytest.raises(UserError, match=r"node: big ask 8 CPUs .* offering 'big' have 4 CPUs"):
        check_capacity([Seat("c00", 4, "big"), Seat("c01", 4, "big")], [node(4, big=1), node(8)], "auto")
    check_capacity([Seat("c00", 4, "big"), Seat("c01", 4, None)], [node(4, big=1), node(4)], "auto")


def test_a_fleet_beyond_the_clusters_memory_is_refused_before_anything_starts():
    """Each client reserves 600 MiB on its node (its process and its Ray actor), so that a node's memory caps how many
    it takes instead of Ray's memory monitor killing them mid-run."""
    fleet = [Seat(f"c{i:02d}", 1, None) for i in range(64)]
    with pytest.raises(UserError, match=r"asks 38400 MiB of memory \(64 clients: 600 MiB each.*has 32768 MiB on 2 node"):
        check_capacity(fleet, [node(64), node(64)], "auto")
    check_capacity(fleet[:54], [node(64), node(64)], "auto")  # 32400 MiB: fits
    with pytest.raises(UserError, match=r"node: big ask 1200 MiB .* offering 'big' have 1000 MiB"):
        check_capacity([Seat("c00", 1, "big"), Seat("c01", 1, "big")], [node(4, 1000, big=1), node(4)], "auto")


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


def test_a_client_host_starts_a_client_with_its_keys_hands_its_log_back_and_ends_it(tmp_path):
    keys = tmp_path / "keys"
    generate_keys(keys, ["c07"])
    host = ClientHost(f"test-{os.getpid()}", "c07")
    facts = host.start("tcp://127.0.0.1:9", {"server.key": (keys / "server.key").read_text(),
                                             "client.key_secret": (keys / "clients" / "c07.key_secret").read_text()},
                       join_timeout_s=60)
    try:
        assert alive(facts["pid"]) and facts["hostname"] and facts["testbed"]
        assert os.getpgid(facts["pid"]) == facts["pid"]  # a group of its own: ended with one signal
        secret = host.keys / "clients" / "c07.key_secret"
        assert secret.stat().st_mode & 0o777 == 0o600 and host.keys.stat().st_mode & 0o777 == 0o700
        state = host.poll(0)
        assert state["exitcode"] is None and state["affinity"]
        time.sleep(0.5)
    finally:
        ended = host.stop(0)
    assert not alive(facts["pid"]) and ended["exitcode"] in (-signal.SIGTERM, -signal.SIGKILL, 0, 2)
    assert not host.keys.exists() and not host.root.exists()  # its keys and the run's folder on the node are gone
    assert isinstance(ended["log"], bytes)


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
