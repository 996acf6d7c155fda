"""Scale: many client processes with the tiny backbone on this host, on either clock.

Two fleets, each a real `testbed run` of 3 rounds:
  --clients 64:                   every client trains every round;
  --clients 256 --per-round 16:   over-selection, 16 updates kept per round (ceil(16 x 1.3) asked).
Prints the run's outcome, rounds completed, wall time, the dilation it chose, and the peak memory of
the whole host (MemTotal - MemAvailable, sampled twice a second) above what it was before the run.
The clients are light devices (speed 1.0, 1 thread, Wi-Fi, the first exit only) doing 2 local steps of
8 clips: scale is about processes, messages and memory, not about training.

    python tools/bench_scale.py --clients 64                       # the event clock, as `testbed run`
    python tools/bench_scale.py --clients 256 --per-round 16
    python tools/bench_scale.py --clients 256 --per-round 16 --clock real
    python tools/bench_scale.py --clients 64 --ray-nodes 2             # spread over a local Ray cluster

`--ray-nodes N` starts a Ray cluster of N nodes on this host (each declaring clients / N logical CPUs,
one per client: Ray reserves, the host's cores still run them all), runs the fleet on it with
`--cluster ADDRESS --placement spread --client-memory 200` (`--client-memory MIB` to change it), reports
the clients per node and the memory Ray itself took (host memory in use once the cluster is up, against
before), and shuts the cluster down. Needs `pip install -e '.[ray]'`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROFILE = """\
name: scale_device
description: a light device for scale runs
speed: 1.0
cores: 1
threads: 1
memory_mb: 2048
max_exit: 1
link: wifi
"""

SCENARIO = """\
name: bench_scale
rounds: 3
eval_every: 100
deadline_s: 600
data: {{partition: iid}}      # more clients than the corpus has speakers
backbone: {{name: tiny}}
training: {{local_steps: 2, batch_size: 8}}
strategy: {{name: depth_aware, clients_per_round: {per_round}}}
exit_policy: {{name: static}}
fleet: [{{profile: {profile}, count: {clients}}}]
emulation: {{clock: {clock}}}
"""


SCALE_CLIENT_MIB = 200  # --client-memory of a scale client on a Ray node, by default (see start_ray_cluster)


def meminfo_mb() -> dict[str, float]:
    fields = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            name, value = line.split(":")
            fields[name] = int(value.split()[0]) / 1024
    return fields


def used_mb() -> float:
    fields = meminfo_mb()
    return fields["MemTotal"] - fields["MemAvailable"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--per-round", type=int, default=None, help="updates kept per round (over-selection)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is stopped")
    parser.add_argument("--clock", choices=("real", "events"), default="events",
                        help="emulation.clock of the run (default: %(default)s, as testbed run)")
    parser.add_argument("--ray-nodes", type=int, default=0, metavar="N",
                        help="run the fleet on a Ray cluster of N nodes started on this host (default: no Ray)")
    parser.add_argument("--client-memory", type=int, default=SCALE_CLIENT_MIB, metavar="MIB",
                        help="with --ray-nodes: the memory each client reserves on its node (default: %(default)s)")
    args = parser.parse_args()
    if args.ray_nodes:
        ray_cluster, cluster_args = start_ray_cluster(args.ray_nodes, args.clients, args.client_memory)
    else:
        ray_cluster, cluster_args = None, []
    try:
        measure(args, cluster_args)
    finally:
        if ray_cluster is not None:
            ray_cluster.shutdown()


def start_ray_cluster(nodes: int, clients: int, client_mib: int):
    """A local Ray cluster of `nodes` nodes with room for every client; (the cluster, testbed run's options)."""
    from ray.cluster_utils import Cluster

    before = used_mb()
    # Each node declares its share of this host's available memory: left to itself every local node would
    # declare the whole host's, and the run's check of the fleet's memory against the cluster's would count it
    # N times over (on real nodes each declares its own)
    share = int(meminfo_mb()["MemAvailable"] * 2**20 * 0.9 / nodes)  # bytes; 10 % for Ray's own processes
    node = {"num_cpus": -(-clients // nodes), "include_dashboard": False, "object_store_memory": 80 * 2**20,
            "memory": share}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    time.sleep(5)  # let the nodes' own processes settle before their memory is read
    print(f"Ray cluster of {nodes} nodes, {node['num_cpus']} logical CPUs and {share / 2**20:.0f} MiB of memory each: "
          f"+{used_mb() - before:.0f} MB of host memory before any client; each client reserves {client_mib} MiB")
    # The scale clients are light (2 steps of 8 clips at the first exit): measured 145 MB of host memory each on
    # two nodes, hosts and fork servers included, where the default reservation is sized for a training client
    return cluster, ["--cluster", cluster.address, "--placement", "spread", "--client-memory", str(client_mib)]


def measure(args: argparse.Namespace, cluster_args: list[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    profile = work / "scale_device.yaml"
    profile.write_text(PROFILE)
    scenario = work / "scenario.yaml"
    scenario.write_text(SCENARIO.format(clients=args.clients, profile=profile, clock=args.clock,
                                        per_round="null" if args.per_round is None else args.per_round))
    run_dir = work / "run"
    before = used_mb()
    peak = before
    started, launched = time.monotonic(), time.time()
    output = (work / "run.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(scenario), "--out", str(run_dir),
                                "--no-dashboard", *cluster_args], stdout=output, stderr=subprocess.STDOUT)
    try:
        while process.poll() is None and time.monotonic() - started < args.timeout:
            peak = max(peak, used_mb())
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)
    wall = time.monotonic() - started
    output.close()
    if not (run_dir / "summary.json").is_file():  # refused before it began: say why
        errors = [line for line in (work / "run.log").read_text().splitlines() if "error" in line]
        print(f"{args.clients} clients: refused after {wall:.1f} s wall (rc {process.returncode}): "
              + (errors[-1] if errors else f"see {work / 'run.log'}"))
        return
    summary = json.loads((run_dir / "summary.json").read_text())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.endswith("}")]
    dilation = next(e["dilation"] for e in events if e["kind"] == "run_started")
    closed = [e for e in events if e["kind"] == "round_closed"]
    first_round = next(e["wall"] for e in events if e["kind"] == "round_started")
    print(f"{args.clients} clients" + (f", {args.per_round} per round (over-selection)" if args.per_round else "")
          + f", {args.clock} clock: {summary['status']}, {summary['rounds_completed']}/3 rounds in {wall:.0f} s wall; "
          f"dilation {dilation['factor']:.1f} ({dilation['reason']})")
    print(f"round 1 started {first_round - launched:.1f} s after the launch (every client started, joined and ready)")
    print("per round: " + "; ".join(f"round {e['round']} {e['updates']} updates of {e['selected']} asked, "
                                   f"{e.get('discarded', 0)} discarded, {e['wall_s']:.1f} emulated s" for e in closed))
    print(f"host memory in use: {before:.0f} MB before, peak {peak:.0f} MB (+{peak - before:.0f} MB, "
          f"{(peak - before) / args.clients:.0f} MB per client); dropped messages {summary['dropped_messages']}")
    if cluster_args:
        nodes = json.loads((run_dir / "cluster.json").read_text())["nodes"]
        print("clients per Ray node: " + ", ".join(f"{node['node_id'][:8]} {len(node['clients'])}" for node in nodes))
    print(f"run directory {run_dir}")


if __name__ == "__main__":
    main()
