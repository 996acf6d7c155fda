"""Kernel backend, network: a namespace per client joined to the host by a veth pair shaped by tc netem.

    host netns                                   client netns testbed-<launcher pid>-<name>
    tb<pid>h<index> 10.203.a.b+1/30  <== veth ==>  tb<pid>c<index> 10.203.a.b+2/30
    egress: netem downlink                         egress: netem uplink

Each direction gets half the round-trip latency, jitter as a normal spread of sigma = jitter_ms / 2
(jitter_ms is the +- spread, about two standard deviations, as in the user backend's link model),
the packet loss probability and the direction's rate. Segmentation offload is turned off on the
veth pair (gso_max_segs 1) so that netem sees, delays, rates and drops single packets, as a real
link does, rather than 64 KB super-packets.

A client process calls `enter()` before it opens any socket; it then reaches the aggregator at
`host_address` over TCP. ipc:// endpoints are Unix sockets on the file system: they reach across
namespaces too, but unshaped, so a shaped client must use TCP.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from testbed.emulation.kernel_common import (
    OWNER_PREFIX,
    KernelBackendError,
    check_name,
    command_succeeds,
    not_root_hint,
    run_command,
)
from testbed.errors import UserError
from testbed.procfs import running

log = logging.getLogger("testbed.emulation")

NETNS_DIR = Path("/var/run/netns")  # where `ip netns add` pins named namespaces
SUBNET_LOCK = Path("/run/lock/testbed-subnets.lock")  # host-wide: launchers choose indices one at a time
CLONE_NEWNET = 0x40000000  # linux/sched.h
SUBNET = ipaddress.IPv4Network("10.203.0.0/16")  # private; one /30 per client index
MAX_INDEX = 256 * 64 - 1  # 64 /30 subnets in each of the 256 third-octet values
MTU = 1500  # bytes, veth default
FRAME_BYTES = MTU + 14  # netem's rate counts the Ethernet header
MIN_NETEM_LIMIT = 1000  # packets: netem's default queue
UNLIMITED_RATE_MBPS = 10_000.0  # what an unshaped rate can reach on a veth, to size the queue for delay alone
NETNS_NAME = re.compile(rf"{OWNER_PREFIX}-(\d+)-.+")
VETH_NAME = re.compile(r"tb(\d+)[hc]\d+")
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21  # linux/capability.h bit numbers


def netem_arguments(delay_ms: float, jitter_ms: float, loss: float, rate_mbps: float | None) -> list[str]:
    """tc arguments (from `netem` on) for one direction; [] when there is nothing to shape.

    `jitter_ms` here is netem's sigma. netem's limit counts every packet it holds, those waiting out
    their delay included, so it is set to twice what the delay line holds at full rate (rate x
    (delay + 3 sigma)), at least netem's default: a transfer can always fill the link, and the backlog
    beyond is tail-dropped after one more bandwidth-delay product, like a router's buffer.
    """
    if delay_ms <= 0 and jitter_ms <= 0 and loss <= 0 and rate_mbps is None:
        return []
    in_flight_s = (delay_ms + 3 * jitter_ms) / 1000.0
    line_packets = (rate_mbps or UNLIMITED_RATE_MBPS) * 1e6 * in_flight_s / (8 * FRAME_BYTES)
    arguments = ["netem", "limit", str(max(MIN_NETEM_LIMIT, math.ceil(2 * line_packets)))]
    if delay_ms > 0 or jitter_ms > 0:
        arguments += ["delay", f"{delay_ms:g}ms"]
        if jitter_ms > 0:
            arguments += [f"{jitter_ms:g}ms", "distribution", "normal"]
    if loss > 0:
        arguments += ["loss", f"{loss * 100:g}%"]
    if rate_mbps is not None:
        arguments += ["rate", f"{rate_mbps:g}mbit"]
    return arguments


def _check_number(what: str, value, *, low: float, low_inclusive: bool, high: float | None = None,
                  optional: bool = False) -> None:
    if value is None and optional:
        return
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value >= low if low_inclusive else value > low) and (high is None or value < high))
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise UserError(f"{what}: {value!r} is not allowed (a number {bound}{', or None' if optional else ''})")


@dataclass(frozen=True)
class ClientNetwork:
    """One client's namespace, veth pair and shaping; rates in Mbit/s (None: unshaped), times in ms.

    `index` picks the client's /30 (0..16383, unique among the runs on this host: choose it with
    first_free_index and create the network under subnet_lock); `latency_ms` is the round trip;
    `loss` a probability per packet and direction.
    """

    name: str
    index: int
    downlink_mbps: float | None = None
    uplink_mbps: float | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    owner_pid: int = field(default_factory=os.getpid)  # the launcher; encoded in every name

    def __post_init__(self):
        check_name("client name", self.name)
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index <= MAX_INDEX:
            raise UserError(f"index: {self.index!r} is not allowed (a whole number from 0 to {MAX_INDEX})")
        _check_number("downlink_mbps", self.downlink_mbps, low=0, low_inclusive=False, optional=True)
        _check_number("uplink_mbps", self.uplink_mbps, low=0, low_inclusive=False, optional=True)
        _check_number("latency_ms", self.latency_ms, low=0, low_inclusive=True)
        _check_number("jitter_ms", self.jitter_ms, low=0, low_inclusive=True)
        _check_number("loss", self.loss, low=0, low_inclusive=True, high=1)

    @property
    def netns(self) -> str:
        return f"{OWNER_PREFIX}-{self.owner_pid}-{self.name}"

    @property
    def host_interface(self) -> str:
        return f"tb{self.owner_pid}h{self.index}"  # <= 15 characters: pid <= 7 digits, index <= 5

    @property
    def client_interface(self) -> str:
        return f"tb{self.owner_pid}c{self.index}"

    def _subnet_address(self, offset: int) -> str:
        block = SUBNET.network_address + 256 * (self.index // 64) + 4 * (self.index % 64)
        return str(block + offset)

    @property
    def host_address(self) -> str:
        """The host's end: where the aggregator listens for this client (bind tcp://*:port covers it)."""
        return self._subnet_address(1)

    @property
    def client_address(self) -> str:
        """The client's end, inside its namespace: the source address the aggregator sees."""
        return self._subnet_address(2)

    def downlink_netem(self) -> list[str]:
        return netem_arguments(self.latency_ms / 2, self.jitter_ms / 2, self.loss, self.downlink_mbps)

    def uplink_netem(self) -> list[str]:
        return netem_arguments(self.latency_ms / 2, self.jitter_ms / 2, self.loss, self.uplink_mbps)

    def commands(self) -> list[list[str]]:
        """Every ip/tc command create() runs, in order: the exact record of what was applied."""
        ns, host, client = self.netns, self.host_interface, self.client_interface
        commands = [
            ["ip", "netns", "add", ns],
            ["ip", "link", "add", host, "gso_max_segs", "1", "type", "veth",
             "peer", "name", client, "gso_max_segs", "1", "netns", ns],
            ["ip", "addr", "add", f"{self.host_address}/30", "dev", host],
            ["ip", "link", "set", host, "up"],
            ["ip", "-n", ns, "addr", "add", f"{self.client_address}/30", "dev", client],
            ["ip", "-n", ns, "link", "set", client, "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
        ]
        if self.downlink_netem():  # aggregator -> client: leaves the host through the host end
            commands.append(["tc", "qdisc", "add", "dev", host, "root", *self.downlink_netem()])
        if self.uplink_netem():  # client -> aggregator: leaves the namespace through the client end
            commands.append(["tc", "-n", ns, "qdisc", "add", "dev", client, "root", *self.uplink_netem()])
        return commands

    def create(self) -> None:
        """Make the namespace, the veth pair, the addresses and the shaping; undone again on failure."""
        holder = _address_holder(self.host_address)
        if holder is not None:
            raise KernelBackendError(f"client {self.name}: {self.host_address} is already on {holder} "
                                     f"(another run on this host?); choose indices with first_free_index() under subnet_lock()")
        if (NETNS_DIR / self.netns).exists():
            raise KernelBackendError(f"client {self.name}: network namespace {self.netns} exists already")
        if command_succeeds(["ip", "link", "show", "dev", self.host_interface]):
            raise KernelBackendError(f"client {self.name}: interface {self.host_interface} exists already "
                                     f"(index {self.index} used twice?)")
        try:
            for command in self.commands():
                run_command(command)
        except BaseException:
            self.remove()
            raise

    def enter(self) -> None:
        """Move this (single-threaded) process into the client's namespace; see enter_namespace."""
        enter_namespace(self.netns)

    def remove(self) -> None:
        """Delete the veth pair and the namespace (idempotent)."""
        if command_succeeds(["ip", "link", "show", "dev", self.host_interface]):
            run_command(["ip", "link", "del", self.host_interface])  # takes its peer and both qdiscs along
        if (NETNS_DIR / self.netns).exists():
            run_command(["ip", "netns", "del", self.netns])


def enter_namespace(netns: str) -> None:
    """Join network namespace `netns` (a name under /var/run/netns): call before any socket or thread.

    Namespaces belong to threads: threads already running stay outside (and so would the sockets
    they open, e.g. a ZeroMQ context's I/O threads), hence the check that this process has only one.
    """
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:
        raise KernelBackendError(f"cannot enter {netns}: this process already runs {threads} threads, "
                                 f"which would stay outside; enter the namespace before starting any")
    try:
        descriptor = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise KernelBackendError(f"cannot open network namespace {NETNS_DIR / netns}: {error.strerror}") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(descriptor, CLONE_NEWNET) != 0:
            raise KernelBackendError(f"setns into {netns} failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(descriptor)


def _host_addresses() -> dict[str, str]:
    """IPv4 address -> interface, for every address of the host namespace."""
    holders = {}
    for line in run_command(["ip", "-o", "-4", "addr", "show"]).splitlines():
        fields = line.split()
        if "inet" in fields:
            holders[fields[fields.index("inet") + 1].split("/")[0]] = fields[1]
    return holders


def _address_holder(address: str) -> str | None:
    return _host_addresses().get(address)


@contextmanager
def subnet_lock() -> Iterator[None]:
    """Hold while choosing indices with first_free_index and creating their networks, so that launchers
    starting at the same moment on one host never pick the same subnets."""
    SUBNET_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(SUBNET_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


def first_free_index(count: int = 1) -> int:
    """The first of `count` consecutive client indices whose host addresses no interface holds yet."""
    used = set()
    for address in _host_addresses():
        offset = int(ipaddress.IPv4Address(address)) - int(SUBNET.network_address)
        if ipaddress.IPv4Address(address) in SUBNET and offset % 4 in (1, 2):
            used.add((offset // 256) * 64 + (offset % 256) // 4)
    start = 0
    while start + count - 1 <= MAX_INDEX:
        clash = [i for i in range(start, start + count) if i in used]
        if not clash:
            return start
        start = clash[-1] + 1
    raise KernelBackendError(f"no {count} consecutive free client subnets left in {SUBNET}")


def _missing_capabilities() -> list[str]:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
            return [name for name, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_SYS_ADMIN", CAP_SYS_ADMIN))
                    if not effective >> bit & 1]
    return []


def network_problem(shaping: bool = True) -> str | None:
    """Why per-client namespaces (and, with `shaping`, netem) cannot be used here; None when they can.

    Tries it in a throw-away namespace `testbed-<pid>-probe` holding its own veth pair, so nothing
    is left in the host namespace even if the probe is interrupted.
    """
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} (iproute2) not found"
    missing = _missing_capabilities()
    if missing:
        return f"missing {' and '.join(missing)}{not_root_hint()}"
    ns = f"{OWNER_PREFIX}-{os.getpid()}-probe"
    pair = (f"tb{os.getpid()}pa", f"tb{os.getpid()}pb")
    try:
        run_command(["ip", "netns", "add", ns])
        run_command(["ip", "-n", ns, "link", "add", pair[0], "gso_max_segs", "1", "type", "veth",
                     "peer", "name", pair[1], "gso_max_segs", "1"])
        if shaping:
            try:
                run_command(["tc", "-n", ns, "qdisc", "add", "dev", pair[0], "root",
                             *netem_arguments(1.0, 1.0, 0.01, 1.0)])
            except KernelBackendError as error:
                return f"tc netem not available: {str(error).rsplit('failed: ', 1)[-1]}"
    except KernelBackendError as error:
        return str(error)
    finally:
        if (NETNS_DIR / ns).exists():
            command_succeeds(["ip", "netns", "del", ns])
    return None


def remove_stale_networks() -> list[str]:
    """Delete namespaces and veth pairs whose launcher is gone; what was removed ("netns X", "link Y")."""
    if shutil.which("ip") is None:
        return []
    removed: list[str] = []
    if NETNS_DIR.is_dir():
        for entry in sorted(NETNS_DIR.iterdir()):
            match = NETNS_NAME.fullmatch(entry.name)
            if match and not running(int(match[1])):
                _remove_stale(f"netns {entry.name}", ["ip", "netns", "del", entry.name], removed,
                              gone=lambda entry=entry: not entry.exists())
    # A veth outlives `ip netns del` while a process still runs in its namespace (and for the moment
    # the kernel takes to dismantle a namespace otherwise): delete those by name.
    for line in run_command(["ip", "-o", "link", "show", "type", "veth"]).splitlines():
        interface = line.split(":")[1].strip().split("@")[0]
        match = VETH_NAME.fullmatch(interface)
        if match and not running(int(match[1])):
            _remove_stale(f"link {interface}", ["ip", "link", "del", interface], removed,
                          gone=lambda interface=interface: not command_succeeds(["ip", "link", "show", "dev", interface]))
    return removed


def _remove_stale(what: str, command: list[str], removed: list[str], gone=lambda: False) -> None:
    """Run `command`; a failure is logged unless `gone()` says another cleaner took the object meanwhile."""
    try:
        run_command(command)
        removed.append(what)
    except KernelBackendError as error:
        if not gone():
            log.warning("stale %s left in place: %s", what, error)
