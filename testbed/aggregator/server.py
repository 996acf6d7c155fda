"""The aggregator process: waits for its fleet, then runs rounds until done, a signal, or a crash."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import zmq

from testbed.aggregator.checkpoint import (
    POINTER,
    RUN_FILE,
    Checkpoint,
    CheckpointRefused,
    load_checkpoint,
    read_run_identity,
    save_checkpoint,
    write_run_identity,
)
from testbed.aggregator.credentials import Credentials
from testbed.aggregator.fleet import Fleet
from testbed.aggregator.global_model import GlobalModel
from testbed.aggregator.plan import RunPlan, client_seed
from testbed.aggregator.records import Records, accuracy_columns
from testbed.aggregator.refusals import Refusals
from testbed.aggregator.rounds import ClientRow, PendingUpdate, Round, bookkeeping_fault
from testbed.aggregator.sanity import UpdateScreen, check_of
from testbed.aggregator.summary import untrained
from testbed.aggregator.timeline import Arrival, arrival, link_phases, replay_round
from testbed.client.costs import COST_TABLE_FILE
from testbed.config.convert import to_data
from testbed.config.loader import scenario_to_dict
from testbed.config.schema import LinkSpec
from testbed.emulation.dilation import Dilation, demand_cores, fleet_dilation, raised
from testbed.emulation.injection import InjectedState, control_path
from testbed.errors import UserError
from testbed.event_kinds import (
    ClientJoined,
    ClientLeft,
    ClientLost,
    ClientProgress,
    ClientReady,
    ClientRejoined,
    ClientSkipped,
    ClientState,
    ClientStatus,
    DilationChanged,
    Evaluated,
    LateUpdate,
    ModelSent,
    RoundAggregated,
    RoundClientRow,
    RoundClosed,
    RoundStarted,
    RunEnded,
    RunFailed,
    RunFinished,
    RunInterrupted,
    RunResumed,
    RunStarted,
    UpdateDiscarded,
    UpdateRejected,
)
from testbed.events import EventLog, read_events
from testbed.model.early_exit import exit_depth
from testbed.model.geometry import auto_exit
from testbed.model.state import group_of
from testbed.model.train import round_samples
from testbed.strategies import make_strategy
from testbed.strategies.selection import round_rule
from testbed.strategies.server_step import ServerStep
from testbed.transport.endpoint import Received, Router, identity_text
from testbed.transport.messages import (
    CHANNELS,
    HEARTBEAT_STATES,
    Message,
    MessageRejected,
    capped,
    check_tensors,
)

log = logging.getLogger("testbed.aggregator")
POLL_S = 0.2  # seconds: how often the serve loop checks liveness and deadlines
# Event clock, `compute: measured`: a claimed compute time below this share of what the run's cost table says
# the work takes is refused. Measured: clients' steps took 0.97-1.11x the table's figures (median per profile
# and depth), single rounds 0.90-1.48x (docs/benchmarks.md "Event clock"); a table probed on a busy host
# reads high, so honest claims need the margin.
COMPUTE_FLOOR = 0.5
# `compute: modeled`: every step is billed the table's figure (a slowdown only adds), so the claim may fall
# short of it by float rounding alone (relative)
MODELED_ROUNDING = 1e-9
MAX_DEVICE_CHARS = 8192  # JSON characters of a client's device description (a real one: ~1-2 KB)


class Interrupted(Exception):
    """SIGINT/SIGTERM: stop after saying BYE; the last checkpoint stays valid."""


@contextlib.contextmanager
def _interruption_held() -> Iterator[None]:
    """SIGINT/SIGTERM during the block take effect at its end, raised again for the handler before it. Raised
    inside numpy's zip writer, Interrupted would leave the writer open, and its close would fail the run instead
    of interrupting it."""
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda number, _: held.append(number))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if held:
        signal.raise_signal(held[0])


class Aggregator:
    def __init__(self, plan: RunPlan, run_dir: Path, *, bind: str, publish: str | None = None,
                 curve_dir: Path | None = None, resume: bool = False, join_timeout_s: float = 120.0,
                 fixed_dilation: bool = False, tokens: dict[str, str] | None = None,
                 dilation: Dilation | None = None):
        """`dilation`: the initial factor the launcher chose (clients on a Ray cluster: the nodes' largest need,
        launch/cluster.py); None: the fleet's need on this host (fleet_dilation)."""
        self.plan, self.scenario, self.run_dir = plan, plan.scenario, Path(run_dir)
        self.join_timeout_s = join_timeout_s
        self.model = GlobalModel(self.scenario, plan.classes)
        events_path = self.run_dir / "events.jsonl"
        # no events.jsonl: the last launch stopped before its first event, and the run starts afresh
        previous = read_events(events_path) if resume and events_path.exists() else []
        resumed = self._check_resumed_state(previous) if resume else None  # before any socket or client
        if resumed is None and not (self.run_dir / RUN_FILE).exists():
            write_run_identity(self.run_dir, self.scenario)  # a directory made before run ids: it gets one now
        self.first_round = resumed.round + 1 if resumed is not None else 1
        # emulated seconds of the rounds so far, evaluation excluded (what time_budget_s limits)
        self.rounds_s = sum(e["wall_s"] for e in previous
                            if e["kind"] == "round_closed" and e["round"] < self.first_round)
        self.context = zmq.Context()
        state_bytes = sum(v.nbytes for v in self.model.state.values())
        self.router = Router(self.context, bind, max_bytes=int(1.1 * state_bytes) + (1 << 20), curve_dir=curve_dir)
        # what binds a connection to a client id: the launcher's tokens, the CURVE keys, or (loopback) nothing
        self.credentials = (Credentials.curve(curve_dir) if curve_dir is not None else
                            Credentials.tokens(tokens) if tokens is not None else Credentials.none())
        self.publisher: zmq.Socket | None = None
        if publish:
            self.publisher = self.context.socket(zmq.PUB)
            self.publisher.bind(publish)
        self.events = EventLog(events_path, self.publisher, **_continuing(previous), clock=self.scenario.emulation.clock)
        self.event_clock = self.events.ticks is not None  # emulated time jumps: rounds are replayed (timeline.py)
        # event clock: CPU seconds per step, task -> depth (client/costs.py), written by the launcher
        self.cost_table: dict[str, dict[str, float]] | None = (
            json.loads((self.run_dir / COST_TABLE_FILE).read_text()) if self.event_clock else None)
        self.refusals = Refusals(self.events)  # every refusal an event, a flood of them a count
        strategy = self.scenario.strategy
        self.strategy = make_strategy(strategy.name, strategy.weighting)
        self.strategy.configure({cid: exit_depth(self.model.exits, spec.profile.max_exit)
                                 for cid, spec in plan.clients.items()}, self.model.exits)
        self.rule = round_rule(self.strategy, self.scenario.deadline_s, strategy.clients_per_round,
                               strategy.over_selection)
        self.server_step = ServerStep(strategy.server_learning_rate, strategy.server_momentum)
        self.server_step.velocity = resumed.velocity if resumed is not None else {}
        self.dilation = dilation or fleet_dilation(self.scenario, list(plan.clients.values()))
        # a kernel CPU quota was sized for this factor: raising it would desynchronise the two
        self.fixed_dilation = fixed_dilation or self.scenario.emulation.dilation is not None or self.event_clock
        self.events.set_dilation(self.dilation.factor)
        self.preferred: dict[str, int] = {}  # task -> exit layer, for tasks whose preferred exit is "auto"
        evaluations = [e for e in previous if e["kind"] == "evaluated" and e["round"] < self.first_round]
        for event in evaluations:  # replayed in order: the exits the uninterrupted run would prefer now
            self._prefer_exits(event["accuracy"])
        # the last completed round, when its evaluation is due but was interrupted: run() evaluates it first
        self.unevaluated = (resumed.round if resumed is not None and all(e["round"] != resumed.round
                                                                        for e in evaluations) else None)
        carried = resumed.carried if resumed is not None else {}
        self.restored_dilation = carried.get("dilation")  # the factor the last completed round had reached
        self.fleet = Fleet.of(plan.clients)
        # the last completed round, when the interruption came before its CSV rows were written: run() writes them
        self.unrecorded = (_round_record(previous, resumed.round, resumed.digest)
                           if resumed is not None and resumed.round not in Records.rounds_in(self.run_dir) else None)
        self.records = Records(self.run_dir, accuracy_columns(sorted(plan.classes), self.model.exits))
        self.test_sets = self._test_sets()
        self.round: Round | None = None
        # event clock: when each client's last upload ended (run time); a straggler of the round before the
        # interruption starts the next one as late as it would have in the uninterrupted run
        self.busy_until: dict[str, float] = dict(carried.get("busy_until", {}))
        # event clock: each client's link as its environment has it, a stress test's injections included
        self.links = {cid: InjectedState(control_path(self.run_dir, cid), spec.link)
                      for cid, spec in plan.clients.items()}
        self.dropped = 0
        self.screen = UpdateScreen(_layer_group)  # non-finite values, wrong shapes, norms far beyond the fleet's
        # the reference norms accepted updates set so far: they decide what the screen accepts next
        self.screen.references = {group: dict(norms) for group, norms in carried.get("screen", {}).items()}
        if resumed is not None:
            self.events.emit(RunResumed(from_round=resumed.round, digest=resumed.digest))

    def _test_sets(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        from testbed.data.source import task_data

        sets = {}
        for task in sorted(self.plan.classes):
            data = task_data(self.scenario.data, task, self.scenario.seed)
            sets[task] = (torch.from_numpy(data.test_waveforms), torch.from_numpy(data.test_labels))
        return sets

    def _check_resumed_state(self, previous: list[dict]) -> Checkpoint | None:
        """Load this run's last checkpoint into the model (None: no round completed yet), or record why it is
        refused as the run's `run_failed` event and raise CheckpointRefused (nothing on disk is changed)."""
        try:
            checkpoint = load_checkpoint(self.run_dir, self.scenario, previous)
            if checkpoint is None:
                read_run_identity(self.run_dir)  # a resume from scratch still refuses a run.json it cannot read
                return None
            try:
                self.model.load(checkpoint.state)
            except (KeyError, ValueError) as error:
                raise CheckpointRefused(f"{checkpoint.source} does not fit the model ({error})") from None
            digest = self.model.digest()
            if digest != checkpoint.digest:
                raise CheckpointRefused(f"{checkpoint.source} holds global state {digest}, but {POINTER} and "
                                        f"events.jsonl say {checkpoint.digest} (the file was altered)")
            for key, velocity in checkpoint.velocity.items():
                if (key not in self.model.state or velocity.shape != self.model.state[key].shape
                        or not np.isfinite(velocity).all()):
                    raise CheckpointRefused(f"{checkpoint.source}: server velocity of {key!r} does not fit the model "
                                            "(allowed: finite, one per state key, of its shape)")
            return checkpoint
        except CheckpointRefused as refusal:
            log.error("%s", refusal)
            events = EventLog(self.run_dir / "events.jsonl", **_continuing(previous))
            events.emit(RunFailed(reason=str(refusal), dropped_messages=0))
            events.close()
            raise

    # ---------------------------------------------------------------- the run, one screen
    def run(self) -> int:
        self._install_signal_handlers()
        self.events.emit(RunStarted(
            scenario=self.scenario.name, rounds=self.scenario.rounds, pid=os.getpid(), first_round=self.first_round,
            address=self.router.address, max_message_bytes=self.router.max_bytes, dilation=self.dilation.to_event(),
            backend=self.scenario.emulation.backend, clock=self.scenario.emulation.clock, auth=self.credentials.mode,
            clients=[to_data(c) for c in self.plan.clients.values()], exits=list(self.model.exits)))
        try:
            index = self.first_round - 1
            ending = self.scenario.ending(index, self.rounds_s)  # a resumed run may be done already
            self._pick_up(index, ending)
            self._wait_for_clients()  # the fleet (or min_clients of it) is ready, or the join timeout passed
            trained = False  # did a round of this launch aggregate an update?
            while ending is None:
                index += 1
                summary, ending = self._play_round(index)
                trained = trained or summary["updates"] > 0
            # a run that trained nothing has not done its job, whatever ended it (earlier launches count)
            failure = None if trained else untrained(read_events(self.run_dir / "events.jsonl"))
            if failure is not None:
                log.error("%s", failure)
                self._finish(RunFailed, failure)
                return 1
            self._finish(RunFinished, ending)
            return 0
        except Interrupted:
            self._finish(RunInterrupted, "interrupted")
            return 130
        except Exception as error:  # say BYE and record why, then let the caller see the error
            self._finish(RunFailed, f"{type(error).__name__}: {error}")
            raise

    # ---------------------------------------------------------------- phases
    def _pick_up(self, index: int, ending: str | None) -> None:
        """A resumed run: the dilation it had reached, and the evaluation and CSV rows of its last completed
        round (`index`) when the interruption came before them."""
        if self.restored_dilation not in (None, self.events.dilation):
            self.events.emit(DilationChanged(
                factor=round(self.restored_dilation, 4), previous=round(self.events.dilation, 4),
                reason=f"restored: the factor the run had reached by round {self.first_round - 1}"))
            self.events.set_dilation(self.restored_dilation)
        if self.unevaluated is not None and (index % self.scenario.eval_every == 0 or ending):
            # before clients are waited for: its auto exits decide the next round
            evaluation = self._evaluate(index)
            if self.unrecorded is not None:
                self.unrecorded[0].update(evaluation)
        if self.unrecorded is not None:
            self.records.add(*self.unrecorded)
            self.unrecorded = None

    def _play_round(self, index: int) -> tuple[dict, str | None]:
        """Round `index` from announcement to records; (its summary, why the run ends after it or None)."""
        # 1. announce the round to every live client (a strategy may impose the depth)
        round_ = self.round = self._start_round(index)
        # 2. serve FETCH / PROGRESS / UPDATE until all answered or the deadline passed
        if self.event_clock:  # every selected client reports, then the round is replayed in emulated time
            self._serve_until(functools.partial(self._round_done, round_))
            self._replay_round(round_)
        else:
            self._serve_until(functools.partial(self._round_done, round_), round_.deadline_t)
        summary = {**round_.close(self.events.now()), "dilation": self.events.dilation}
        self.events.emit(RoundClosed(**summary, clients=[RoundClientRow(**row) for row in round_.client_rows()]))
        self.rounds_s += summary["wall_s"]
        ending = self.scenario.ending(index, self.rounds_s)
        self._check_dilation(round_)
        # 3. aggregate what arrived, layer by layer (strategy), then checkpoint
        started = time.perf_counter()
        updates = sorted(round_.updates, key=lambda u: u.client)  # arrival order must not matter
        self.model.load(self.server_step.apply(self.model.state, self.strategy.aggregate(self.model.state, updates)))
        summary.update(aggregate_s=round(time.perf_counter() - started, 4), digest=self.model.digest())
        with _interruption_held():  # the checkpoint and its event, whole: a resume needs both
            save_checkpoint(self.run_dir, index, self.model.state,
                            {"digest": summary["digest"], "seq": self.events.seq, "t": self.events.now()},
                            {"dilation": self.events.dilation, "screen": self.screen.references,
                             "busy_until": self.busy_until}, self.server_step.velocity)
            self.events.emit(RoundAggregated(round=index, digest=summary["digest"],
                                             aggregate_s=summary["aggregate_s"]))
        # 4. evaluate every eval_every rounds and at the end (timed apart from the round)
        if index % self.scenario.eval_every == 0 or ending:
            summary.update(self._evaluate(index))
        self.records.add(summary, round_.client_rows())
        return summary, ending

    def _wait_for_clients(self) -> None:
        needed = self.scenario.min_clients or len(self.fleet.records)  # later joiners join between rounds
        enough = lambda: sum(r.ready for r in self.fleet.records.values()) >= needed  # noqa: E731
        if self.event_clock:  # the run's time stands still until round 1: wait in host seconds
            self._serve_until(enough, wall_s=self.join_timeout_s)
        else:
            self._serve_until(enough, self.events.now() + self.join_timeout_s)
        if not self.fleet.active():
            joined = [cid for cid, r in self.fleet.records.items() if r.joined]
            raise UserError(f"no client became ready within {self.join_timeout_s:.0f} s ({len(joined)} joined; "
                            f"see each client's log in {self.run_dir / 'logs'})")

    def _start_round(self, index: int) -> Round:
        round_ = Round(index, self.events.now(), self.rule.deadline_s)
        full_depth = self.model.exits[-1]
        selection = np.random.default_rng([self.scenario.seed, index])  # per round: a resumed run draws alike
        for cid in self.rule.select(self.fleet.active(), selection):
            spec = self.fleet.records[cid].spec
            round_.rows[cid] = ClientRow(cid, spec.profile.name, spec.task)
            forced = self.strategy.client_depth(0, full_depth)  # 0 = the client's own choice
            body = {"deadline_s": self.scenario.deadline_s, "depth": forced, "dilation": self.events.dilation,
                    "preferred": self.preferred, "started_t": round_.started_t}
            self._send_to(cid, Message("ROUND", cid, index, body))
        self.events.emit(RoundStarted(round=index, selected=list(round_.rows), deadline_s=round_.deadline_s))
        return round_

    def _round_done(self, round_: Round) -> bool:
        if self.event_clock:  # done when no selected client is still to report: the replay decides the rest
            return all(cid in round_.arrivals or cid in round_.spent for cid in round_.waiting_for())
        arrived = [update.client for update in round_.updates]
        elapsed = self.events.now() - round_.started_t
        return not round_.waiting_for() or self.rule.complete(list(round_.rows), arrived, elapsed)

    def _replay_round(self, round_: Round) -> None:
        """Event clock: take the round's updates in emulated order (timeline.py), moving the run's time to each."""
        def take(update: Arrival) -> None:
            self.events.advance_to(update.t)
            pending = round_.arrivals[update.client]
            self._take_update(pending.message, pending.received, round_, round_.rows[update.client], update)

        def complete(elapsed_s: float) -> bool:
            return self.rule.complete(list(round_.rows), [u.client for u in round_.updates], elapsed_s)

        arrivals = [pending.arrival for pending in round_.arrivals.values()]
        replay = replay_round(round_.started_t, round_.deadline_s, arrivals, take, complete)
        for update in arrivals:  # a straggler is still uploading when the next round is announced
            self.busy_until[update.client] = update.t
        close_t = replay.close_t
        silent = [cid for cid in round_.spent if cid in round_.waiting_for()]  # alive, its upload dropped
        if silent and not replay.late and not complete(close_t - round_.started_t):
            # as under the real clock, the round waits for them until its deadline: they are stragglers
            close_t = max(close_t, round_.deadline_t) if round_.deadline_s is not None else close_t
        self.events.advance_to(close_t)

    def _serve_until(self, done, deadline_t: float = math.inf, wall_s: float = math.inf) -> None:
        """Serve messages until `done()`, the run's clock reaches `deadline_t`, or `wall_s` host seconds passed."""
        wall_deadline = time.monotonic() + wall_s
        while not done() and (left := min(deadline_t - self.events.now(), wall_deadline - time.monotonic())) > 0:
            received = self.router.poll(min(POLL_S, left))
            while received is not None:  # drain the queue first: heartbeats may have piled up
                self._handle(received)
                received = self.router.poll(0)
            self._on_connection_events()
            self.refusals.tick()
            for cid in self.fleet.newly_lost(time.monotonic()):
                self.events.emit(ClientLost(client=cid))
                if self.round is not None and cid in self.round.waiting_for():
                    self.round.rows[cid].status = ClientStatus.LOST

    def _check_dilation(self, round_: Round) -> None:
        """Raise an automatic dilation when a client of `round_` fell behind its compute target (CPU-starved)."""
        overshoots = [row.overshoot for row in round_.rows.values() if row.overshoot is not None]
        if self.fixed_dilation or not overshoots:
            return
        factor = raised(self.events.dilation, max(overshoots))
        if factor is not None:
            self.events.emit(DilationChanged(
                factor=round(factor, 4), previous=round(self.events.dilation, 4),
                reason=f"a client took {max(overshoots):.2f}x its compute target in round "
                       f"{round_.index}: the host could not give the fleet the CPU it asks for"))
            self.events.set_dilation(factor)

    def _evaluate(self, index: int) -> dict:
        accuracy, seconds = self.model.evaluate(self.test_sets)
        self.events.emit(Evaluated(round=index, accuracy=accuracy, eval_s=round(seconds, 3)))
        self._prefer_exits(accuracy)
        return _evaluation_columns(accuracy, round(seconds, 3))

    def _prefer_exits(self, accuracy: dict[str, dict[int, float]]) -> None:
        """`auto` preferred exits: per task, the shallowest exit within PREFER_WITHIN of the best one (geometry.py)."""
        for task, by_exit in accuracy.items():
            if self.scenario.exit_policy.preferred_exits.get(task) == "auto" and by_exit:
                self.preferred[task] = auto_exit({int(layer): value for layer, value in by_exit.items()})

    def _finish(self, ending: type[RunEnded], reason: str) -> None:
        # once finishing, a second Ctrl-C or the launcher's SIGTERM must not interrupt the goodbye
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for cid, record in self.fleet.records.items():
            if record.joined:  # a client that does not read its messages gets none: finishing must not block
                self._send_to(cid, Message("BYE", cid, 0, {"reason": reason}), wait=False)
        self.refusals.flush()  # the refusals still counted, before the last event
        self.events.emit(ending(reason=reason, dropped_messages=self.dropped))
        self.records.close()
        time.sleep(0.2)  # let BYE frames leave before the sockets close
        self.router.close()
        if self.publisher is not None:
            self.publisher.close()
        self.events.close()
        self.context.term()

    def _install_signal_handlers(self) -> None:
        def interrupt(signum, frame):
            raise Interrupted(signal.Signals(signum).name)

        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)

    # ---------------------------------------------------------------- messages
    def _send_to(self, client_id: str, message: Message, wait: bool = True) -> int:
        """Send on the client's bound main connection; 0 when none is (it never joined, or its connection closed)."""
        address = self.fleet.address(client_id)
        return self.router.send(address, message, wait) if address is not None else 0

    def _drop(self, received: Received, reason: str) -> None:
        """A message refused: counted, and told as a message_dropped event (in full, or counted: refusals.py)."""
        self.dropped += 1
        identity = identity_text(received.identity)
        self.refusals.refuse("message_dropped", reason, identity, identity=identity, **self._parties(received))

    def _refuse_join(self, received: Received, join: Message, reason: str) -> None:
        """A JOIN (`join`, the message `received`) that proves nothing: a join_refused event; a new connection is
        told why (so a misconfigured client stops at once), and is never welcomed."""
        identity = identity_text(received.identity)
        self.refusals.refuse("join_refused", reason, identity, identity=identity, **self._parties(received))
        if received.identity not in self.fleet.bound:
            claimed = join.client
            self.router.send(received.identity, Message("BYE", claimed, 0, {"reason": f"JOIN refused: {reason}"}),
                             wait=False)

    def _parties(self, received: Received) -> dict[str, str]:
        """Who a refused message came from (`client`: whom its connection proved to be) and whom it `claimed` to be."""
        parties = {}
        if received.identity in self.fleet.bound:
            parties["client"] = self.fleet.bound[received.identity][0]
        if received.message is not None:
            parties["claimed"] = received.message.client
        return parties

    def _handle(self, received: Received) -> None:
        if received.message is None:
            assert received.reason is not None  # a Received holds a message, or why it was rejected
            return self._drop(received, received.reason)
        message = received.message
        bound = self.fleet.bound.get(received.identity)  # (client id, channel) its JOIN proved, or None
        if bound is not None and message.client != bound[0]:
            reason = f"{message.type} claims {message.client!r}, but its connection joined as {bound[0]!r}"
            self._spent_upload(bound[0], message)
            return self._refuse_join(received, message, reason) if message.type == "JOIN" else self._drop(received, reason)
        if not self.fleet.known(message.client):
            if message.type == "JOIN" and bound is None:  # tell a misconfigured client, once per JOIN
                self.router.send(received.identity, Message("BYE", message.client, 0, {
                    "reason": f"JOIN refused: unknown client {message.client!r} (not in the fleet)"}), wait=False)
            return self._drop(received, f"unknown client {message.client!r} (not in the fleet)")
        if message.type == "JOIN":
            refusal = self._admit(message, received)
            if refusal is not None:
                return self._refuse_join(received, message, refusal)
        elif bound is None:
            return self._drop(received, f"{message.type} for {message.client!r} from a connection that has not joined "
                                        f"(or was replaced by a newer one)")
        record = self.fleet.records[message.client]
        if message.type != "JOIN" and not record.joined:
            return self._drop(received, f"{message.type} from {message.client} before it joined")
        if self.fleet.seen(message.client, time.monotonic()):
            self.events.emit(ClientRejoined(client=message.client))
            row = self.round.rows.get(message.client) if self.round is not None else None
            if row is not None and row.status == ClientStatus.LOST and row.depth == 0:
                row.status = ClientStatus.ASKED  # back before it fetched anything: it can still take part
        handler = getattr(self, f"_on_{message.type.lower()}", None)
        if handler is None:
            return self._drop(received, f"{message.type} is not a message clients send")
        reason = handler(message, received)
        if reason:
            self._spent_upload(message.client, message)
            self._drop(received, reason)

    def _spent_upload(self, client: str, dropped: Message) -> None:
        """Event clock: an UPDATE for the open round that `client`'s own connection sent and we drop (it claims
        another client, or comes without a FETCH) was the client's upload for the round: it sends no other. The
        round stops waiting for it, which under the real clock its deadline does (in both it is a straggler);
        else an event-clock round, which waits for every selected client, would wait for it forever."""
        if self.event_clock and dropped.type == "UPDATE" and self.round is not None \
                and dropped.round == self.round.index and client in self.round.waiting_for():
            self.round.spent.add(client)

    def _admit(self, message: Message, received: Received) -> str | None:
        """Bind the JOIN's connection to the client it names when the JOIN proves it (credentials.py); else why not.
        A newer connection of the same client and channel (a rebooted process) replaces the older one."""
        channel = message.body.get("channel", "main")
        if channel not in CHANNELS:
            return f"unknown channel (allowed: {', '.join(CHANNELS)})"
        refusal = self.credentials.refusal(message.client, message.body, received.user_id)
        if refusal is None:
            self.fleet.bind(received.identity, message.client, channel)
        return refusal

    def _on_connection_events(self) -> None:
        """Failed handshakes and closed connections as refusals (a connection closed after a BYE is no news)."""
        for event in self.router.connection_events():
            if event.kind == "handshake_failed":
                self.refusals.refuse("handshake_failed", event.reason, "handshake")
                continue
            binding = self.fleet.unbind(event.identity) if event.identity is not None else None
            if event.identity is not None and (binding is None or self.fleet.records[binding[0]].left):
                continue  # a connection that never joined (each of its messages was refused already), or after a BYE
            identity = identity_text(event.identity) if event.identity is not None else "?"
            parties = {"client": binding[0], "channel": binding[1]} if binding is not None else {}
            self.refusals.refuse("connection_closed", event.reason, identity, identity=identity, **parties)

    def _on_join(self, message: Message, received: Received) -> str | None:
        if message.body.get("channel", "main") != "main":
            return None  # its heartbeat connection, bound now: nothing to answer
        record = self.fleet.records[message.client]
        spec = record.spec
        run = {"scenario": scenario_to_dict(self.scenario), "client": to_data(spec),
               "shard": self.plan.shards[message.client], "seed": client_seed(self.scenario.seed, spec.client_id),
               "slot": list(self.plan.clients).index(message.client), "dilation": self.events.dilation,
               "loss": self.strategy.client_loss or self.scenario.training.loss, "costs": self._cost_table(spec.task)}
        self.router.send(received.identity, Message("WELCOME", message.client, 0, {"run": run}, self.model.frontend()))
        if record.joined and record.pid == message.body["pid"]:
            return None  # a repeated JOIN (sent before our WELCOME reached it): welcomed again, not news
        rebooted = record.joined  # a new process of a client that was here: what the old one was doing is gone
        record.joined, record.ready, record.pid = True, False, message.body["pid"]  # ready again once it says so
        record.left = False
        round_ = self.round
        row = round_.rows.get(message.client) if round_ is not None and rebooted else None
        if round_ is not None and row is not None and row.status in (ClientStatus.ASKED, ClientStatus.FETCHED) \
                and message.client not in round_.arrivals:
            row.status = ClientStatus.LOST  # it crashed this round: its ROUND went to the process that died
            self.events.emit(ClientLost(client=message.client))
        self.events.emit(ClientJoined(client=message.client, pid=record.pid, profile=spec.profile.name,
                                      task=spec.task, link=spec.link.name))
        return None

    def _cost_table(self, task: str) -> dict[str, float] | None:
        """`compute: modeled`: the run's CPU seconds per step by depth for `task` (client/costs.py), else None."""
        return self.cost_table[task] if self.cost_table is not None and self.scenario.emulation.compute == "modeled" \
            else None

    def _compute_fault(self, row: ClientRow, body: dict) -> str | None:
        """Event clock: why the compute time an update claims is less than its work can take, else None. Its
        arrival, hence its place among the round's updates, rests on that claim."""
        if self.cost_table is None:
            return None
        training, spec = self.scenario.training, self.fleet.records[row.client].spec
        step_s = self.cost_table[row.task][str(row.depth)] / demand_cores(spec.profile)  # one step, emulated s
        if self.scenario.emulation.compute == "modeled":  # billed exactly the table's figure per step
            floor, rule = training.local_steps * step_s * (1 - MODELED_ROUNDING), "what compute: modeled bills"
        else:  # its own CPU seconds: at least its samples' share of the table's steps, with a margin for noise
            steps = round_samples(training.local_steps, training.batch_size, len(self.plan.shards[row.client])) \
                / training.batch_size
            floor, rule = COMPUTE_FLOOR * steps * step_s, "half what the run's cost table says they take"
        claimed = body["timings"]["compute_s"]
        if claimed >= floor:
            return None
        return (f"timings: compute_s {claimed:.4g} s for {training.local_steps} steps to depth {row.depth} on "
                f"{spec.profile.name}, allowed >= {floor:.4g} s ({rule})")

    def _on_heartbeat(self, message: Message, received: Received) -> str | None:
        record = self.fleet.records[message.client]
        state = message.body["state"]
        if state not in HEARTBEAT_STATES:
            return f"HEARTBEAT state {capped(state, 40)!r} is unknown (allowed: {', '.join(HEARTBEAT_STATES)})"
        if isinstance(message.body.get("device"), dict):  # once, when ready: what it measured about itself
            record.ready = True
            self.events.emit(ClientReady(client=message.client, device=_bounded(message.body["device"])))
        if state != record.state:
            record.state = state
            self.events.emit(ClientState(client=message.client, state=record.state, round=message.round))
        return None

    def _on_progress(self, message: Message, received: Received) -> str | None:
        body = message.body  # only the declared fields: a client's body must not shape our events
        self.events.emit(ClientProgress(client=message.client, round=message.round, step=body["step"],
                                        steps=body["steps"], layer=body["layer"]))
        return None

    def _on_skip(self, message: Message, received: Received) -> str | None:
        row = self._row_of(message)
        if row is not None:
            row.status = ClientStatus.SKIPPED
            self.events.emit(ClientSkipped(client=message.client, round=message.round,
                                           reason=capped(message.body["reason"])))
        return None

    def _on_bye(self, message: Message, received: Received) -> str | None:
        record = self.fleet.records[message.client]
        record.lost = record.left = True
        self.events.emit(ClientLeft(client=message.client, reason=capped(message.body["reason"])))
        row = self._row_of(message)
        if row is not None and row.status in (ClientStatus.ASKED, ClientStatus.FETCHED):
            row.status = ClientStatus.LOST
        return None

    def _row_of(self, message: Message) -> ClientRow | None:
        if self.round is None or message.round != self.round.index:
            return None
        return self.round.rows.get(message.client)

    def _on_fetch(self, message: Message, received: Received) -> str | None:
        round_, row = self.round, self._row_of(message)
        if round_ is None or row is None or row.status != ClientStatus.ASKED:
            return f"FETCH from {message.client} for round {message.round} it was not asked to (or twice)"
        depth = message.body["depth"]
        if depth not in self.model.exits:
            return f"FETCH depth {depth} is not an exit (allowed: {list(self.model.exits)})"
        round_.fetch_bytes[message.client] = received.nbytes  # its uplink time, on the event clock
        tensors = self.model.tensors_for(depth, row.task)
        row.bytes_down = self.router.send(received.identity,
                                          Message("MODEL", message.client, message.round, {"depth": depth}, tensors))
        row.status, row.depth = ClientStatus.FETCHED, depth
        self.events.emit(ModelSent(client=message.client, round=message.round, depth=depth, bytes=row.bytes_down))
        return None

    def _on_update(self, message: Message, received: Received) -> str | None:
        round_, row = self.round, self._row_of(message)
        if round_ is None or row is None:  # (no round on: no row either)
            self.events.emit(LateUpdate(client=message.client, round=message.round))
            return f"UPDATE from {message.client} for round {message.round}, which is closed"
        if row.status != ClientStatus.FETCHED or message.client in round_.arrivals:
            return f"UPDATE from {message.client} for round {message.round} without a FETCH it was sent (or twice)"
        if self.event_clock:  # taken when the round is replayed, at the emulated time computed here
            round_.arrivals[message.client] = PendingUpdate(self._arrival(round_, row, message, received), message,
                                                            received)
            return None
        self._take_update(message, received, round_, row)
        return None

    def _arrival(self, round_: Round, row: ClientRow, message: Message, received: Received) -> Arrival:
        """When this update reaches us on the emulated timeline: its client's start, then its link's draws for
        the bytes that crossed (ours to compute), then the compute time it reports (checked when taken)."""
        seed = client_seed(self.scenario.seed, row.client)
        download_s, upload_s = link_phases(self._link_of(row.client), seed, message.round,
                                           round_.fetch_bytes.get(row.client, 0), row.bytes_down, received.nbytes)
        compute_s = message.body["timings"].get("compute_s") if isinstance(message.body["timings"], dict) else None
        if not (isinstance(compute_s, (int, float)) and math.isfinite(compute_s) and compute_s >= 0):
            compute_s = 0.0  # a bad claim: the update is rejected when taken, at this time
        start_t = max(round_.started_t, self.busy_until.get(row.client, -math.inf))
        return arrival(row.client, start_t, download_s, float(compute_s), upload_s)

    def _link_of(self, client: str) -> LinkSpec:
        """Event clock: the link the client's transfers of this round crossed: its profile's, or the one a stress
        test injected into its environment (the control file the testbed writes, never the client: a claim of
        the client's own could buy it an early arrival). Read when its UPDATE is in, so that a link changed
        before the round's replay, e.g. as the round started, holds for the whole round: on the emulated
        timeline every transfer of the round comes after its start."""
        state = self.links[client]
        state.changed()  # one stat call; an invalid file keeps the link before it (logged)
        return state.link

    def _take_update(self, message: Message, received: Received, round_: Round, row: ClientRow,
                     emulated: Arrival | None = None) -> None:
        """Check one UPDATE, then record it as rejected, discarded or received (at the run's time now).
        `emulated`: its arrival on the event clock's timeline, whose link phases replace the client's own."""
        # Every check comes before anything is recorded: an update refused here must not shape the screen's
        # reference nor the round; each refusal is an update_rejected event and the row's status.
        training = self.scenario.training
        most_samples = round_samples(training.local_steps, training.batch_size, len(self.plan.shards[row.client]))
        reason = bookkeeping_fault(message.body, row.depth, most_samples)
        if reason is None and emulated is not None:
            reason = self._compute_fault(row, message.body)
        if reason is None:
            try:
                check_tensors(message, self.model.expected(row.depth, row.task))
            except MessageRejected as error:
                reason = f"tensors: {str(error).removeprefix('UPDATE: ')}"
        screening = self.screen.screen(message.tensors, self.model.state) if reason is None else None  # as fetched
        if screening is not None:  # (reason is None)
            reason = screening.reason
        if reason is not None:
            self.screen.refuse(reason)
            row.status, row.bytes_up = ClientStatus.REJECTED, received.nbytes
            self.events.emit(UpdateRejected(client=message.client, round=message.round, depth=row.depth,
                                            check=check_of(reason), reason=reason))
            log.warning("rejected the update of %s in round %d: %s", message.client, message.round, reason)
            return  # handled here: not also counted as a dropped message
        assert screening is not None  # no fault found: the screen ran, and passed it
        if not self.rule.accept(len(round_.updates), self.events.now() - round_.started_t):
            row.status, row.bytes_up = ClientStatus.DISCARDED, received.nbytes
            self.events.emit(UpdateDiscarded(client=message.client, round=message.round,
                                             reason="the round already has the updates it needs"))
            return  # not admitted to the screen either: only updates that count shape its reference
        body = message.body
        if emulated is not None:  # the client's start lag and our link draws: accept_update derives the upload
            lead_s = emulated.start_t - round_.started_t + emulated.download_s + emulated.compute_s
            body = {**body, "timings": {**body["timings"], "download_s": emulated.download_s, "elapsed_s": lead_s}}
        update_received = round_.accept_update(row, body, message.tensors, received.nbytes, self.events.now())
        self.screen.admit(message.client, screening.norms)
        self.events.emit(update_received)


