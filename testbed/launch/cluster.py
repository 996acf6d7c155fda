"""`testbed run --cluster`: the fleet's clients placed on the nodes of a Ray cluster, one process each.

Ray places and ends things; nothing else of a run changes. The aggregator stays where `testbed run` runs and
binds TCP on an address the nodes reach; every client runs on a node as a process of its own running `testbed
client`'s worker, forked by the run's Ray actor on that node (`NodeHost`, cluster_host.py) from a fork server that
imported torch once for all of the node's clients. The run makes a CURVE key pair per client and hands each client
its own through its host's arguments.

Placement: one placement group for the fleet, one bundle per client (its CPUs, CLIENT_MIB of memory, and the Ray
resource its fleet entry's `node` names; the node's host sits in the bundle of its first client and reserves
nothing itself), packed onto as few nodes as fit or spread over as many as there are
(`--placement`). What the cluster cannot host is refused before anything starts: more CPUs or memory than it
has, a resource no node offers, or a placement group that is not ready within its timeout.

Ray is imported here only inside `ClusterFleet` (and the actor): a run without --cluster never imports it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.config.convert import to_data
from testbed.config.loader import ClientSpec
from testbed.config.schema import Scenario
from testbed.emulation.dilation import Dilation, choose_dilation, demand_cores
from testbed.errors import UserError
from testbed.launch.cluster_host import LOG_CHUNK_BYTES, NodeHost

log = logging.getLogger("testbed.launch")

RAY_MISSING = "--cluster needs Ray, which is not installed here: pip install -e '.[ray]' (or: pip install 'ray[client]>=2.9')"
PLACEMENTS = {"spread": "SPREAD", "pack": "PACK"}  # --placement -> Ray's placement group strategy
# Share of a fleet entry's `node` resource each of its clients takes: the resource marks the nodes that may host
# them, it does not count them (a node declaring 1 unit hosts up to 1000 clients, as its CPUs allow).
NODE_RESOURCE_SHARE = 0.001
POLL_EVERY_S = 1.0  # host seconds between two polls of a client (its exit code, affinity and log)
STOP_WAIT_S = 4.0  # host seconds the hosts get to end their clients (1 s to exit, SIGTERM, SIGKILL 2 s on) and answer
REBOOT_AFTER_S = 2.0  # host seconds a client that crashed by emulation stays down before it starts again
JOIN_TIMEOUT_S = 300.0  # host seconds a client on a node waits for the aggregator's WELCOME, then exits (code 2)
# Memory each client's bundle reserves on its node by default, MiB (`--client-memory`): a client forked on its node
# holds what a local one does, 117-119 MB private when idle and 338-347 MB at most while training the tiny backbone
# at batch 16 (docs/benchmarks.md, "Process footprint"); its node's host and fork server are shared
# by all of its clients there. A node's Ray `memory` resource then caps how many clients it takes, as MemAvailable
# does for a local run (launch/capacity.py), instead of Ray's memory monitor killing them mid-run. Clients of a
# larger backbone need more: --client-memory.
CLIENT_MIB = 400
MIN_CLIENT_MIB, MAX_CLIENT_MIB = 64, 262144  # what --client-memory allows, MiB
MIB = 2 ** 20


@dataclass(frozen=True)
class ClusterOptions:
    """What `testbed run --cluster ...` asks: where the cluster is and how to place the fleet on it."""

    address: str  # ray://HOST:PORT (Ray Client), HOST:PORT (the cluster's GCS), or auto (a cluster on this host)
    placement: str = "spread"  # a key of PLACEMENTS
    bind: str | None = None  # tcp://HOST:PORT the aggregator binds; None = this node's IP, a free port
    placement_timeout_s: float = 60.0  # host seconds the fleet's placement group may take to be ready
    client_mib: int = CLIENT_MIB  # memory each client reserves on its node, MiB


@dataclass(frozen=True)
class Seat:
    """What one client asks of the cluster: CPUs reserved on its node, and the resource the node must offer."""

    client_id: str
    cpus: int
    node: str | None  # the fleet entry's `node`: a Ray custom resource; None = any node
    mib: int = CLIENT_MIB  # memory reserved on its node, MiB

    def bundle(self) -> dict[str, float]:
        return {"CPU": float(self.cpus), "memory": float(self.mib * MIB),
                **({self.node: NODE_RESOURCE_SHARE} if self.node else {})}


def fleet_nodes(scenario: Scenario, clients: list[ClientSpec]) -> dict[str, str | None]:
    """Client id -> its fleet entry's `node` (resolve_fleet numbers the clients entry by entry, `count` each)."""
    labels = [entry.node for entry in scenario.fleet for _ in range(entry.count)]
    return {client.client_id: label for client, label in zip(clients, labels)}


