"""The run as the dashboard and the report see it: events folded, one at a time, into a view model.

Two clocks, never mixed: EMULATED seconds (the event clock `t`, a round's seconds, deadlines, client
phases: host wall seconds / the run's dilation) and HOST seconds (evaluation, aggregation, the run's
wall time, measured on this host). Accuracy is placed on the rounds' emulated seconds (on host
seconds for the centralized baseline, whose clock runs undilated: `RunView.clock`).

Only events feed it (events.jsonl or the PUB socket). Each event is checked against its kind's
declaration (testbed/event_kinds.py) before it is folded in: one that does not fit (a field of the
wrong type, a field every version writes missing) is dropped with a logged reason; fields declared
lenient or optional may be missing (older files), and an event of a kind this version does not know
is counted and otherwise ignored. So the aggregator can gain fields and kinds without breaking a
dashboard or a report, while a fault in a handler here is an error, not a dropped event.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field

from testbed.event_kinds import FINISHED, KINDS, ClientStatus
from testbed.event_kinds import problems as event_problems
from testbed.events import ENDINGS

log = logging.getLogger("testbed.monitor")

# a client's steps through a round, in order: a late heartbeat never moves it backwards
ROUND_STEPS = {"asked": 0, "downloading": 1, "training": 2, "uploading": 3, "updated": 4}
TIMINGS = ("download_s", "compute_s", "upload_s", "idle_s")
RECENT_EVENTS = 200  # how many recent events (progress excepted) the view keeps for a log panel


def number(value) -> float | None:
    """`value` if it is a real number (bool excluded), else None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class Segment:
    phase: str  # download | compute | upload | idle
    start_s: float  # emulated seconds since the round started
    end_s: float


@dataclass
class ClientRound:
    """One client in one round, as far as the events tell."""

    # asked, downloading, training, uploading, updated; discarded, rejected, skipped, lost, left, straggler
    status: str = "asked"
    depth: int | None = None  # layer number of the exit it trains to
    step: int = 0  # local optimiser steps done
    steps: int | None = None  # local optimiser steps planned
    training_t: float | None = None  # event clock (emulated s) of its first progress step
    uploading_t: float | None = None  # event clock (emulated s) it said it was uploading
    ended_t: float | None = None  # event clock (emulated s) its update arrived, or it skipped, left or was lost
    timings: dict[str, float] = field(default_factory=dict)  # TIMINGS, emulated s, from its update and round row
    row: dict = field(default_factory=dict)  # its row in round_closed (status, bytes, peak_mb, loss, ...)


@dataclass
class RoundView:
    index: int
    started_t: float  # event clock, emulated s
    deadline_s: float | None  # emulated s
    clients: dict[str, ClientRound] = field(default_factory=dict)
    closed: dict | None = None  # the round_closed event, its per-client rows folded into `clients`
    aggregated_t: float | None = None

    def out(self) -> list[str]:
        """Clients the round still waits for (none once it is closed)."""
        if self.closed is not None:
            return []
        return [cid for cid, part in self.clients.items() if part.status not in FINISHED]

    def emulated_s(self, now_t: float) -> float:
        """Emulated seconds the round took (closed) or has taken so far (open).

        round_closed carries them as `wall_s`: the event clock's seconds, which are emulated seconds."""
        closed = number((self.closed or {}).get("wall_s"))
        return closed if closed is not None else max(0.0, now_t - self.started_t)

    def segments(self, client: str, now_t: float) -> list[Segment]:
        """A client's phases in this round, in seconds since the round started.

        An update carries exact download / compute / upload seconds; before it arrives (or when it
        never does: stragglers, lost clients) the phases come from when progress and states were seen.
        """
        part = self.clients.get(client)
        if part is None or part.status == "skipped":
            return []
        end = self.emulated_s(now_t)
        download, compute, upload = (part.timings.get(k) for k in TIMINGS[:3])
        if part.status == "updated" and download is not None and compute is not None and upload is not None:
            finish = download + compute + upload
            return [Segment("download", 0.0, download), Segment("compute", download, download + compute),
                    Segment("upload", download + compute, finish), Segment("idle", finish, max(finish, end))]
        stop = end if part.ended_t is None else min(end, max(0.0, part.ended_t - self.started_t))
        training = None if part.training_t is None else max(0.0, part.training_t - self.started_t)
        uploading = None if part.uploading_t is None else max(0.0, part.uploading_t - self.started_t)
        segments = [Segment("download", 0.0, min(stop, training if training is not None else stop))]
        if training is not None and training < stop:
            segments.append(Segment("compute", training, min(stop, uploading if uploading is not None else stop)))
        if uploading is not None and uploading < stop:
            segments.append(Segment("upload", uploading, stop))
        return segments


