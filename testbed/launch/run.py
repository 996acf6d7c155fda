"""`testbed run`: one aggregator process and one process per client, a run directory, nothing left behind."""

from __future__ import annotations

import json
import secrets
import signal
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from testbed.aggregator.checkpoint import write_run_identity
from testbed.config.convert import to_data
from testbed.config.loader import dump_scenario, load_scenario, resolve_fleet
from testbed.config.schema import Scenario
from testbed.emulation.dilation import fleet_dilation
from testbed.errors import UserError
from testbed.event_kinds import RunEnded, RunFailed, RunInterrupted
from testbed.events import ENDINGS, EventLog, read_events
from testbed.launch.limits import KernelLimits
from testbed.launch.processes import AGGREGATOR_ENTRY, CLIENT_ENTRY, PRELOAD, ProcessGroup
from testbed.monitor.console import EventPrinter
from testbed.strategies import make_strategy

if TYPE_CHECKING:
    from testbed.launch.cluster import ClusterFleet, ClusterOptions


class Printer(Protocol):
    """What shows a run (EventPrinter; testbed.monitor.live's RunDashboard on a terminal)."""

    def poll(self) -> None:
        """Show what the run did since the last poll."""

    def stop(self) -> None:
        """The run failed: leave the screen as it was, so that the error is seen."""

    def finish(self, run_dir: Path, summary: dict, exit_code: int | None) -> None:
        """Show how the run ended."""


def new_run_dir(scenario: Scenario, out: str | None) -> Path:
    if out:
        run_dir = Path(out)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"--out {run_dir} exists and is not empty (use --resume {run_dir} to continue it)")
    else:
        run_dir = Path("runs") / f"{scenario.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_identity(run_dir, scenario)  # run.json: what every checkpoint of this run is tied to
    dump_scenario(scenario, run_dir / "scenario.yaml")
    fleet = [to_data(client) for client in resolve_fleet(scenario)]  # profiles and links in full
    (run_dir / "fleet.json").write_text(json.dumps(fleet, indent=1))
    return run_dir


def prepare_assets(scenario: Scenario, run_dir: Path, clients_here: bool = True) -> None:
    """Build what every process will read from the cache (corpus, waveforms, pretrained backbone, the cost table of
    `compute: modeled`) once, here, and check what the scenario asks of the host and the backbone: a one-line
    UserError before any process starts. `clients_here`: False when the clients run on other hosts (their
    dilation and memory are then the cluster's concern, checked by launch/cluster.py)."""
    from testbed.aggregator.plan import make_plan
    from testbed.config.depth import check_depth
    from testbed.launch.capacity import check_host
    from testbed.model.backbone import build_backbone, buildable_anywhere

    if clients_here:
        check_host(scenario, resolve_fleet(scenario))  # time dilation and memory the fleet needs
    plan = make_plan(scenario)  # the data of every task, and a partition that gives every client a shard (else one-line error)
    spec = scenario.backbone
    if not buildable_anywhere(spec.name, spec.family, spec.pretrained):  # a preset's depth load_scenario checked
        backbone = build_backbone(spec.name, spec.family, spec.pretrained, scenario.seed, progress=True)
        # exits against the loaded depth: load_scenario could check them only for a backbone known without loading
        check_depth(scenario, backbone.config.num_hidden_layers, f"scenario {scenario.name!r}")
    if scenario.emulation.clock == "events":
        from testbed.client.costs import COST_TABLE_FILE, cost_table  # torch

        table = run_dir / COST_TABLE_FILE
        if not table.exists():  # a resumed run keeps the table it had
            loss = make_strategy(scenario.strategy.name, scenario.strategy.weighting).client_loss or scenario.training.loss
            table.write_text(json.dumps(cost_table(scenario, sorted(plan.classes), plan.classes, loss), indent=1))


