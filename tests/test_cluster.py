"""`testbed run --cluster` on a local Ray cluster of two nodes: placement, records, node loss, Ctrl-C, refusals.

One cluster serves the whole module (starting one takes seconds): a head node offering the resource `node-a` and
a second node offering `node-b`, 4 logical CPUs each (a laptop client reserves 4). The test that removes a node
comes last. Every run is a real `testbed run` process; each test is bounded in time.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from testbed.launch.cluster_host import node_root
from tests.runs import alive, events, parent, start, wait_for_event
from tests.runs import testbed_command as command_for  # renamed: pytest would collect test*

ray = pytest.importorskip("ray", reason="testbed run --cluster needs Ray (pip install -e '.[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

# one worker runs every test here, beside its module's Ray cluster (pytest -n: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("ray_cluster")

NODE = {"num_cpus": 4, "include_dashboard": False, "object_store_memory": 80 * 2**20}
# No idle workers started ahead of need (on a small host each is seconds of CPU for nothing); a lost node known
# as such within ~10 s rather than Ray's ~30 s (checks every 2 s, 3 s to answer, 3 missed), not quicker, lest a
# busy host's live node be taken for lost; a node's agent given 60 s to start (a busy host took 16).
HEAD_CONFIG = {"prestart_worker_first_driver": False, "enable_worker_prestart": False,
               "health_check_initial_delay_ms": 2000, "health_check_period_ms": 2000,
               "health_check_timeout_ms": 3000, "health_check_failure_threshold": 3,
               "agent_register_timeout_ms": 60000}
# What a node's fork server and every client forked from it run (as the local launcher's fork server does, which
# forks the aggregator: the node's descend from a NodeHost).
CLUSTER_CLIENTS = "testbed.launch.fork_server"
RUN_TIMEOUT_S = 150  # host seconds a whole run may take here (2 rounds on the debug backbone, clients starting)


@pytest.fixture(scope="module")
def cluster(cache):  # `cache` first: the nodes' processes inherit TESTBED_CACHE from this process
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "resources": {"node-a": 1},
                                                            "_system_config": HEAD_CONFIG})
    cluster.second = cluster.add_node(**NODE, resources={"node-b": 1})
    yield cluster
    cluster.shutdown()


def run_on(cluster: Cluster, scenario: Path, out: Path, *more: str) -> subprocess.Popen:
    return start("run", str(scenario), "--cluster", cluster.address, "--out", str(out), "--no-dashboard", *more)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descends_from_this_test(pid: int) -> bool:
    while pid > 1:
        if pid == os.getpid():
            return True
        pid = parent(pid)
    return False


def leftovers(run_dir: Path) -> dict[int, str]:
    """pid -> command line of every process left of the run: the node hosts of this test's Ray nodes, the fork servers
    they started and the clients forked from those (found by descent from this test, or, wherever they were
    reparented, by the pids the run recorded)."""
    recorded = {facts[key] for facts in client_pids(run_dir).values() for key in ("pid", "forkserver") if key in facts}
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(pid := int(entry.name)):
            command = command_line(pid)
            if (pid in recorded or ("NodeHost" in command and descends_from_this_test(pid))
                    or (CLUSTER_CLIENTS in command and under_node_host(pid))):
                found[pid] = command
    return found


def under_node_host(pid: int) -> bool:
    while (pid := parent(pid)) > 1:
        if "NodeHost" in command_line(pid):
            return True
    return False


def wait_none_left(run_dir: Path, timeout_s: float) -> float:
    """Seconds until no client or client host of the run is alive; fails after `timeout_s`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if not leftovers(run_dir):
            return time.monotonic() - began
        time.sleep(0.1)
    raise AssertionError(f"left after {timeout_s} s: {leftovers(run_dir)}")


def client_pids(run_dir: Path) -> dict[str, dict]:
    path = run_dir / "processes.json"
    if not path.exists():
        return {}
    try:
        processes = json.loads(path.read_text())
    except json.JSONDecodeError:  # being rewritten
        return {}
    return {name: facts for name, facts in processes.items() if isinstance(facts, dict) and "pid" in facts}


def scenario_for(write_scenario, name: str, fleet: str, rounds: int = 2):
    return write_scenario(name, rounds=rounds, fleet=fleet, emulation="{clock: events}",
                          training="{local_steps: 2, batch_size: 4}")


