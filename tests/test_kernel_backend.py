"""Kernel backend: cgroup CPU quota and memory limit, namespaces shaped by netem, probe, crash cleanup.

Every workload runs in a real child process. A test that needs a kernel mechanism this host lacks
(not root, no controller, no netem...) is skipped with the probe's reason.
"""

import dataclasses
import json
import multiprocessing
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kernel_children import DOWNLINK_BYTES, UPLINK_BYTES, serve_measurements

from testbed.emulation.kernel import cleanup_stale, probe_kernel_backend, shape_commands
from testbed.emulation.kernel_cgroup import CgroupLayout, ClientCgroup, current_layout, discover_layout
from testbed.emulation.kernel_net import (
    MAX_INDEX,
    ClientNetwork,
    first_free_index,
    netem_arguments,
    network_problem,
    subnet_lock,
)
from testbed.errors import UserError
from testbed.procfs import SYSTEM_TICKS, USER_TICKS, running, stat_fields

CHILDREN = str(Path(__file__).with_name("kernel_children.py"))
RUN_TAG = "pytest"
GOODPUT_SHARE = 1448 / 1514  # TCP payload per 1500-byte-MTU frame (with timestamps); netem's rate counts frames


@pytest.fixture(scope="module")
def support():
    return probe_kernel_backend()


def require(support, *capabilities: str) -> None:
    reasons = [r for c in capabilities if not getattr(support, c) for r in support.reasons if r.startswith(c + ":")]
    if reasons:
        pytest.skip("; ".join(reasons))


def require_namespaces() -> None:
    problem = network_problem(shaping=False)
    if problem:
        pytest.skip(f"network namespaces: {problem}")


def child(role: str, *arguments, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, CHILDREN, role, *map(str, arguments)], **popen)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, seconds."""
    fields = stat_fields(pid)
    assert fields is not None, f"process {pid} is gone"
    return (int(fields[USER_TICKS]) + int(fields[SYSTEM_TICKS])) / os.sysconf("SC_CLK_TCK")


def cpu_stat(path: Path) -> dict[str, int]:
    """A cgroup's cpu.stat counters (nr_periods, nr_throttled, ...)."""
    return {key: int(value) for key, value in (line.split() for line in path.read_text().splitlines())}