def run(scenario_path: str | None, overrides: list[str], out: str | None = None, resume: str | None = None,
        make_printer: Callable[[Path], Printer] | None = None, cluster: ClusterOptions | None = None) -> Path:
    """Run a scenario to the end (or Ctrl-C) and return its run directory.

    `make_printer(events_path)` gives what shows the run (poll() while it goes, finish() at the end):
    plain lines by default, the live dashboard from testbed.monitor.live on a terminal. `cluster`: place the
    clients on a Ray cluster (launch/cluster.py) instead of this host."""
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "scenario.yaml").exists():
            raise UserError(f"--resume {run_dir}: not a run directory (no scenario.yaml)")
        scenario = load_scenario(run_dir / "scenario.yaml")
    else:
        assert scenario_path is not None, "a scenario, or resume"  # as `testbed run` checks (launch/commands.py)
        scenario = load_scenario(scenario_path, overrides)
    fleet = None
    if cluster is not None:  # connected and checked against the cluster before anything is made or started
        from testbed.launch.cluster import ClusterFleet

        fleet = ClusterFleet(cluster, scenario, resolve_fleet(scenario))
    try:
        if not resume:
            run_dir = new_run_dir(scenario, out)
        group = ProcessGroup(PRELOAD)
        group.warm_up()  # the fork server imports while the assets are prepared here (both take seconds)
        try:
            prepare_assets(scenario, run_dir, clients_here=fleet is None)
        except BaseException:  # a scenario the host or the backbone cannot carry: no process outlives the refusal
            group.stop()
            raise
        printer = (make_printer or EventPrinter)(run_dir / "events.jsonl")
        try:
            return _launch(scenario, run_dir, bool(resume), group, printer, fleet)
        except BaseException:  # the dashboard leaves the screen first, so that the error below it is seen
            printer.stop()
            raise
    finally:
        if fleet is not None:  # stopped at the end of the launch already; here when it never got that far
            fleet.stop()