def test_a_run_spread_over_two_nodes_finishes_with_its_nodes_recorded(cluster, write_scenario, tmp_path):
    scenario = scenario_for(write_scenario, "spread", "[{profile: laptop, node: node-a}, {profile: laptop, node: node-b}]")
    out = tmp_path / "spread"
    process = run_on(cluster, scenario, out)
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, output
    assert "aggregator on tcp://" in output and "CURVE" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["rounds_completed"] == 2
    clients = client_pids(out)
    assert sorted(clients) == ["c00", "c01"]
    assert len({facts["node_id"] for facts in clients.values()}) == 2, clients  # one client on each node
    assert all(facts["cpus_reserved"] == 4 and facts["affinity"] for facts in clients.values()), clients
    fleet = json.loads((out / "fleet.json").read_text())
    assert [entry["node"]["resource"] for entry in fleet] == ["node-a", "node-b"]
    for client in ("c00", "c01"):  # the client's own log came back from its node
        assert "c0" in (out / "logs" / f"{client}.log").read_text()
    assert {node["node_id"] for node in json.loads((out / "cluster.json").read_text())["nodes"]} == {
        facts["node_id"] for facts in clients.values()}
    assert not any(alive(facts["pid"]) for facts in clients.values())
    wait_none_left(out, 5.0)


def test_a_fleet_asking_more_cpus_than_the_cluster_has_is_refused_in_one_line(cluster, write_scenario, tmp_path):
    scenario = scenario_for(write_scenario, "big", "[{profile: laptop, count: 3}]")
    out = tmp_path / "run"
    process = run_on(cluster, scenario, out)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    lines = [line for line in output.splitlines() if "error" in line]
    assert len(lines) == 1 and "asks 12 CPUs" in lines[0] and "has 8 CPUs on 2 node(s)" in lines[0], output
    assert not out.exists()  # nothing was made, nothing started


def test_ctrl_c_ends_every_client_and_host_within_5_s(cluster, write_scenario, tmp_path):
    fleet = f"[{{profile: {profile_file(tmp_path, 'one_core', 1)}, count: 2}}]"  # one node could hold both
    out = tmp_path / "interrupted"
    process = run_on(cluster, scenario_for(write_scenario, "interrupted", fleet, rounds=50), out)
    try:
        wait_for_event(out, lambda event: event["kind"] == "round_started", timeout=RUN_TIMEOUT_S)
        clients = client_pids(out)
        assert len({facts["node_id"] for facts in clients.values()}) == 2, clients  # spread, the default
        pids = [facts["pid"] for facts in clients.values()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids) and len(leftovers(out)) == 6
        # 2 clients, each forked by the fork server of the host on its node
        process.send_signal(signal.SIGINT)
        wait_none_left(out, 5.0)  # every client and host gone within 5 s of Ctrl-C
        process.wait(timeout=60)  # then the run records its end and writes its report
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, process.stdout.read() if process.stdout else ""
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


