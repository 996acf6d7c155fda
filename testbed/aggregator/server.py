"""The aggregator process: waits for its fleet, then runs rounds until done, a signal, or a crash."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
import zmq

from testbed.aggregator.checkpoint import load_checkpoint, save_checkpoint
from testbed.aggregator.fleet import Fleet
from testbed.aggregator.global_model import GlobalModel
from testbed.aggregator.plan import RunPlan, client_seed
from testbed.aggregator.records import Records, accuracy_columns
from testbed.aggregator.rounds import ClientRow, Round
from testbed.aggregator.sanity import UpdateScreen, check_of
from testbed.config.convert import to_data
from testbed.config.loader import scenario_to_dict
from testbed.emulation.dilation import fleet_dilation, raised
from testbed.errors import UserError
from testbed.events import EventLog, read_events
from testbed.model.early_exit import exit_depth
from testbed.model.state import group_of
from testbed.strategies import make_strategy
from testbed.strategies.selection import round_rule
from testbed.transport.endpoint import Received, Router
from testbed.transport.messages import Message, Rejected, check_tensors

log = logging.getLogger("testbed.aggregator")
POLL_S = 0.2  # seconds: how often the serve loop checks liveness and deadlines
PREFER_WITHIN = 0.01  # accuracy: an exit this close to the best is as good, and cheaper


class Interrupted(Exception):
    """SIGINT/SIGTERM: stop after saying BYE; the last checkpoint stays valid."""


class Aggregator:
    def __init__(self, plan: RunPlan, run_dir: Path, *, bind: str, publish: str | None = None,
                 curve_dir: Path | None = None, resume: bool = False, join_timeout_s: float = 120.0,
                 fixed_dilation: bool = False):
        self.plan, self.scenario, self.run_dir = plan, plan.scenario, Path(run_dir)
        self.join_timeout_s = join_timeout_s
        self.model = GlobalModel(self.scenario, plan.classes)
        self.first_round = 1
        checkpoint = load_checkpoint(self.run_dir) if resume else None
        previous = read_events(self.run_dir / "events.jsonl") if resume else []
        if checkpoint is not None:
            meta, state = checkpoint
            self.model.load(state)
            self.first_round = meta["round"] + 1
        # emulated seconds of the rounds so far, evaluation excluded (what time_budget_s limits)
        self.rounds_s = sum(e["wall_s"] for e in previous
                            if e["kind"] == "round_closed" and e["round"] < self.first_round)
        self.context = zmq.Context()
        state_bytes = sum(v.nbytes for v in self.model.state.values())
        self.router = Router(self.context, bind, max_bytes=int(1.1 * state_bytes) + (1 << 20), curve_dir=curve_dir)
        self.publisher = self.context.socket(zmq.PUB) if publish else None
        if self.publisher is not None:
            self.publisher.bind(publish)
        self.events = EventLog(self.run_dir / "events.jsonl", self.publisher,
                               start_seq=previous[-1]["seq"] + 1 if previous else 0,
                               clock_offset=previous[-1]["t"] if previous else 0.0)
        strategy = self.scenario.strategy
        self.strategy = make_strategy(strategy.name, strategy.weighting)
        self.strategy.configure({cid: exit_depth(self.model.exits, spec.profile.max_exit)
                                 for cid, spec in plan.clients.items()}, self.model.exits)
        self.rule = round_rule(self.strategy, self.scenario.deadline_s, strategy.clients_per_round,
                               strategy.over_selection)
        self.dilation = fleet_dilation(self.scenario, list(plan.clients.values()))
        # a kernel CPU quota was sized for this factor: raising it would desynchronise the two
        self.fixed_dilation = fixed_dilation or self.scenario.emulation.dilation is not None
        self.events.set_dilation(self.dilation.factor)
        self.preferred: dict[str, int] = {}  # task -> exit layer, for tasks whose preferred exit is "auto"
        self.fleet = Fleet.of(plan.clients)
        self.records = Records(self.run_dir, accuracy_columns(sorted(plan.classes), self.model.exits))
        self.test_sets = self._test_sets()
        self.round: Round | None = None
        self.dropped = 0
        self.screen = UpdateScreen(_layer_group)  # non-finite values, wrong shapes, norms far beyond the fleet's
        if checkpoint is not None:
            self._check_resumed_state(meta)

    def _test_sets(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        from testbed.data.source import task_data

        sets = {}
        for task in sorted(self.plan.classes):
            data = task_data(self.scenario.data, task, self.scenario.seed)
            sets[task] = (torch.from_numpy(data.test_waveforms), torch.from_numpy(data.test_labels))
        return sets

    def _check_resumed_state(self, meta: dict) -> None:
        digest = self.model.digest()
        if digest != meta["digest"]:
            raise RuntimeError(f"checkpoint of round {meta['round']} is corrupt: digest {digest} != {meta['digest']}")
        self.events.emit("run_resumed", from_round=meta["round"], digest=digest)

    # ---------------------------------------------------------------- the run, one screen
    def run(self) -> int:
        self._install_signal_handlers()
        self.events.emit("run_started", scenario=self.scenario.name, rounds=self.scenario.rounds, pid=os.getpid(),
                         first_round=self.first_round, address=self.router.address,
                         max_message_bytes=self.router.max_bytes, dilation=self.dilation.to_event(),
                         backend=self.scenario.emulation.backend,
                         clients=[to_data(c) for c in self.plan.clients.values()], exits=list(self.model.exits))
        try:
            self._wait_for_clients()  # the fleet (or min_clients of it) is ready, or the join timeout passed
            index = self.first_round - 1
            ending = self.scenario.ending(index, self.rounds_s)  # a resumed run may be done already
            while ending is None:
                index += 1
                # 1. announce the round to every live client (a strategy may impose the depth)
                self.round = self._start_round(index)
                # 2. serve FETCH / PROGRESS / UPDATE until all answered or the deadline passed
                self._serve_until(self._round_done, self.round.deadline_t)
                summary = {**self.round.close(self.events.now()), "dilation": self.events.dilation}
                self.events.emit("round_closed", **summary, clients=self.round.client_rows())
                self.rounds_s += summary["wall_s"]
                ending = self.scenario.ending(index, self.rounds_s)
                self._check_dilation()
                # 3. aggregate what arrived, layer by layer (strategy), then checkpoint
                started = time.perf_counter()
                updates = sorted(self.round.updates, key=lambda u: u.client)  # arrival order must not matter
                self.model.load(self.strategy.aggregate(self.model.state, updates))
                summary.update(aggregate_s=round(time.perf_counter() - started, 4), digest=self.model.digest())
                save_checkpoint(self.run_dir, index, self.model.state,
                                {"digest": summary["digest"], "seq": self.events.seq, "t": self.events.now()})
                self.events.emit("round_aggregated", round=index, digest=summary["digest"],
                                 aggregate_s=summary["aggregate_s"])
                # 4. evaluate every eval_every rounds and at the end (timed apart from the round)
                if index % self.scenario.eval_every == 0 or ending:
                    summary.update(self._evaluate(index))
                self.records.add(summary, self.round.client_rows())
            self._finish("run_finished", ending)
            return 0
        except Interrupted:
            self._finish("run_interrupted", "interrupted")
            return 130
        except Exception as error:  # say BYE and record why, then let the caller see the error
            self._finish("run_failed", f"{type(error).__name__}: {error}")
            raise

    # ---------------------------------------------------------------- phases
    def _wait_for_clients(self) -> None:
        needed = self.scenario.min_clients or len(self.fleet.records)  # later joiners join between rounds
        enough = lambda: sum(r.ready for r in self.fleet.records.values()) >= needed  # noqa: E731
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
                    "preferred": self.preferred}
            self.router.send(cid.encode(), Message("ROUND", cid, index, body))
        self.events.emit("round_started", round=index, selected=list(round_.rows), deadline_s=round_.deadline_s)
        return round_

    def _round_done(self) -> bool:
        round_ = self.round
        arrived = [update.client for update in round_.updates]
        elapsed = self.events.now() - round_.started_t
        return not round_.waiting_for() or self.rule.complete(list(round_.rows), arrived, elapsed)

    def _serve_until(self, done, deadline_t: float) -> None:
        while not done() and (left := deadline_t - self.events.now()) > 0:
            received = self.router.poll(min(POLL_S, left))
            while received is not None:  # drain the queue first: heartbeats may have piled up
                self._handle(received)
                received = self.router.poll(0)
            for cid in self.fleet.newly_lost(time.monotonic()):
                self.events.emit("client_lost", client=cid)
                if self.round is not None and cid in self.round.waiting_for():
                    self.round.rows[cid].status = "lost"

    def _check_dilation(self) -> None:
        """Raise an automatic dilation when a client fell behind its compute target (CPU-starved)."""
        overshoots = [row.overshoot for row in self.round.rows.values() if row.overshoot is not None]
        if self.fixed_dilation or not overshoots:
            return
        factor = raised(self.events.dilation, max(overshoots))
        if factor is not None:
            self.events.emit("dilation_changed", factor=round(factor, 4), previous=round(self.events.dilation, 4),
                             reason=f"a client took {max(overshoots):.2f}x its compute target in round "
                                    f"{self.round.index}: the host could not give the fleet the CPU it asks for")
            self.events.set_dilation(factor)

    def _evaluate(self, index: int) -> dict:
        accuracy, seconds = self.model.evaluate(self.test_sets)
        self.events.emit("evaluated", round=index, accuracy=accuracy, eval_s=round(seconds, 3))
        self._prefer_exits(accuracy)
        columns = {f"acc_{task}_L{layer}": value for task, by_exit in accuracy.items()
                   for layer, value in by_exit.items()}
        return {"eval_s": round(seconds, 3), **columns}

    def _prefer_exits(self, accuracy: dict[str, dict[int, float]]) -> None:
        """`auto` preferred exits: per task, the shallowest exit within PREFER_WITHIN of the best one."""
        for task, by_exit in accuracy.items():
            if self.scenario.exit_policy.preferred_exits.get(task) == "auto" and by_exit:
                best = max(by_exit.values())
                self.preferred[task] = min(int(layer) for layer, value in by_exit.items()
                                           if value >= best - PREFER_WITHIN)

    def _finish(self, kind: str, reason: str) -> None:
        # once finishing, a second Ctrl-C or the launcher's SIGTERM must not interrupt the goodbye
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for cid, record in self.fleet.records.items():
            if record.joined:
                self.router.send(cid.encode(), Message("BYE", cid, 0, {"reason": reason}))
        self.events.emit(kind, reason=reason, dropped_messages=self.dropped)
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
    def _drop(self, received: Received, reason: str) -> None:
        self.dropped += 1
        identity = received.identity.decode("utf-8", "replace")[:64]
        self.events.emit("message_dropped", identity=identity, reason=reason)
        log.warning("dropped a message from %r: %s", identity, reason)

    def _handle(self, received: Received) -> None:
        if received.message is None:
            return self._drop(received, received.reason)
        message = received.message
        if not self.fleet.known(message.client):
            return self._drop(received, f"unknown client {message.client!r} (not in the fleet)")
        record = self.fleet.records[message.client]
        if message.type != "JOIN" and not record.joined:
            return self._drop(received, f"{message.type} from {message.client} before it joined")
        if self.fleet.seen(message.client, time.monotonic()):
            self.events.emit("client_rejoined", client=message.client)
            row = self.round.rows.get(message.client) if self.round is not None else None
            if row is not None and row.status == "lost" and row.depth == 0:
                row.status = "asked"  # back before it fetched anything: it can still take part
        handler = getattr(self, f"_on_{message.type.lower()}", None)
        if handler is None:
            return self._drop(received, f"{message.type} is not a message clients send")
        reason = handler(message, received)
        if reason:
            self._drop(received, reason)

    def _on_join(self, message: Message, received: Received) -> str | None:
        record = self.fleet.records[message.client]
        spec = record.spec
        run = {"scenario": scenario_to_dict(self.scenario), "client": to_data(spec),
               "shard": self.plan.shards[message.client], "seed": client_seed(self.scenario.seed, spec.client_id),
               "slot": list(self.plan.clients).index(message.client), "dilation": self.events.dilation,
               "loss": self.strategy.client_loss or self.scenario.training.loss}
        self.router.send(received.identity, Message("WELCOME", message.client, 0, {"run": run}, self.model.frontend()))
        if record.joined and record.pid == message.body["pid"]:
            return None  # a repeated JOIN (sent before our WELCOME reached it): welcomed again, not news
        record.joined, record.ready, record.pid = True, False, message.body["pid"]  # ready again once it says so
        self.events.emit("client_joined", client=message.client, pid=record.pid, profile=spec.profile.name,
                         task=spec.task, link=spec.link.name)

    def _on_heartbeat(self, message: Message, received: Received) -> str | None:
        record = self.fleet.records[message.client]
        if isinstance(message.body.get("device"), dict):  # once, when ready: what it measured about itself
            record.ready = True
            try:
                self.events.emit("client_ready", client=message.client, device=message.body["device"])
            except (TypeError, ValueError) as error:  # not JSON-safe (NaN, bytes): still ready, no details
                self.events.emit("client_ready", client=message.client, device={"invalid": str(error)[:200]})
        if message.body["state"] != record.state:
            record.state = message.body["state"]
            self.events.emit("client_state", client=message.client, state=record.state, round=message.round)

    def _on_progress(self, message: Message, received: Received) -> str | None:
        body = message.body  # only the declared fields: a client's body must not shape our events
        self.events.emit("client_progress", client=message.client, round=message.round, step=body["step"],
                         steps=body["steps"], layer=body["layer"])

    def _on_skip(self, message: Message, received: Received) -> str | None:
        row = self._row_of(message)
        if row is not None:
            row.status = "skipped"
            self.events.emit("client_skipped", client=message.client, round=message.round,
                             reason=message.body["reason"][:200])

    def _on_bye(self, message: Message, received: Received) -> str | None:
        self.fleet.records[message.client].lost = True
        self.events.emit("client_left", client=message.client, reason=message.body["reason"])
        row = self._row_of(message)
        if row is not None and row.status in ("asked", "fetched"):
            row.status = "lost"

    def _row_of(self, message: Message) -> ClientRow | None:
        if self.round is None or message.round != self.round.index:
            return None
        return self.round.rows.get(message.client)

    def _on_fetch(self, message: Message, received: Received) -> str | None:
        row = self._row_of(message)
        if row is None or row.status != "asked":
            return f"FETCH from {message.client} for round {message.round} it was not asked to (or twice)"
        depth = message.body["depth"]
        if depth not in self.model.exits:
            return f"FETCH depth {depth} is not an exit (allowed: {list(self.model.exits)})"
        tensors = self.model.tensors_for(depth, row.task)
        row.bytes_down = self.router.send(received.identity,
                                          Message("MODEL", message.client, message.round, {"depth": depth}, tensors))
        row.status, row.depth = "fetched", depth
        self.events.emit("model_sent", client=message.client, round=message.round, depth=depth, bytes=row.bytes_down)

    def _on_update(self, message: Message, received: Received) -> str | None:
        row = self._row_of(message)
        if row is None:
            self.events.emit("late_update", client=message.client, round=message.round)
            return f"UPDATE from {message.client} for round {message.round}, which is closed"
        if row.status != "fetched" or message.body["depth"] != row.depth:
            return f"UPDATE from {message.client} does not match its FETCH (depth {row.depth})"
        try:
            check_tensors(message, self.model.expected(row.depth, row.task))
        except Rejected as error:
            return str(error)
        reason = self.screen.screen(message.tensors, self.model.state)  # the state the client fetched
        if reason is not None:
            row.status, row.bytes_up = "rejected", received.nbytes
            self.events.emit("update_rejected", client=message.client, round=message.round, depth=row.depth,
                             check=check_of(reason), reason=reason)
            log.warning("rejected the update of %s in round %d: %s", message.client, message.round, reason)
            return None  # handled here: not also counted as a dropped message
        if not self.rule.accept(len(self.round.updates), self.events.now() - self.round.started_t):
            row.status, row.bytes_up = "discarded", received.nbytes
            self.events.emit("update_discarded", client=message.client, round=message.round,
                             reason="the round already has the updates it needs")
            return None
        reason = self.round.accept_update(row, message.body, message.tensors, received.nbytes, self.events.now())
        if reason is None:
            self.events.emit("update_received", client=message.client, round=message.round, depth=row.depth,
                             bytes=received.nbytes, samples=row.samples, loss=round(row.loss, 4),
                             download_s=round(row.download_s, 4), compute_s=round(row.compute_s, 4),
                             upload_s=round(row.upload_s, 4), peak_mb=row.peak_mb, cpu_s=row.cpu_s,
                             overshoot=row.overshoot)
        return reason


def _layer_group(key: str) -> str:
    """The unit whose update norm is compared across the fleet: "embed 0", "layer 3", "head keyword 4"."""
    group = group_of(key)
    return f"head {group.task} {group.depth}" if group.kind == "head" else f"{group.kind} {group.depth}"


def write_summary(run_dir: Path) -> dict:
    """summary.json from events.jsonl alone (works for crashed or interrupted runs too)."""
    from testbed.aggregator.summary import summarize

    summary = summarize(read_events(run_dir / "events.jsonl"))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