def node_cpus(node: dict) -> int:
    return int(node.get("Resources", {}).get("CPU", 0))


def node_mib(node: dict) -> int:
    """The node's Ray `memory` resource (what tasks and actors may reserve there), MiB."""
    return int(node.get("Resources", {}).get("memory", 0) // MIB)


def seats(scenario: Scenario, clients: list[ClientSpec], nodes: list[dict], client_mib: int = CLIENT_MIB) -> list[Seat]:
    """Each client's seat: the cores its profile has (those it runs threads on), at most what the largest node
    that may host it has (a client cannot span nodes), at least 1; and `client_mib` of memory."""
    labels = fleet_nodes(scenario, clients)
    result = []
    for client in clients:
        label = labels[client.client_id]
        hosts = [node for node in nodes if label is None or label in node.get("Resources", {})]
        largest = max((node_cpus(node) for node in hosts), default=0)
        wanted = min(client.profile.cores, client.profile.threads)
        result.append(Seat(client.client_id, max(1, min(wanted, largest) if largest else wanted), label, client_mib))
    return result


def check_capacity(fleet_seats: list[Seat], nodes: list[dict], address: str) -> None:
    """A one-line UserError when the cluster cannot host the fleet: a resource no node offers, more CPUs or memory
    than the cluster (or the nodes offering a resource) have."""
    offered = sorted({name for node in nodes for name in node.get("Resources", {})
                      if not name.startswith("node:") and name not in ("CPU", "GPU", "memory", "object_store_memory")})
    for label in sorted({seat.node for seat in fleet_seats if seat.node}):
        hosts = [node for node in nodes if label in node.get("Resources", {})]
        asking = [seat for seat in fleet_seats if seat.node == label]
        if not hosts:
            raise UserError(f"--cluster {address}: fleet entries with node: {label} ({_count(asking)}) need a node "
                            f"offering the Ray resource {label!r}, and none does (resources offered: "
                            f"{', '.join(offered) or 'none besides CPU and memory'}; start a node with "
                            f"ray start --resources '{{\"{label}\": 1}}')")
        _check_room(asking, hosts, f"--cluster {address}: fleet entries with node: {label} ask",
                    f"the {len(hosts)} node(s) offering {label!r} have {{}}",
                    f"fewer such clients, or more nodes offering {label!r}")
    _check_room(fleet_seats, nodes, f"--cluster {address}: the fleet asks",
                f"the Ray cluster has {{}} on {len(nodes)} node(s)", "fewer clients, or more nodes")


def _check_room(asking: list[Seat], hosts: list[dict], who: str, where: str, remedy: str) -> None:
    """The CPUs, then the memory, that `asking` reserves against what `hosts` have, as one line naming both
    (`where` holds {} for what they have)."""
    cpus = sum(node_cpus(node) for node in hosts)
    if sum(seat.cpus for seat in asking) > cpus:
        raise UserError(f"{who} {_cpus(asking)}, {where.format(f'{cpus} CPUs')} (allowed: at most what they have; a client "
                        f"reserves its profile's cores): {remedy}")
    memory = sum(node_mib(node) for node in hosts)
    if sum(seat.mib for seat in asking) > memory:
        raise UserError(f"{who} {sum(seat.mib for seat in asking)} MiB of memory ({_count(asking)}: {asking[0].mib} MiB "
                        f"each, --client-memory), {where.format(f'{memory} MiB')} (allowed: at most what they have): "
                        f"{remedy} (a node declares its memory with ray start --memory BYTES)")


def _quantity(resource: str, value: float) -> str:
    """An amount of a Ray resource in words: memory in MiB (Ray counts it in bytes), others as they are."""
    return f"{value / MIB:.0f} MiB" if resource == "memory" else f"{value:g}"


def _count(fleet_seats: list[Seat]) -> str:
    return f"{len(fleet_seats)} client{'s' if len(fleet_seats) != 1 else ''}"


def _cpus(fleet_seats: list[Seat]) -> str:
    """'12 CPUs (3 clients: 4 each)' or '10 CPUs (3 clients: 2 x 4 + 1 x 2)'."""
    sizes = sorted({seat.cpus for seat in fleet_seats}, reverse=True)
    each = f"{sizes[0]} each" if len(sizes) == 1 else " + ".join(
        f"{sum(s.cpus == size for s in fleet_seats)} x {size}" for size in sizes)
    return f"{sum(seat.cpus for seat in fleet_seats)} CPUs ({_count(fleet_seats)}: {each})"


def addresses(bind: str | None, node_ip: str) -> tuple[str, str]:
    """(where the aggregator binds, where the clients connect). `bind`: tcp://HOST:PORT, HOST `*` or 0.0.0.0 for
    every interface (the clients then connect to `node_ip`); None: `node_ip` and a port free now."""
    if bind is None:
        with socket.socket() as probe:  # a port free now; the aggregator binds it a few seconds later
            probe.bind((node_ip, 0))
            port = probe.getsockname()[1]
        address = f"tcp://{node_ip}:{port}"
        return address, address
    host, _, port = bind.removeprefix("tcp://").rpartition(":")
    if not bind.startswith("tcp://") or not host or not port.isdigit():
        raise UserError(f"--bind {bind}: not allowed (allowed: tcp://HOST:PORT with a port number, e.g. "
                        f"tcp://*:5555 or tcp://{node_ip}:5555)")
    return bind, f"tcp://{node_ip if host in ('*', '0.0.0.0') else host}:{port}"


@functools.cache
def _host_actor():
    """NodeHost as a Ray actor class (made once: every node's host is one of it); never restarted, and reserving
    nothing beyond its clients' bundles."""
    import ray

    return ray.remote(max_restarts=0, num_cpus=0)(NodeHost)


@dataclass
class Placed:
    """One client on the cluster, as the launcher follows it."""

    seat: Seat
    actor: Any  # the Ray actor handle of its node's NodeHost
    starting: Any = None  # the ObjectRef of its start(), until answered
    polling: Any = None  # the ObjectRef of its last poll(), until answered
    polled_at: float = 0.0  # monotonic s
    facts: dict = dataclasses.field(default_factory=dict)  # node, pid, affinity (processes.json)
    log_offset: int = 0  # bytes of its log fetched so far
    more_log: bool = False  # the last piece was a full one: its log may hold more
    exitcode: int | None = None
    crashed_at: float | None = None  # monotonic s: an emulated crash, to reboot after REBOOT_AFTER_S
    gone: str | None = None  # why its host can no longer be reached (its actor or node died)


class ClusterFleet:
    """The fleet's clients on a Ray cluster: connected and checked at creation (UserError before anything starts),
    placed by `reserve`, started by `start`, followed by `poll`, ended by `stop` (which leaves no actor, placement
    group or client process behind)."""

    def __init__(self, options: ClusterOptions, scenario: Scenario, clients: list[ClientSpec]):
        try:
            import ray
            import ray.util
        except ImportError:
            raise UserError(RAY_MISSING) from None
        self.ray, self.options, self.scenario, self.clients = ray, options, scenario, clients
        if options.placement not in PLACEMENTS:
            raise UserError(f"--placement {options.placement}: not allowed (allowed: {', '.join(PLACEMENTS)})")
        try:
            ray.init(address=options.address, namespace="testbed", log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
        except Exception as error:  # ConnectionError, RuntimeError, ValueError, by address and Ray version
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"--cluster {options.address}: cannot connect to a Ray cluster there ({first})") from None
        try:
            self.nodes = [node for node in ray.nodes() if node.get("Alive")]
            self.seats = seats(scenario, clients, self.nodes, options.client_mib)
            check_capacity(self.seats, self.nodes, options.address)
            self.node_ip = str(ray.util.get_node_ip_address())
            self.bind, self.connect = addresses(options.bind, self.node_ip)
        except BaseException:
            ray.shutdown()
            raise
        self.keys_dir: Path | None = None
        self.group: Any = None  # the fleet's placement group, once reserved
        self.placed: dict[str, Placed] = {}
        self.hosts: dict[str, Any] = {}  # node id -> the Ray actor handle of the NodeHost there
        self.bundle_nodes: dict[str, str] = {}  # client id -> the node id its reserved bundle is on
        self.run_key = ""
        self.run_dir: Path | None = None

    # ------------------------------------------------------------------ before the aggregator starts
    def reserve(self, run_dir: Path, interrupted: Callable[[], bool]) -> None:
        """Make the run's keys and wait (up to the placement timeout) for the fleet's placement group; a UserError
        naming what the cluster lacks when it is not ready by then. `interrupted()`: stop waiting (Ctrl-C)."""
        from ray.util.placement_group import placement_group, remove_placement_group

        from testbed.transport.keys import generate_keys

        self.run_dir = run_dir
        identity = json.loads((run_dir / "run.json").read_text())
        self.run_key = f"{run_dir.name[:40]}-{identity['run_id'][:8]}-{secrets.token_hex(4)}"  # one per launch
        self.keys_dir = Path(tempfile.mkdtemp(prefix="testbed-keys-"))  # private: mkdtemp makes it 0700
        generate_keys(self.keys_dir, [seat.client_id for seat in self.seats])
        strategy = PLACEMENTS[self.options.placement]
        self.group = placement_group([seat.bundle() for seat in self.seats], strategy=strategy,
                                     name=f"testbed-{self.run_key}")
        ready = self.group.ready()
        deadline = time.monotonic() + self.options.placement_timeout_s
        while not self.ray.wait([ready], timeout=0.5)[0]:
            if interrupted():
                return
            if time.monotonic() >= deadline:
                missing = self._shortfall()
                remove_placement_group(self.group)
                self.group = None
                raise UserError(f"--cluster {self.options.address}: the fleet's placement ({len(self.seats)} clients, "
                                f"{self.options.placement}) was not ready after {self.options.placement_timeout_s:g} s: "
                                f"{missing}")
        table = self.ray.util.placement_group_table(self.group)["bundles_to_node_id"]
        self.bundle_nodes = {seat.client_id: str(table[index]) for index, seat in enumerate(self.seats)}

    def _shortfall(self) -> str:
        """What the cluster lacks for the fleet now, in words (another job may hold what it has)."""
        free = self.ray.available_resources()
        asked: dict[str, float] = {}
        for seat in self.seats:
            for name, amount in seat.bundle().items():
                asked[name] = asked.get(name, 0.0) + amount
        short = [f"{name} {_quantity(name, wanted)} asked, {_quantity(name, free.get(name, 0.0))} free"
                 for name, wanted in sorted(asked.items()) if free.get(name, 0.0) < wanted]
        largest = max((node_cpus(node) for node in self.ray.nodes() if node.get("Alive")), default=0)
        too_big = [seat.client_id for seat in self.seats if seat.cpus > largest]
        if too_big:
            short.append(f"{', '.join(too_big)} ask more CPUs than any node has")
        if not short:
            short.append("the resources are free in total, but no set of nodes fits every client whole")
        return "; ".join(short) + " (allowed: a fleet whose clients each fit a node with the resources free)"

    # ------------------------------------------------------------------ clients
    def start(self, client_id: str) -> None:
        """Start the client on the node of its reserved bundle, through the node's host (created with the node's
        first client; answered in `poll`)."""
        assert self.keys_dir is not None and self.group is not None, "reserve() first"
        index = next(i for i, seat in enumerate(self.seats) if seat.client_id == client_id)
        node = self.bundle_nodes[client_id]
        if node not in self.hosts:
            self.hosts[node] = self._node_host(index, sum(bundle == node for bundle in self.bundle_nodes.values()))
        keys = {"server.key": (self.keys_dir / "server.key").read_text(),
                "client.key_secret": (self.keys_dir / "clients" / f"{client_id}.key_secret").read_text()}
        host = self.hosts[node]
        placed = self.placed[client_id] = Placed(self.seats[index], host)
        placed.starting = host.start.remote(client_id, self.connect, keys, JOIN_TIMEOUT_S)

    def _node_host(self, index: int, clients: int) -> Any:
        """A NodeHost in bundle `index` (so on that bundle's node), answering `clients` clients' calls at once."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return _host_actor().options(
            max_concurrency=clients + 2,  # each client's stop may wait seconds; polls and starts go on meanwhile
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index),
        ).remote(self.run_key)

    def poll(self) -> bool:
        """Take up what the hosts answered (placements, exits, logs) and ask again where due; True when a client's
        process facts changed (processes.json and fleet.json to rewrite)."""
        asked = [ref for placed in self.placed.values() if not placed.gone
                 for ref in (placed.starting, placed.polling) if ref is not None]
        answered = set(self.ray.wait(asked, num_returns=len(asked), timeout=0)[0]) if asked else set()
        changed = False
        now = time.monotonic()
        for client_id, placed in self.placed.items():
            if placed.gone:
                continue
            if placed.starting is not None:
                if placed.starting not in answered:
                    continue
                result = self._answer(placed, placed.starting)
                placed.starting = None
                if result is not None:
                    if "testbed" in result:  # a first start (a restart tells its new pid alone)
                        self._check_version(client_id, result)
                    placed.facts = {**placed.facts, **result, "cpus_reserved": placed.seat.cpus}
                    placed.facts.pop("exitcode", None)
                changed = True
            if placed.polling is not None:
                if placed.polling not in answered:
                    continue
                result = self._answer(placed, placed.polling)
                placed.polling = None
                if result is not None:
                    changed |= self._take_poll(client_id, placed, result)
            if placed.gone:
                changed = True
                continue
            if placed.crashed_at is not None and now - placed.crashed_at >= REBOOT_AFTER_S:
                placed.crashed_at, placed.exitcode = None, None
                placed.starting = placed.actor.restart.remote(client_id)
            elif (placed.exitcode is None or placed.more_log) and now - placed.polled_at >= POLL_EVERY_S:
                placed.polling, placed.polled_at = placed.actor.poll.remote(client_id, placed.log_offset), now
        failed = [client_id for client_id, placed in self.placed.items() if placed.gone and not placed.facts]
        if failed and not any(placed.facts for placed in self.placed.values()):
            raise UserError(self._launch_failure(failed[0]))
        return changed

    def _launch_failure(self, client_id: str) -> str:
        """Why the run stops when a node's host died before any client started: one line, with the likely cause
        Ray itself leaves unsaid (a node lost mid-run only makes its clients lost)."""
        line = (f"--cluster {self.options.address}: the Ray actor that starts {client_id} on its node died before any "
                f"client started: {self.placed[client_id].gone}")
        if (Path.home() / ".ray" / "auth_token").is_file() and os.environ.get("RAY_AUTH_MODE") != "disabled":
            line += (f"; this host holds a Ray authentication token ({Path.home() / '.ray' / 'auth_token'}), so this "
                     "run's Ray driver asks for token authentication, which a cluster started without it cannot give: "
                     "run with RAY_AUTH_MODE=disabled, or start the cluster with the token")
        return line + " (the nodes' Ray logs, /tmp/ray/session_latest/logs, say more)"

    def _answer(self, placed: Placed, ref: Any) -> Any:
        """A host's answer that came (None when the host is gone: recorded in `placed.gone`)."""
        try:
            return self.ray.get(ref)  # answered: at once
        except self.ray.exceptions.RayError as error:  # its actor died: killed, or its node lost
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            placed.gone = f"its Ray actor or node is gone ({type(error).__name__}: {first[:300]})"
            self._append_log(placed.seat.client_id, f"\n[testbed run] {placed.seat.client_id}: {placed.gone}\n".encode())
            log.warning("%s: %s", placed.seat.client_id, placed.gone)
            return None

    def _take_poll(self, client_id: str, placed: Placed, result: dict) -> bool:
        from testbed.emulation.availability import CRASH_EXIT_CODE

        self._append_log(client_id, result["log"])
        placed.log_offset += len(result["log"])
        placed.more_log = len(result["log"]) >= LOG_CHUNK_BYTES  # a full piece: more may follow
        changed = False
        if result["affinity"] is not None and result["affinity"] != placed.facts.get("affinity"):
            placed.facts["affinity"] = result["affinity"]
            changed = True
        if result["exitcode"] is not None:
            placed.exitcode = placed.facts["exitcode"] = result["exitcode"]
            if result["exitcode"] == CRASH_EXIT_CODE:  # an emulated power loss: the device reboots
                placed.crashed_at = time.monotonic()
            changed = True
        return changed

    def _check_version(self, client_id: str, facts: dict) -> None:
        from testbed import __version__

        if facts.get("testbed") != __version__:
            raise UserError(f"{client_id}'s node {facts.get('node_ip')} runs testbed {facts.get('testbed')}, this "
                            f"launcher {__version__} (allowed: the same version on every node: install it there)")

    def _append_log(self, client_id: str, data: bytes) -> None:
        if data and self.run_dir is not None:
            path = self.run_dir / "logs" / f"{client_id}.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as handle:
                handle.write(data)

    # ------------------------------------------------------------------ records
    def processes(self) -> dict[str, dict]:
        """Client id -> its process facts: node id and IP, hostname, pid, CPU affinity, CPUs reserved (processes.json)."""
        return {client_id: {key: value for key, value in placed.facts.items() if key not in ("testbed", "python")}
                for client_id, placed in self.placed.items() if placed.facts}

    def write_records(self, run_dir: Path, local: dict[str, int]) -> None:
        """processes.json (the launcher's own processes by pid, each client with its node) and fleet.json (each
        client gains `node`), and cluster.json: the cluster, the aggregator's address and each node's load."""
        (run_dir / "processes.json").write_text(json.dumps({**local, **self.processes()}, indent=1))
        fleet = []
        for client in self.clients:
            entry = to_data(client)
            facts = self.placed[client.client_id].facts if client.client_id in self.placed else {}
            if facts:
                entry["node"] = {key: facts.get(key) for key in ("node_id", "node_ip", "hostname")} | {
                    "cpus_reserved": facts.get("cpus_reserved"), "resource": self.placed[client.client_id].seat.node}
            fleet.append(entry)
        (run_dir / "fleet.json").write_text(json.dumps(fleet, indent=1))
        (run_dir / "cluster.json").write_text(json.dumps(self.describe(), indent=1))

    def node_dilations(self) -> dict[str, Dilation]:
        """Node id -> the dilation its own clients need on its own CPUs under the real clock (choose_dilation:
        the busiest of them that may be selected at once, over the node's CPUs with the scenario's headroom)."""
        strategy = self.scenario.strategy
        concurrent = (math.ceil(strategy.clients_per_round * strategy.over_selection - 1e-9)
                      if strategy.clients_per_round else None)
        needs = {}
        for node in self.nodes:
            hosted = [client for client in self.clients if self._node_of(client.client_id) == node["NodeID"]]
            if hosted and node_cpus(node):
                spec = dataclasses.replace(self.scenario.emulation, host_cores=node_cpus(node), dilation=None)
                needs[node["NodeID"]] = choose_dilation(spec, [client.profile for client in hosted],
                                                        min(concurrent, len(hosted)) if concurrent else None)
        return needs

    def run_dilation(self) -> Dilation | None:
        """The run's initial factor under the real clock: the largest of its nodes' needs, since every client and
        the aggregator keep one emulated timeline (a node that needs less then idles more). None when the scenario
        sets the factor or runs the event clock (the aggregator's own choice stands)."""
        emulation = self.scenario.emulation
        needs = self.node_dilations()
        if emulation.clock != "real" or emulation.dilation is not None or not needs:
            return None
        node, need = max(needs.items(), key=lambda item: item[1].factor)
        others = ", ".join(f"{other[:8]} {dilation.factor:.2f}" for other, dilation in needs.items() if other != node)
        return dataclasses.replace(need, reason=f"time dilation {need.factor:.2f}, the largest of the {len(needs)} "
                                               f"nodes' needs: node {node[:8]}'s ({need.reason})"
                                               + (f"; the others: {others}" if others else ""))

    def _node_of(self, client_id: str) -> str | None:
        """The node a client runs on: as its host reported it, else as its bundle was reserved."""
        placed = self.placed.get(client_id)
        return (placed.facts.get("node_id") if placed else None) or self.bundle_nodes.get(client_id)

    def describe(self) -> dict:
        """The cluster as this run used it; each node with its clients and the time dilation they need there under
        the real clock, and the factor the run started with (run_dilation: the largest need; None under the event
        clock or a factor the scenario sets)."""
        needs = self.node_dilations()
        nodes = []
        for node in self.nodes:
            hosted = [client for client in self.clients if self._node_of(client.client_id) == node["NodeID"]]
            entry: dict[str, Any] = {"node_id": node["NodeID"], "node_ip": node.get("NodeManagerAddress"),
                                     "cpus": node_cpus(node), "clients": [client.client_id for client in hosted],
                                     "demand_cores": round(sum(demand_cores(c.profile) for c in hosted), 3)}
            if node["NodeID"] in needs:
                entry["dilation_needed"] = round(needs[node["NodeID"]].factor, 4)  # as events round it
            nodes.append(entry)
        started = self.run_dilation()
        return {"address": self.options.address, "placement": self.options.placement, "aggregator": self.connect,
                "clock": self.scenario.emulation.clock, "nodes": nodes,
                "run_dilation": round(started.factor, 4) if started else None}

    # ------------------------------------------------------------------ the end
    def stop(self) -> None:
        """End every client (its host: SIGTERM, then SIGKILL its group), fetch the rest of its log, kill every host
        actor, remove the placement group and the keys, and disconnect from Ray. Safe to call again."""
        if not self.ray.is_initialized():
            return
        ray = self.ray
        live = {client_id: placed for client_id, placed in self.placed.items() if not placed.gone}
        polls = [placed.polling for placed in live.values() if placed.polling is not None]
        if polls:  # their pieces of log come before what stop hands back (a poll takes milliseconds)
            answered = set(ray.wait(polls, num_returns=len(polls), timeout=1.0)[0])
            for client_id, placed in live.items():
                if placed.polling in answered and (result := self._answer(placed, placed.polling)) is not None:
                    self._append_log(client_id, result["log"])
                    placed.log_offset += len(result["log"])
        stops = {client_id: placed.actor.stop.remote(client_id, placed.log_offset)
                 for client_id, placed in live.items() if not placed.gone}
        answered = set(ray.wait(list(stops.values()), num_returns=len(stops), timeout=STOP_WAIT_S)[0]) if stops else set()
        for client_id, ref in stops.items():
            placed = live[client_id]
            if ref not in answered:
                self._append_log(client_id, f"\n[testbed run] {client_id}: its host did not answer within "
                                            f"{STOP_WAIT_S:g} s (its node lost?): killed\n".encode())
            elif (result := self._answer(placed, ref)) is not None:
                self._append_log(client_id, result["log"])
                placed.facts["exitcode"] = result["exitcode"]
        closes = [host.close.remote() for host in self.hosts.values()]  # each node's fork server and run folder
        if closes:
            ray.wait(closes, num_returns=len(closes), timeout=1.0)
        for host in self.hosts.values():
            try:
                ray.kill(host, no_restart=True)  # its process dies, and with it its fork server and any client left
            except ray.exceptions.RayError:  # already gone with its node
                pass
        if self.group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.group)
            self.group = None
        if self.keys_dir is not None:
            shutil.rmtree(self.keys_dir, ignore_errors=True)
        ray.shutdown()