def profile_file(tmp_path: Path, name: str, cores: int) -> Path:
    """A device of `cores` cores, a thread on each: it reserves `cores` CPUs of its node."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ncores: {cores}\nthreads: {cores}\nspeed: 1.0\nmemory_mb: 2048\nlink: wifi\n")
    return path


def test_pack_puts_a_fleet_that_fits_one_node_on_one_node(cluster, write_scenario, tmp_path):
    """Spread, the default, puts the same fleet on both nodes: the Ctrl-C test checks it. (Through Ray Client,
    ray://, the same run was checked by hand: on a busy host its server's per-client process may not start
    within Ray's own timeout, "Initialization failure from server", so it is not a test.)"""
    fleet = f"[{{profile: {profile_file(tmp_path, 'one_core', 1)}, count: 2}}]"
    out = tmp_path / "pack"
    process = run_on(cluster, scenario_for(write_scenario, "pack", fleet, rounds=1), out, "--placement", "pack")
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, output
    assert len({facts["node_id"] for facts in client_pids(out).values()}) == 1, client_pids(out)
    assert json.loads((out / "cluster.json").read_text())["placement"] == "pack"
    wait_none_left(out, 5.0)


def test_a_fleet_no_set_of_nodes_fits_is_refused_in_one_line_once_its_placement_timeout_passed(
        cluster, write_scenario, tmp_path):
    # 3 + 3 + 2 CPUs: the cluster's 8 in all, yet two nodes of 4 CPUs cannot hold these clients whole
    three, two = profile_file(tmp_path, "three_cores", 3), profile_file(tmp_path, "two_cores", 2)
    scenario = scenario_for(write_scenario, "unfit", f"[{{profile: {three}, count: 2}}, {{profile: {two}}}]")
    began = time.monotonic()
    process = run_on(cluster, scenario, tmp_path / "unfit", "--placement-timeout", "3")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    lines = [line for line in output.splitlines() if "error" in line]
    assert len(lines) == 1 and "was not ready after 3 s" in lines[0], output
    assert "no set of nodes fits every client whole" in lines[0], output
    assert time.monotonic() - began < 45  # the timeout ends the wait
    ray.init(address=cluster.address, log_to_driver=False)
    try:  # the refused placement holds nothing: no group is left pending or created
        states = {group["state"] for group in ray.util.placement_group_table().values()}
    finally:
        ray.shutdown()
    assert states <= {"REMOVED"}, states


def test_cluster_auto_finds_the_cluster_started_on_this_host(cluster, write_scenario, tmp_path):
    out = tmp_path / "auto"
    process = start("run", str(scenario_for(write_scenario, "auto", "[{profile: laptop}]", rounds=1)),
                    "--cluster", "auto", "--out", str(out), "--no-dashboard")
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, output
    described = json.loads((out / "cluster.json").read_text())
    assert described["address"] == "auto" and len(described["nodes"]) == 2  # this test's cluster, both nodes
    assert [facts["node_id"] for facts in client_pids(out).values()] == [
        node["node_id"] for node in described["nodes"] if node["clients"]]
    wait_none_left(out, 5.0)


def test_a_launch_whose_every_host_dies_at_once_fails_in_one_line_naming_the_token_file(
        cluster, write_scenario, tmp_path):
    """A Ray authentication token in the launcher's home, and a cluster started without token authentication: the
    nodes' actors die at once. The run fails there, saying why in one line that names the file and the remedy."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    out = tmp_path / "token"
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_MODE"} | {"HOME": str(home)}
    process = subprocess.Popen(command_for("run", str(scenario_for(write_scenario, "token", "[{profile: laptop}]")),
                                               "--cluster", "auto", "--out", str(out), "--no-dashboard"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 1, output
    failed = [event for event in events(out) if event["kind"] == "run_failed"]
    assert len(failed) == 1 and "died before any client started" in failed[0]["reason"], output
    assert "auth_token" in failed[0]["reason"] and "RAY_AUTH_MODE=disabled" in failed[0]["reason"], output
    assert failed[0]["reason"] in output  # on the console too
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"
    wait_none_left(out, 5.0)


def test_under_the_real_clock_the_run_starts_at_the_largest_of_its_nodes_needs(cluster, write_scenario, tmp_path):
    """A laptop (4 threads x 1.217) on node-a needs more than node-b's one-core device: node-a sets the factor."""
    fleet = f"[{{profile: laptop, node: node-a}}, {{profile: {profile_file(tmp_path, 'one_core', 1)}, node: node-b}}]"
    scenario = write_scenario("real_nodes", rounds=1, fleet=fleet, emulation="{clock: real}",
                              training="{local_steps: 2, batch_size: 4}")
    out = tmp_path / "real_nodes"
    process = run_on(cluster, scenario, out)
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, output
    described = json.loads((out / "cluster.json").read_text())
    needs = {node["node_id"]: node["dilation_needed"] for node in described["nodes"]}
    laptop_node = client_pids(out)["c00"]["node_id"]
    assert needs[laptop_node] == max(needs.values()) > min(needs.values()) >= 1.0, needs
    started = next(event for event in events(out) if event["kind"] == "run_started")["dilation"]
    assert started["factor"] == described["run_dilation"] == needs[laptop_node], (started, described)
    assert f"node {laptop_node[:8]}'s" in started["reason"] and "real clock: time dilation" in output, started


def test_a_client_that_crashes_by_emulation_reboots_on_its_node_and_joins_again(cluster, write_scenario, tmp_path):
    crashing = profile_file(tmp_path, "crash_device", 1)
    crashing.write_text(crashing.read_text() + "failure: {crash_rate: 1.0}\n")  # killed in every round
    fleet = f"[{{profile: laptop}}, {{profile: {crashing}}}]"
    out = tmp_path / "crashing"
    process = run_on(cluster, write_scenario("crashing", rounds=2, deadline_s=15, fleet=fleet,
                                             emulation="{clock: events}", training="{local_steps: 2, batch_size: 4}"),
                     out)
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, output
    joins = [event["pid"] for event in events(out) if event["kind"] == "client_joined" and event["client"] == "c01"]
    assert len(set(joins)) >= 2, joins  # crashed mid-round, started again by its host on its node, joined again
    assert {event["client"] for event in events(out) if event["kind"] == "update_received"} == {"c00"}
    wait_none_left(out, 5.0)


def test_a_lost_node_makes_its_clients_lost_and_the_run_goes_on(cluster, write_scenario, tmp_path):
    """Last in the module: it takes the second node away."""
    scenario = scenario_for(write_scenario, "node_lost", "[{profile: laptop, node: node-a}, {profile: laptop, node: node-b}]",
                            rounds=6)
    out = tmp_path / "node_lost"
    process = run_on(cluster, scenario, out)
    try:
        wait_for_event(out, lambda event: event["kind"] == "round_started", timeout=RUN_TIMEOUT_S)
        cluster.remove_node(cluster.second, allow_graceful=False)
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    run_events = events(out)
    assert {event["client"] for event in run_events if event["kind"] == "client_lost"} == {"c01"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["rounds_completed"] == 6
    assert "[testbed run] c01: its Ray actor or node is gone" in (out / "logs" / "c01.log").read_text()
    wait_none_left(out, 5.0)
    assert os.path.exists(out / "report.md")
    # what the lost node's client left on its disk (keys, log): no one could remove it there; here, this host's
    identity = json.loads((out / "run.json").read_text())
    for folder in node_root("x").parent.glob(f"{out.name}-{identity['run_id'][:8]}-*"):
        shutil.rmtree(folder)
