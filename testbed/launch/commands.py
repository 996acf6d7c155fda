"""CLI of the runtime: `testbed run`, `testbed aggregator`, `testbed client`, `testbed keys`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from testbed.errors import UserError
from testbed.launch.cluster import CLIENT_MIB, MAX_CLIENT_MIB, MIN_CLIENT_MIB


def add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="?", help="scenario YAML (omit with --resume)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario field, e.g. --set rounds=5 --set strategy.name=fedavg_full")
    parser.add_argument("--out", help="run directory (default: runs/<scenario>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a run from its last completed round; a checkpoint that cannot be tied to "
                             "the run is refused (run failed, exit code 1)")
    parser.add_argument("--no-dashboard", action="store_true",
                        help="plain timestamped lines even on a terminal (the default when not on one)")
    cluster = parser.add_argument_group("clients on a Ray cluster (needs: pip install -e '.[ray]'; docs/cluster.md)")
    cluster.add_argument("--cluster", metavar="ADDRESS",
                         help="place every client on a node of this Ray cluster: ray://HOST:PORT (Ray Client), "
                              "HOST:PORT (its GCS) or auto (the cluster started on this host); the aggregator stays here")
    cluster.add_argument("--placement", choices=["spread", "pack"], default=None,
                         help="spread the clients over as many nodes as possible, or pack them onto as few as "
                              "fit (default: spread)")
    cluster.add_argument("--bind", metavar="tcp://HOST:PORT",
                         help="where the aggregator listens for the nodes (default: this host's IP as Ray sees it, a "
                              "free port); tcp://*:PORT listens on every interface")
    cluster.add_argument("--placement-timeout", type=float, default=None, metavar="SECONDS",
                         help="how long the cluster may take to reserve the fleet's CPUs before the run is refused "
                              "(default: 60)")
    cluster.add_argument("--client-memory", type=int, default=None, metavar="MIB",
                         help=f"memory each client reserves on its node, in MiB (default: {CLIENT_MIB}, a client of "
                              "the tiny backbone training at batch 16; a larger backbone needs more)")


def run(args: argparse.Namespace) -> int:
    from testbed.launch.run import run as run_scenario

    if bool(args.scenario) == bool(args.resume):
        raise UserError("give either a SCENARIO or --resume RUN_DIR")
    if args.resume and (args.overrides or args.out):
        raise UserError("--resume continues a run as it was: --set and --out are not allowed with it")
    from testbed.launch.run import read_outcome
    from testbed.monitor.live import choose_printer

    return read_outcome(run_scenario(args.scenario, args.overrides, args.out, args.resume,
                                     choose_printer(args.no_dashboard), cluster_options(args)))


def cluster_options(args: argparse.Namespace):
    """The --cluster options of `testbed run` (None: the clients run on this host)."""
    from testbed.launch.cluster import ClusterOptions

    if args.cluster is None:
        given = [flag for flag, value in (("--placement", args.placement), ("--bind", args.bind),
                                          ("--placement-timeout", args.placement_timeout),
                                          ("--client-memory", args.client_memory)) if value is not None]
        if given:
            raise UserError(f"{given[0]} places clients on a Ray cluster: it needs --cluster ADDRESS")
        return None
    if args.placement_timeout is not None and not 1 <= args.placement_timeout <= 3600:
        raise UserError(f"--placement-timeout {args.placement_timeout:g}: not allowed (allowed: 1 to 3600 seconds)")
    if args.client_memory is not None and not MIN_CLIENT_MIB <= args.client_memory <= MAX_CLIENT_MIB:
        raise UserError(f"--client-memory {args.client_memory}: not allowed (allowed: {MIN_CLIENT_MIB} to "
                        f"{MAX_CLIENT_MIB} MiB)")
    return ClusterOptions(args.cluster, args.placement or "spread", args.bind,
                          60.0 if args.placement_timeout is None else args.placement_timeout,
                          CLIENT_MIB if args.client_memory is None else args.client_memory)


def add_aggregator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", help="scenario YAML")
    parser.add_argument("--bind", default="tcp://*:5555", help="where clients connect (default: %(default)s)")
    parser.add_argument("--publish", default=None, help="event PUB socket, e.g. tcp://*:5556 (default: none)")
    parser.add_argument("--keys", type=Path, help="CURVE key directory from `testbed keys` (required beyond loopback)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario field, e.g. --set rounds=5")
    parser.add_argument("--out", help="run directory (default: runs/<scenario>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue this run directory (a checkpoint not tied to it is refused: exit code 1)")
    parser.add_argument("--join-timeout", type=float, default=600.0, help="seconds to wait for the fleet")


def aggregator(args: argparse.Namespace) -> int:
    from testbed.aggregator.checkpoint import CheckpointRefused
    from testbed.aggregator.plan import make_plan
    from testbed.aggregator.server import Aggregator
    from testbed.aggregator.summary import write_summary
    from testbed.config.loader import load_scenario
    from testbed.launch.run import new_run_dir, prepare_assets

    _require_keys_beyond_loopback(args.bind, args.keys)
    if args.resume:
        run_dir = Path(args.resume)
        scenario = load_scenario(run_dir / "scenario.yaml")
    else:
        scenario = load_scenario(args.scenario, args.overrides)
        run_dir = new_run_dir(scenario, args.out)
    prepare_assets(scenario, run_dir)
    if args.keys is None:  # allowed on loopback only (checked above), and said plainly: run_started says auth "none"
        print(f"warning: no --keys: any process that can reach {args.bind} may join as any client of the fleet "
              f"(use `testbed keys` and --keys to bind each client id to its own key)", flush=True)
    print(f"aggregator for {scenario.name!r}: waiting for {sum(e.count for e in scenario.fleet)} clients on "
          f"{args.bind}; run directory {run_dir}", flush=True)
    try:
        aggregator = Aggregator(make_plan(scenario), run_dir, bind=args.bind, publish=args.publish,
                                curve_dir=args.keys, resume=bool(args.resume), join_timeout_s=args.join_timeout)
    except CheckpointRefused as refusal:  # recorded as the run's run_failed event: the run ends failed
        print(refusal, flush=True)
        code = 1
    else:
        code = aggregator.run()
    summary = write_summary(run_dir)
    from testbed.monitor.report import build_report_or_warn

    build_report_or_warn(run_dir)
    print(f"run {summary['status']}: {summary['rounds_completed']} rounds; results in {run_dir}")
    return code


def add_client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", required=True, help="the aggregator's address, e.g. tcp://host:5555")
    parser.add_argument("--id", required=True, dest="client_id", help="this client's id in the fleet, e.g. c07")
    parser.add_argument("--keys", type=Path, help="CURVE key directory holding server.key and clients/<id>.key_secret")
    parser.add_argument("--join-timeout", type=float, default=600.0,
                        help="seconds to wait for the aggregator's WELCOME, then exit saying why (code 2)")
    parser.add_argument("--work-dir", type=Path,
                        help="a folder shared with the run's other clients on this host: under the event clock, at "
                             "most as many of them compute at once as the host has cores (default: none shared)")


def client(args: argparse.Namespace) -> int:
    from testbed.client.worker import run_client

    _require_keys_beyond_loopback(args.connect, args.keys)
    return run_client(args.connect, args.client_id, curve_dir=args.keys, join_timeout_s=args.join_timeout,
                      run_dir=args.work_dir)


def add_keys_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, help="where to write the keys")
    parser.add_argument("--clients", help="comma-separated client ids, e.g. c00,c01")
    parser.add_argument("--scenario", help="take the client ids from this scenario's fleet")


def keys(args: argparse.Namespace) -> int:
    from testbed.config.loader import load_scenario, resolve_fleet
    from testbed.transport.keys import generate_keys

    ids = [c for c in (args.clients or "").split(",") if c]
    if args.scenario:
        ids += [spec.client_id for spec in resolve_fleet(load_scenario(args.scenario))]
    if not ids:
        raise UserError("name the clients: --clients c00,c01,... or --scenario SCENARIO")
    unfit = [cid for cid in ids if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cid)]
    if unfit:
        raise UserError(f"client id {unfit[0]!r} cannot name a key file (allowed: letters, digits, '_', '.', '-')")
    generate_keys(args.directory, sorted(set(ids)))
    print(f"CURVE keys for the aggregator and {len(set(ids))} clients in {args.directory} (secret keys readable by "
          f"you alone): give each client host {args.directory}/server.key and its own clients/<id>.key_secret")
    return 0


def _require_keys_beyond_loopback(address: str, keys: Path | None) -> None:
    """TCP beyond loopback requires CURVE: without it, anyone who reaches the port could join as any client."""
    if keys is None and address.startswith("tcp://") and not any(
            host in address for host in ("127.0.0.1", "localhost", "[::1]")):
        raise UserError(f"{address}: TCP beyond loopback requires CURVE keys (--keys DIR, made by `testbed keys`)")