def _continuing(previous: list[dict]) -> dict:
    """EventLog arguments that continue a resumed run's events: the next seq, and its clock where it stopped."""
    return {"start_seq": previous[-1]["seq"] + 1 if previous else 0,
            "clock_offset": previous[-1]["t"] if previous else 0.0}


def _evaluation_columns(accuracy: dict[str, dict], eval_s: float | None) -> dict:
    """An evaluation as rounds.csv columns: its host seconds and an `acc_TASK_LLAYER` column per exit."""
    return {"eval_s": eval_s, **{f"acc_{task}_L{layer}": value for task, by_exit in accuracy.items()
                                 for layer, value in by_exit.items()}}


def _round_record(previous: list[dict], index: int, digest: str) -> tuple[dict, list[dict]] | None:
    """Round `index`'s rounds.csv row and clients.csv rows, rebuilt from its events (None: its round_closed is
    missing). Its evaluation, if the events hold it, is in the row; a resume adds one it runs afresh."""
    closed = next((e for e in previous if e["kind"] == "round_closed" and e["round"] == index), None)
    if closed is None:
        return None
    row = {k: v for k, v in closed.items() if k not in ("kind", "seq", "t", "clients")}
    aggregated = next((e for e in previous if e["kind"] == "round_aggregated" and e["round"] == index), {})
    row.update(digest=digest, aggregate_s=aggregated.get("aggregate_s"))
    evaluated = next((e for e in previous if e["kind"] == "evaluated" and e["round"] == index), None)
    if evaluated is not None:
        row.update(_evaluation_columns(evaluated["accuracy"], evaluated.get("eval_s")))
    return row, list(closed.get("clients", []))


def _bounded(device: dict) -> dict:
    """A client's device description as its client_ready event carries it: JSON-safe and at most MAX_DEVICE_CHARS."""
    try:
        size = len(json.dumps(device, allow_nan=False))
    except (TypeError, ValueError) as error:  # not JSON-safe (NaN, bytes)
        return {"invalid": capped(str(error))}
    if size > MAX_DEVICE_CHARS:
        return {"invalid": f"a description of {size} JSON characters (at most {MAX_DEVICE_CHARS})"}
    return device


def _layer_group(key: str) -> str:
    """The unit whose update norm is compared across the fleet: "embed 0", "layer 3", "head keyword 4"."""
    group = group_of(key)
    return f"head {group.task} {group.depth}" if group.kind == "head" else f"{group.kind} {group.depth}"