def _launch(scenario: Scenario, run_dir: Path, resume: bool, group: ProcessGroup, printer: Printer,
            fleet: ClusterFleet | None = None) -> Path:
    """Start the aggregator and the fleet (here, or on the cluster of `fleet`), show the run until the aggregator
    ends, then record and tell how it ended."""
    sockets = Path(tempfile.mkdtemp(prefix="testbed-"))  # short path: ipc names are limited to ~100 bytes
    router, events = f"ipc://{sockets}/router", f"ipc://{sockets}/events"
    if fleet is not None:  # the clients connect over TCP from their nodes
        router = fleet.bind
    (run_dir / "endpoints.json").write_text(json.dumps({"router": fleet.connect if fleet else router,
                                                        "events": events}))
    events_path = run_dir / "events.jsonl"
    recorded = len(read_events(events_path)) if events_path.exists() else 0  # the events of earlier launches
    interrupted = []
    previous = {sig: signal.signal(sig, lambda signum, _: interrupted.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}  # SIGHUP: the terminal closed
    clients = resolve_fleet(scenario)
    limits = None
    aggregator = None
    failure: UserError | None = None

    def record_processes() -> None:  # processes.json: for `ps`, and for the tests
        if fleet is None:
            (run_dir / "processes.json").write_text(json.dumps(group.pids()))
        else:
            fleet.write_records(run_dir, group.pids())

    try:
        start_client: Callable[[str], None]
        if fleet is None:
            limits = KernelLimits(scenario, clients, fleet_dilation(scenario, clients).factor, run_dir)
            # each client's proof of identity: handed to that child alone and to the aggregator, through the fork
            # server (never a command line, the environment or a file), so no other process can join as a client
            tokens = {client.client_id: secrets.token_hex(16) for client in clients}

            def start_local_client(client_id: str) -> None:
                assert limits is not None
                process = group.start(client_id, CLIENT_ENTRY, router, client_id, str(run_dir),
                                      limits.cpu_quota, tokens[client_id])
                limits.attach(client_id, process.pid)

            start_client = start_local_client
            aggregator = group.start("aggregator", AGGREGATOR_ENTRY, str(run_dir), router, events, resume,
                                     limits.cpu_quota, tokens)
        else:
            fleet.reserve(run_dir, lambda: bool(interrupted))  # the placement group, or a UserError naming the lack
            if scenario.emulation.backend != "user":
                print(f"emulation.backend {scenario.emulation.backend}: not applied on Ray nodes (the clients pace "
                      "themselves: the user backend)", flush=True)
            print(f"cluster {fleet.options.address}: aggregator on {fleet.connect} (CURVE keys made for this run), "
                  f"{len(clients)} clients placed ({fleet.options.placement}) on {len(fleet.nodes)} Ray node(s)",
                  flush=True)
            dilation = fleet.run_dilation()
            if dilation is not None:
                print(f"real clock: {dilation.reason}", flush=True)
            start_client = fleet.start
            if not interrupted:
                aggregator = group.start("aggregator", AGGREGATOR_ENTRY, str(run_dir), router, events, resume,
                                         False, None, str(fleet.keys_dir), dilation)
        starts = StaggeredStart([client.client_id for client in clients], run_dir / "events.jsonl")
        while aggregator is not None and aggregator.is_alive() and not interrupted and failure is None:
            if starts.pending:
                for client_id in starts.due():
                    start_client(client_id)
                record_processes()
            try:
                if fleet is not None and fleet.poll():
                    record_processes()
            except UserError as error:  # the cluster cannot run the fleet after all: the run fails, saying why
                failure = error
                aggregator.kill()  # it did nothing wrong: its end is recorded here, with the reason
                aggregator.join()
            printer.poll()
            if fleet is None:
                for client_id in group.reboot_crashed():  # an injected crash is a power loss: the device reboots
                    start_client(client_id)
                    record_processes()
            time.sleep(0.2)
        if interrupted and aggregator is not None:  # the aggregator says BYE and records run_interrupted; then all go
            aggregator.terminate()
            aggregator.join(3.0)
    finally:
        try:
            if fleet is not None:
                fleet.stop()  # every client on the cluster ends, its log comes back, no actor is left
                record_processes()
        finally:
            group.stop()
            oom_killed = [client for client in clients if limits is not None and limits.oom_killed(client.client_id)]
            if limits is not None:
                limits.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for leftover in sockets.iterdir():
                leftover.unlink()
            sockets.rmdir()
    exit_code = aggregator.exitcode if aggregator is not None else None
    record_unrecorded_end(run_dir, recorded, exit_code, bool(interrupted), str(failure) if failure else None)
    printer.poll()
    from testbed.aggregator.summary import write_summary

    summary = write_summary(run_dir)
    printer.finish(run_dir, summary, exit_code)
    for client in oom_killed:  # after the dashboard has left the screen, so that it is seen
        print(f"{client.client_id} was killed by the kernel: out of memory (memory_mb {client.profile.memory_mb})",
              flush=True)
    from testbed.monitor.report import build_report_or_warn

    build_report_or_warn(run_dir)  # report.md and plots/*.png; a failure only warns: the results are on disk
    return run_dir


def record_unrecorded_end(run_dir: Path, recorded: int, exit_code: int | None, interrupted: bool,
                          failure: str | None = None) -> None:
    """An aggregator that ended without recording how (killed, or failed before its first event) gets its ending
    recorded here, by the only witness left: so the console, summary.json and the exit code say what happened.

    `recorded`: how many events the run had before this launch; the aggregator is no longer running. `failure`:
    why the launcher stopped it (the run failed for that reason)."""
    path = run_dir / "events.jsonl"
    events = read_events(path) if path.exists() else []
    if any(event.get("kind") in ENDINGS for event in events[recorded:]):
        return  # the aggregator recorded its end itself
    log_file = run_dir / "logs" / "aggregator.log"
    ending: type[RunEnded]
    if failure is not None:
        ending, reason = RunFailed, failure
    elif interrupted:
        ending, reason = RunInterrupted, "interrupted before the aggregator recorded its end"
    elif exit_code is not None and exit_code < 0:
        ending, reason = RunFailed, (f"the aggregator was killed by {signal.Signals(-exit_code).name} before it "
                                     f"recorded its end (see {log_file})")
    else:
        stage = "its first event" if len(events) == recorded else "it recorded its end"
        ending, reason = RunFailed, f"the aggregator exited with code {exit_code} before {stage} (see {log_file})"
    log = EventLog(path, start_seq=events[-1]["seq"] + 1 if events else 0,
                   clock_offset=events[-1]["t"] if events else 0.0)  # continues the run's seq and clock
    log.emit(ending(reason=reason, dropped_messages=0, recorded_by="launcher"))
    log.close()


class StaggeredStart:
    """Client processes to start, at most MAX_LOADING at a time until each says it is ready.

    Loading (data, model, the cost probe) takes ~1 CPU second and ~200 MB per client; a fleet of
    hundreds starting at once would need all that memory at the same moment.
    """

    MAX_LOADING = 8

    def __init__(self, client_ids: list[str], events_path: Path):
        from testbed.monitor.sources import FileTail

        self.pending = list(client_ids)
        self.loading: set[str] = set()
        self.events = FileTail(events_path)

    def due(self) -> list[str]:
        """The clients to start now."""
        self.loading -= {e["client"] for e in self.events.read() if e.get("kind") == "client_ready"}
        due = self.pending[:max(0, self.MAX_LOADING - len(self.loading))]
        del self.pending[:len(due)]
        self.loading.update(due)
        return due


def read_outcome(run_dir: Path) -> int:
    """Exit code of `testbed run`: 0 finished, 130 interrupted, 1 otherwise."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"finished": 0, "interrupted": 130}.get(summary["status"], 1)