def cgroup_path(pid: int | str, controller: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or controllers == "":
            return path
    raise AssertionError(f"no {controller} cgroup for {pid}")


def leftovers(pid: int) -> list[str]:
    """Every namespace, veth and cgroup that names `pid` as its launcher."""
    found = [str(p) for base in set(current_layout().bases.values()) for p in base.glob(f"testbed-{pid}-*")]
    if shutil.which("ip"):
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        found += [line.split()[0] for line in namespaces.splitlines() if line.startswith(f"testbed-{pid}-")]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        found += re.findall(rf"\btb{pid}[hc]\d+\b", links)
    return found


# --- pure: layouts, commands, validation (any host) ---------------------------------------------

def test_layout_v1_follows_own_cgroup_under_each_mount():
    mountinfo = ("30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
                 "31 25 0:27 /docker/abc /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup rw,memory\n"
                 "32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    layout = discover_layout(mountinfo, "4:memory:/docker/abc/inner\n2:cpu,cpuacct:/user\n0::/\n")
    assert layout.version == 1 and not layout.problems
    assert layout.bases == {"cpu": Path("/sys/fs/cgroup/cpu,cpuacct/user"),
                            "memory": Path("/sys/fs/cgroup/memory/inner")}
    assert discover_layout("", "").version is None


def test_layout_v2_uses_nearest_cgroup_enabling_the_controllers(tmp_path):
    mountinfo = f"40 25 0:30 / {tmp_path} rw - cgroup2 cgroup2 rw\n"
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    (tmp_path / "a" / "cgroup.subtree_control").write_text("memory\n")
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory pids\n")
    layout = discover_layout(mountinfo, "0::/a/b\n")
    assert layout.version == 2 and not layout.problems
    assert layout.bases == {"cpu": tmp_path, "memory": tmp_path} and layout.homes["cpu"] == tmp_path / "a" / "b"

    (tmp_path / "cgroup.subtree_control").write_text("memory pids\n")
    layout = discover_layout(mountinfo, "0::/a/b\n")
    assert layout.bases == {"memory": tmp_path / "a"}
    assert "no cpu controller in cgroup v2 subtree_control" in layout.problems["cpu"]

    (tmp_path / "cgroup.controllers").write_text("io memory pids\n")
    assert "available: io memory pids" in discover_layout(mountinfo, "0::/a/b\n").problems["cpu"]


def test_network_commands_name_addresses_and_shaping():
    network = ClientNetwork("c07", 70, downlink_mbps=20, uplink_mbps=5, latency_ms=40, jitter_ms=2, loss=0.01,
                            owner_pid=4321)
    assert (network.host_address, network.client_address) == ("10.203.1.25", "10.203.1.26")
    commands = [" ".join(c) for c in network.commands()]
    assert commands[:3] == ["ip netns add testbed-4321-c07",
                            "ip link add tb4321h70 gso_max_segs 1 type veth peer name tb4321c70 gso_max_segs 1 "
                            "netns testbed-4321-c07",
                            "ip addr add 10.203.1.25/30 dev tb4321h70"]
    assert commands[-2:] == [
        "tc qdisc add dev tb4321h70 root netem limit 1000 delay 20ms 1ms distribution normal loss 1% rate 20mbit",
        "tc -n testbed-4321-c07 qdisc add dev tb4321c70 root netem limit 1000 delay 20ms 1ms distribution normal "
        "loss 1% rate 5mbit"]
    # 100 Mbit/s, 300 ms one way: 2 x 1e8 x 0.3 / (8 x 1514) = 4953.8 packets, above netem's default 1000.
    assert netem_arguments(300, 0, 0, 100) == ["netem", "limit", "4954", "delay", "300ms", "rate", "100mbit"]
    assert netem_arguments(0, 0, 0, None) == [] and not [c for c in ClientNetwork("c", 0).commands() if c[0] == "tc"]
    assert len(ClientNetwork("c", MAX_INDEX, owner_pid=4194304).host_interface) <= 15  # IFNAMSIZ - 1


@pytest.mark.parametrize("bad", [dict(index=-1), dict(index=MAX_INDEX + 1), dict(loss=1.0), dict(latency_ms=-1),
                                 dict(downlink_mbps=0), dict(name="../x")])
def test_network_rejects_bad_values(bad):
    with pytest.raises(UserError, match=next(iter(bad))):
        ClientNetwork(**{"name": "c", "index": 0, **bad})


@pytest.mark.parametrize("bad", [dict(cpu_cores=0.001), dict(memory_mb=0), dict(memory_mb=1.5), dict(name="a/b")])
def test_cgroup_rejects_bad_values(bad):
    arguments = {"name": "c", "cpu_cores": None, "memory_mb": None, **bad}
    with pytest.raises(UserError, match=next(iter(bad))):
        ClientCgroup(**arguments, layout=CgroupLayout(None, {}, {}, {}))


# --- probe --------------------------------------------------------------------------------------

def test_probe_is_quick_and_leaves_nothing():
    start = time.perf_counter()
    support = probe_kernel_backend()
    elapsed = time.perf_counter() - start
    print(f"{support.describe()} [probe {elapsed * 1000:.0f} ms]")
    assert elapsed < 1.0
    assert not [thing for thing in leftovers(os.getpid()) if "probe" in thing]
    for capability in ("cpu", "memory", "network"):
        assert getattr(support, capability) or any(r.startswith(f"{capability}: ") for r in support.reasons)


def probe_as_nobody(results) -> None:
    """In a child: drop root for user nobody, then probe."""
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    results.put(dataclasses.asdict(probe_kernel_backend()))


def test_probe_without_root_names_the_reasons():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user (already unprivileged: the probe test covers it)")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    prober = context.Process(target=probe_as_nobody, args=(results,))
    prober.start()
    try:
        support = results.get(timeout=60)
    finally:
        prober.join(timeout=10)
        if prober.is_alive():
            prober.kill()
            prober.join()
    print(support["reasons"])
    assert not (support["cpu"] or support["memory"] or support["network"])
    for capability in ("cpu", "memory", "network"):
        assert any(r.startswith(f"{capability}: ") and "not root" in r for r in support["reasons"]), support["reasons"]


# --- cgroups ------------------------------------------------------------------------------------

def test_cpu_quota_gives_half_a_core(support):
    require(support, "cpu")
    group = ClientCgroup("cpu", cpu_cores=0.5, memory_mb=None, run_tag=RUN_TAG)
    group.create()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        group.add(busy.pid)
        time.sleep(0.3)  # a few periods in, so the window below is steady state
        stat = group.directories["cpu"] / "cpu.stat"
        before, cpu0, wall0 = cpu_stat(stat), cpu_seconds(busy.pid), time.monotonic()
        time.sleep(1.5)
        after, cpu1, wall1 = cpu_stat(stat), cpu_seconds(busy.pid), time.monotonic()
        cores = (cpu1 - cpu0) / (wall1 - wall0)
        periods, throttled = (after[k] - before[k] for k in ("nr_periods", "nr_throttled"))
        print(f"achieved {cores:.3f} cores of a 0.5-core quota; throttled in {throttled} of {periods} periods; "
              f"{shape_commands(group, None)}")
        if cores < 0.4 and throttled < periods / 2:
            pytest.skip(f"host too busy: {cores:.2f} cores, yet the quota throttled only {throttled}/{periods} periods")
        assert 0.4 <= cores <= 0.6
        assert any("50000" in line for line in shape_commands(group, None))

        group.remove()  # with the busy child still inside: it goes back to this process's cgroup
        assert not any(d.exists() for d in group.directories.values())
        assert cgroup_path(busy.pid, "cpu") == cgroup_path("self", "cpu")
        group.remove()
    finally:
        stop(busy)
        group.remove()


def test_memory_limit_kills_and_reports_it(support):
    require(support, "memory")
    group = ClientCgroup("mem", cpu_cores=None, memory_mb=64, run_tag=RUN_TAG)
    group.create()
    hog = child("allocate", stdin=subprocess.PIPE)
    try:
        group.add(hog.pid)
        assert not group.oom_killed()
        hog.stdin.write(b"go\n")
        hog.stdin.flush()
        returncode = hog.wait(timeout=30)
        print(f"child beyond 64 MiB ended with {returncode}; {shape_commands(group, None)}")
        assert returncode == -signal.SIGKILL
        assert group.oom_killed()
    finally:
        stop(hog)
        group.remove()
    assert group.oom_killed()  # still known once the group is gone


# --- network namespaces ---------------------------------------------------------------------------

def test_namespace_sees_only_its_end_and_reaches_the_host():
    require_namespaces()
    with subnet_lock():
        network = ClientNetwork("plumb", first_free_index())
        network.create()
    listener = inside = None
    try:
        listener = socket.create_server((network.host_address, 0))
        listener.settimeout(30)
        inside = child("interfaces", network.netns, network.host_address, listener.getsockname()[1])
        connection, (peer, _) = listener.accept()
        with connection:
            seen = json.loads(connection.makefile().read())
        assert inside.wait(timeout=30) == 0
        assert peer == network.client_address
        assert seen == sorted(["lo", network.client_interface])
    finally:
        if inside is not None:
            stop(inside)
        if listener is not None:
            listener.close()
        network.remove()
    assert not (Path("/var/run/netns") / network.netns).exists()
    network.remove()


def test_netem_shapes_round_trip_and_both_rates(support):
    require(support, "network")
    with subnet_lock():
        network = ClientNetwork("shaped", first_free_index(), downlink_mbps=20, uplink_mbps=10, latency_ms=40,
                                jitter_ms=2, loss=0.0)
        network.create()
    listener = inside = None
    served: dict = {}
    try:
        listener = socket.create_server((network.host_address, 0))
        listener.settimeout(30)
        server = threading.Thread(target=serve_measurements, args=(listener, served), daemon=True)
        server.start()
        inside = child("measure", network.netns, network.host_address, listener.getsockname()[1],
                       stdout=subprocess.PIPE, text=True)
        output, _ = inside.communicate(timeout=60)
        server.join(timeout=30)
        assert inside.returncode == 0
        measured = json.loads(output)
    finally:
        if inside is not None:
            stop(inside)
        if listener is not None:
            listener.close()
        network.remove()
    rtt_ms = statistics.median(measured["rtts_s"]) * 1000
    expected_down = 8 * DOWNLINK_BYTES / (20e6 * GOODPUT_SHARE)
    expected_up = 8 * UPLINK_BYTES / (10e6 * GOODPUT_SHARE)
    print(f"RTT median {rtt_ms:.1f} ms (40 shaped); downlink {measured['downlink_s']:.3f} s "
          f"(expected {expected_down:.3f}); uplink {served['uplink_s']:.3f} s (expected {expected_up:.3f})")
    assert abs(rtt_ms - 40) <= 5
    assert abs(measured["downlink_s"] / expected_down - 1) <= 0.15
    assert abs(served["uplink_s"] / expected_up - 1) <= 0.15


# --- crash cleanup ----------------------------------------------------------------------------------

def test_cleanup_after_a_launcher_is_killed(support):
    require(support, "cpu", "memory")
    require_namespaces()
    live_group = ClientCgroup("live", cpu_cores=1.0, memory_mb=256, run_tag=RUN_TAG)
    launcher = sleeper = live_network = None
    try:
        with subnet_lock():  # held until both networks exist, so that no concurrent run picks their subnets
            index = first_free_index(2)
            launcher = child("launcher", index, 1, 1, stdout=subprocess.PIPE, text=True)
            ready, _, _ = select.select([launcher.stdout], [], [], 30)
            created = json.loads((launcher.stdout.readline() if ready else "") or "null")
            assert created, "the launcher child failed before creating anything"
            live_network = ClientNetwork("live", index + 1)
            live_network.create()
        sleeper = created["sleeper"]
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        live_group.create()
        assert len(leftovers(launcher.pid)) >= 4  # netns, veth, cpu and memory groups (and their run groups)

        removed = cleanup_stale()
        print(f"removed after the crash: {removed}")
        assert not leftovers(launcher.pid)
        assert any(str(launcher.pid) in entry for entry in removed)
        owners = [re.match(r"(?:netns testbed-|link tb|cgroup \S*/testbed-)(\d+)", entry) for entry in removed]
        assert all(owners) and not [m[1] for m in owners if running(int(m[1]))]  # only dead launchers' objects
        assert (Path("/var/run/netns") / live_network.netns).exists()  # a live launcher's objects stay
        assert all(d.is_dir() for d in live_group.directories.values())
    finally:
        if sleeper is not None:
            try:
                os.kill(sleeper, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if launcher is not None:
            stop(launcher)
        if live_network is not None:
            live_network.remove()
        live_group.remove()
        cleanup_stale()