@dataclass
class ClientView:
    client: str
    profile: str = "?"
    task: str = "?"
    link: str = "?"
    state: str = "expected"  # last known: joined, asked, downloading, training, uploading, updated, idle, lost, ...
    state_t: float = 0.0  # event clock (emulated s) of that state
    last: ClientRound | None = None  # its part in the last closed round it was asked to


@dataclass
class Evaluation:
    round: int
    trained_s: float  # seconds of the rounds up to and including its own, on the run's clock (RunView.clock)
    accuracy: dict[str, dict[int, float]]  # task -> exit layer -> accuracy in [0, 1]
    host_s: float = 0.0  # host seconds the evaluation took


@dataclass
class RunView:
    scenario: str | None = None
    rounds_planned: int | None = None
    exits: list[int] = field(default_factory=list)  # layer numbers followed by a head
    status: str = "waiting"  # waiting (no run_started yet), running, finished, interrupted, failed
    clock: str = "emulated"  # what the event clock counts: "emulated" s, or "host" s (the centralized baseline)
    reason: str | None = None
    dilation: dict | None = None  # {"factor": float, "reason": str} when the run stretches time
    dilations: list[tuple[float, float]] = field(default_factory=list)  # (event clock, factor) of every change
    backend: str | None = None  # emulation backend, when the run names it
    # emulation.clock: events: emulated time jumps from event to event, so nothing runs between events
    event_clock: bool = False
    clients: dict[str, ClientView] = field(default_factory=dict)
    rounds: dict[int, RoundView] = field(default_factory=dict)  # a resumed run's repeated round replaces the first
    current: int | None = None  # the latest round started
    aggregated: set[int] = field(default_factory=set)  # rounds aggregated (the centralized baseline: no round view)
    evaluations: dict[int, Evaluation] = field(default_factory=dict)
    eval_host_s: float = 0.0  # host seconds spent evaluating so far
    aggregate_host_s: float = 0.0  # host seconds spent aggregating so far
    eval_clock_s: float = 0.0  # what evaluating advanced the event clock by: host seconds / dilation, emulated s
    t: float = 0.0  # the event clock at the latest event: emulated seconds since the run started
    wall: float | None = None  # Unix time of the latest event
    launch_walls: list[list[float]] = field(default_factory=list)  # [first, last] Unix time of each launch
    events: int = 0  # events folded in
    dropped_messages: int = 0
    lost_events: int = 0
    unknown_kinds: Counter = field(default_factory=Counter)
    malformed: int = 0  # events dropped because a field had the wrong shape
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))

    # ------------------------------------------------------------ folding
    def apply(self, event: dict) -> None:
        """Fold one event in; unknown kinds are counted, events that do not fit their declaration are dropped and
        logged."""
        problems = event_problems(event)
        if problems:
            self.malformed += 1
            log.warning("dropped a malformed event (%s): %.200r", "; ".join(problems), event)
            return
        kind = event["kind"]
        self.events += 1
        t, wall = number(event.get("t")), number(event.get("wall"))
        if t is not None:
            self.t, self.wall = t, wall
        if wall is not None:
            if kind == "run_started" or not self.launch_walls:  # a resumed run's pause between launches is no run time
                self.launch_walls.append([wall, wall])
            self.launch_walls[-1][1] = wall
        if kind not in KINDS:
            self.unknown_kinds[kind] += 1
        elif kind not in IGNORED:
            getattr(self, f"_on_{kind}")(event, self.t)
        if kind != "client_progress":
            self.recent.append(event)

    @property
    def ended(self) -> bool:
        return self.status in ENDINGS.values()

    @property
    def host_s(self) -> float:
        """Host wall seconds of the run: from its first to its last event, summed over its launches."""
        return sum(last - first for first, last in self.launch_walls)

    def trained_s(self, upto: int | None = None) -> float:
        """Seconds of training on the run's clock (up to round `upto`): the rounds' emulated seconds; for a run
        without round_closed events (the centralized baseline), its event clock less what evaluating advanced it."""
        if any(r.closed is not None for r in self.rounds.values()):
            return self.rounds_emulated_s(upto)
        return max(0.0, self.t - self.eval_clock_s)

    def rounds_emulated_s(self, upto: int | None = None) -> float:
        """Emulated seconds of the closed rounds (up to round `upto`): evaluation, aggregation and the wait for
        clients excluded, as time_budget_s counts them (a resumed run's repeated round counts once)."""
        return sum(r.emulated_s(self.t) for i, r in self.rounds.items()
                   if r.closed is not None and (upto is None or i <= upto))

    def run_seconds_at(self, unix_time: float) -> float:
        """The event clock (emulated s) at `unix_time`, extrapolated from the latest event (a dilated clock runs
        slower)."""
        if self.wall is None or self.ended or self.event_clock:
            return self.t
        factor = (self.dilation or {}).get("factor") or 1.0
        return self.t + max(0.0, unix_time - self.wall) / factor

    def speedup(self) -> float | None:
        """Emulated seconds per host second so far (> 1: faster than the devices would be); None before any."""
        return self.t / self.host_s if self.host_s > 0 and self.clock == "emulated" else None

    def round_view(self) -> RoundView | None:
        return self.rounds.get(self.current) if self.current is not None else None

    def _client(self, cid) -> ClientView:
        if not isinstance(cid, str):
            raise TypeError(f"client id {cid!r} is not a string")
        if cid not in self.clients:
            self.clients[cid] = ClientView(cid)
        return self.clients[cid]

    def _part(self, event: dict) -> tuple[ClientView, ClientRound | None]:
        """The client of an event and its part in the event's round (None when that round is unknown)."""
        view = self._client(event["client"])
        round_ = self.rounds.get(event["round"]) if "round" in event else None  # client_state's may lack it
        if round_ is None:
            return view, None
        return view, round_.clients.setdefault(view.client, ClientRound())

    def _set_state(self, view: ClientView, state: str, t: float) -> None:
        view.state, view.state_t = state, t

    def _advance(self, view: ClientView, part: ClientRound | None, status: str, t: float) -> None:
        """Move a client forwards through its round (never backwards: heartbeats lag behind)."""
        if part is not None:
            if part.status not in ROUND_STEPS or ROUND_STEPS[status] < ROUND_STEPS[part.status]:
                return
            part.status = status
        self._set_state(view, status, t)

    # ------------------------------------------------------------ the run
    def _on_run_started(self, event: dict, t: float) -> None:
        self.status = "running"
        self.scenario = event.get("scenario", self.scenario)
        self.rounds_planned = event.get("rounds", self.rounds_planned)
        self.exits = [int(layer) for layer in event.get("exits") or self.exits]
        self.backend = event.get("backend", self.backend)
        self.event_clock = event.get("clock") == "events"
        if event.get("strategy") == "centralized":  # the baseline trains on this host, undilated, nothing emulated
            self.clock = "host"
        if isinstance(event.get("dilation"), dict):
            self._on_dilation_changed(event["dilation"], t)
        for spec in event.get("clients") or []:
            if not isinstance(spec.get("client_id"), str):
                continue
            view = self._client(spec["client_id"])
            for name in ("profile", "link"):
                value = spec.get(name)
                setattr(view, name, value.get("name", "?") if isinstance(value, dict) else str(value or "?"))
            view.task = str(spec.get("task", view.task))

    def _on_run_resumed(self, event: dict, t: float) -> None:
        self.status = "running"

    def _on_dilation_changed(self, event: dict, t: float) -> None:
        factor = number(event.get("factor"))
        if factor is not None:
            self.dilation = {"factor": factor, "reason": event.get("reason")}
            self.dilations.append((t, factor))

    def _end(self, event: dict, t: float) -> None:
        self.status, self.reason = ENDINGS[event["kind"]], event.get("reason")

    _on_run_finished = _on_run_interrupted = _on_run_failed = _end

    def _on_message_dropped(self, event: dict, t: float) -> None:
        count = event.get("count", 1)  # repeated drops are told once, then as one event with their count
        self.dropped_messages += count if isinstance(count, int) and count > 0 else 1

    # ------------------------------------------------------------ clients
    def _on_client_joined(self, event: dict, t: float) -> None:
        view = self._client(event["client"])
        for name in ("profile", "task", "link"):
            if event.get(name) is not None:
                setattr(view, name, event[name])
        self._set_state(view, "joined", t)

    def _on_client_ready(self, event: dict, t: float) -> None:
        self._set_state(self._client(event["client"]), "ready", t)

    def _on_client_state(self, event: dict, t: float) -> None:
        view, part = self._part(event)
        state = str(event["state"])
        if state in ROUND_STEPS and part is not None:
            if state == "training" and part.training_t is None:
                part.training_t = t
            if state == "uploading" and part.uploading_t is None:
                part.uploading_t = t
            self._advance(view, part, state, t)
        else:
            self._set_state(view, state, t)

    def _on_client_lost(self, event: dict, t: float) -> None:
        self.lost_events += 1
        self._leave(event, t, ClientStatus.LOST)

    def _on_client_left(self, event: dict, t: float) -> None:
        self._leave(event, t, ClientStatus.LEFT)

    def _leave(self, event: dict, t: float, status: str) -> None:
        view = self._client(event["client"])
        self._set_state(view, status, t)
        round_ = self.round_view()
        part = round_.clients.get(view.client) if round_ is not None and round_.closed is None else None
        if part is not None and part.status not in FINISHED:
            part.status, part.ended_t = status, t

    def _on_client_rejoined(self, event: dict, t: float) -> None:
        view = self._client(event["client"])
        self._set_state(view, "back", t)
        round_ = self.round_view()
        part = round_.clients.get(view.client) if round_ is not None and round_.closed is None else None
        if part is not None and part.status == ClientStatus.LOST and part.depth is None:
            part.status, part.ended_t = ClientStatus.ASKED, None  # back before it fetched: it can still take part

    def _on_client_skipped(self, event: dict, t: float) -> None:
        view, part = self._part(event)
        if part is not None:
            part.status, part.ended_t = ClientStatus.SKIPPED, t
        self._set_state(view, ClientStatus.SKIPPED, t)

    # ------------------------------------------------------------ rounds
    def _on_round_started(self, event: dict, t: float) -> None:
        index = int(event["round"])
        selected = [cid for cid in event.get("selected") or [] if isinstance(cid, str)]
        self.rounds[index] = RoundView(index, t, number(event.get("deadline_s")),
                                       {cid: ClientRound() for cid in selected})
        self.current = index if self.current is None else max(self.current, index)
        for cid in selected:
            self._set_state(self._client(cid), "asked", t)

    def _on_model_sent(self, event: dict, t: float) -> None:
        view, part = self._part(event)
        if part is not None and event.get("depth") is not None:
            part.depth = int(event["depth"])
        self._advance(view, part, "downloading", t)

    def _on_client_progress(self, event: dict, t: float) -> None:
        view, part = self._part(event)
        if part is not None:
            part.step = int(event.get("step") or part.step)
            steps = number(event.get("steps"))
            part.steps = int(steps) if steps is not None else part.steps
            if event.get("layer") is not None:
                part.depth = int(event["layer"])
            if part.training_t is None:
                part.training_t = t
        self._advance(view, part, "training", t)

    def _on_update_received(self, event: dict, t: float) -> None:
        view, part = self._part(event)
        if part is not None:
            part.ended_t = t
            part.step = part.steps or part.step
            if event.get("depth") is not None:
                part.depth = int(event["depth"])
            part.timings.update({k: v for k in TIMINGS[:3] if (v := number(event.get(k))) is not None})
        self._advance(view, part, "updated", t)

    def _on_update_discarded(self, event: dict, t: float) -> None:
        view, part = self._part(event)
        if part is not None:
            part.status, part.ended_t = ClientStatus.DISCARDED, t
        self._set_state(view, ClientStatus.DISCARDED, t)

    def _on_update_rejected(self, event: dict, t: float) -> None:
        view, part = self._part(event)
        if part is not None:
            part.status, part.ended_t = ClientStatus.REJECTED, t
        self._set_state(view, ClientStatus.REJECTED, t)

    def _on_round_closed(self, event: dict, t: float) -> None:
        index = int(event["round"])
        round_ = self.rounds.get(index)
        if round_ is None:  # attached after it started (a PUB subscriber misses the past)
            started = number(event.get("started_t"))
            round_ = self.rounds[index] = RoundView(index, started if started is not None else t,
                                                    number(event.get("deadline_s")))
            self.current = index if self.current is None else max(self.current, index)
        round_.closed = {k: v for k, v in event.items() if k != "clients"}
        for row in event.get("clients") or []:
            cid = row.get("client")
            if not isinstance(cid, str):
                continue
            part = round_.clients.setdefault(cid, ClientRound())
            part.row = row
            part.status = str(row.get("status", part.status))
            if row.get("depth"):
                part.depth = int(row["depth"])
            part.timings.update({k: v for k in TIMINGS if (v := number(row.get(k))) is not None})
            view = self._client(cid)
            view.last = part
            if part.status == ClientStatus.STRAGGLER and view.state not in FINISHED:
                self._set_state(view, "late", t)

    def _on_round_aggregated(self, event: dict, t: float) -> None:
        self.aggregate_host_s += number(event.get("aggregate_s")) or 0.0
        self.aggregated.add(int(event["round"]))
        round_ = self.rounds.get(event["round"])
        if round_ is not None:
            round_.aggregated_t = t

    def _on_evaluated(self, event: dict, t: float) -> None:
        eval_s = number(event.get("eval_s")) or 0.0  # host seconds
        self.eval_host_s += eval_s
        self.eval_clock_s += eval_s / ((self.dilation or {}).get("factor") or 1.0)
        accuracy = {}
        for task, by_exit in (event.get("accuracy") or {}).items():
            accuracy[str(task)] = {int(layer): float(value) for layer, value in by_exit.items()
                                   if str(layer).isdigit() and number(value) is not None}
        index = int(event["round"])
        self.evaluations[index] = Evaluation(index, self.trained_s(upto=index), accuracy, eval_s)

    # ------------------------------------------------------------ accuracy
    def tasks(self) -> list[str]:
        return sorted({task for e in self.evaluations.values() for task in e.accuracy})

    def exit_layers(self, task: str) -> list[int]:
        return sorted({layer for e in self.evaluations.values() for layer in e.accuracy.get(task, {})})

    def accuracy_series(self, task: str, layer: int) -> list[tuple[float, int, float]]:
        """(seconds of training on the run's clock, round, accuracy) of one exit of one task, in round order."""
        return [(e.trained_s, e.round, e.accuracy[task][layer]) for _, e in sorted(self.evaluations.items())
                if layer in e.accuracy.get(task, {})]

    def best(self, task: str) -> tuple[float, int, int, float] | None:
        """(accuracy, exit layer, round, seconds of training) of the best exit so far, first reached."""
        best = None
        for _, evaluation in sorted(self.evaluations.items()):
            for layer, value in sorted(evaluation.accuracy.get(task, {}).items()):
                if best is None or value > best[0]:
                    best = (value, layer, evaluation.round, evaluation.trained_s)
        return best

    def time_to_target(self, task: str, target: float) -> tuple[float, int, int] | None:
        """(seconds of training, round, exit layer) when any exit of `task` first reached `target`; None: not yet."""
        for _, evaluation in sorted(self.evaluations.items()):
            reached = [layer for layer, value in sorted(evaluation.accuracy.get(task, {}).items()) if value >= target]
            if reached:
                return evaluation.trained_s, evaluation.round, reached[0]
        return None


# kinds the view has nothing to fold from (each is still kept among the recent events for a log panel)
IGNORED = frozenset({
    "late_update",  # the round it came for is closed: nothing changes (its message_dropped counts the drop)
    "join_refused", "handshake_failed", "connection_closed",  # refusals of connections, not of a client's round
})
HANDLED = frozenset(kind for kind in KINDS if hasattr(RunView, f"_on_{kind}"))


def fold(events) -> RunView:
    """A view of everything in `events` (e.g. read_events(run_dir / 'events.jsonl'))."""
    view = RunView()
    for event in events:
        view.apply(event)
    return view
