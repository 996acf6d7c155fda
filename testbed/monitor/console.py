"""Plain, timestamped log lines from a run's events (when there is no dashboard)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from testbed.events import ENDINGS
from testbed.monitor.sources import FileTail

ROUTINE_STATES = ("joining", "loading", "ready", "idle", "downloading", "training", "uploading")  # no line
RUN_KINDS = ("run_started", "run_resumed", *ENDINGS)
ROUND_KINDS = ("round_started", "round_closed", "evaluated")
CLIENT_FATES = {"client_lost": "lost (silent)", "client_rejoined": "back", "client_left": "left",
                "client_skipped": "skipped the round", "late_update": "late update (round closed)",
                "update_discarded": "update discarded", "update_rejected": "update rejected"}  # kind -> what befell it
REFUSAL_KINDS = ("message_dropped", "join_refused", "handshake_failed", "connection_closed")
# kinds worth a line (client_state: only for a state out of the routine), and those never worth one
HANDLED = frozenset({*RUN_KINDS, *ROUND_KINDS, *CLIENT_FATES, *REFUSAL_KINDS, "client_joined", "client_state",
                     "dilation_changed"})
IGNORED = frozenset({"client_ready", "client_progress", "model_sent", "update_received",  # chatty: the round's line
                     "round_aggregated"})  # the round_closed and evaluated lines tell the round


def _seconds(value) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) else "? s"


def _megabytes(value) -> str:
    return f"{value / 1e6:.1f} MB" if isinstance(value, (int, float)) else "? MB"


def _run_line(event: dict) -> str:
    kind = event["kind"]
    if kind == "run_started":
        line = (f"run started: {event.get('scenario', '?')}, {event.get('rounds', '?')} rounds, "
                f"{len(event.get('clients') or [])} clients, exits {event.get('exits', '?')}")
        dilation = event.get("dilation")
        if event.get("clock") == "events":
            line += ", event clock (nothing waits: compute and transfers are billed in emulated seconds)"
        elif isinstance(dilation, dict) and dilation.get("factor") is not None:
            line += f", time dilation ×{dilation['factor']} ({dilation.get('reason', 'no reason given')})"
        return line + (f", {event['backend']} backend" if event.get("backend") else "")
    if kind == "run_resumed":
        return f"run resumed after round {event.get('from_round', '?')} (global state {event.get('digest', '?')})"
    return (f"{kind.replace('_', ' ')}: {event.get('reason', 'no reason given')} "
            f"({event.get('dropped_messages', 0)} dropped messages)")


def _round_line(event: dict) -> str:
    kind, index = event["kind"], event.get("round", "?")
    if kind == "round_started":
        deadline = event.get("deadline_s")
        return (f"round {index} started: {len(event.get('selected') or [])} clients, "
                + (f"deadline {_seconds(deadline)}" if deadline is not None else "no deadline (waits for all)"))
    if kind == "round_closed":
        depths = sorted({row["depth"] for row in event.get("clients") or []
                         if isinstance(row, dict) and row.get("status") == "updated" and row.get("depth")})
        return (f"round {index}: {_seconds(event.get('wall_s'))} emulated, "
                f"{event.get('updates', '?')}/{event.get('selected', '?')} updates, "
                f"{event.get('stragglers', 0)} stragglers, {event.get('lost', 0)} lost, depths {depths}, "
                f"{_megabytes(event.get('bytes_down'))} down / {_megabytes(event.get('bytes_up'))} up")
    parts = [f"{task} " + " ".join(f"L{layer} {acc:.1%}" for layer, acc in by_exit.items()
                                   if isinstance(acc, (int, float)))
             for task, by_exit in (event.get("accuracy") or {}).items()]
    return f"round {index} accuracy: {'; '.join(parts)} ({_seconds(event.get('eval_s'))} host evaluating)"


def describe(event: dict) -> str | None:
    """One line for the events worth a line; None for the chatty ones (progress, routine states) and unknown kinds."""
    kind, client = event.get("kind"), event.get("client", "?")
    if kind in RUN_KINDS:
        return _run_line(event)
    if kind in ROUND_KINDS:
        return _round_line(event)
    if kind == "client_joined":
        return (f"{client} joined (pid {event.get('pid', '?')}, {event.get('profile', '?')}, "
                f"{event.get('task', '?')}, {event.get('link', '?')})")
    if kind == "client_state" and event.get("state") not in ROUTINE_STATES:
        return f"{client}: {event.get('state')}"
    if kind in CLIENT_FATES:
        what = CLIENT_FATES[kind]
        round_ = f" in round {event['round']}" if event.get("round") else ""
        reason = f": {event['reason']}" if event.get("reason") else ""
        return f"{client}: {what}{round_}{reason}"
    if kind in REFUSAL_KINDS:
        return _refusal_line(event)
    if kind == "dilation_changed":
        return f"time dilation ×{event.get('factor', '?')}: {event.get('reason', 'no reason given')}"
    return None


def _refusal_line(event: dict) -> str:
    """A refusal, or a count of them told at once (`count`, over `over_s` seconds: see aggregator/refusals.py)."""
    kind, count, who = event["kind"], event.get("count"), repr(event.get("identity", "?"))
    what = {"message_dropped": f"dropped a message from {who}",
            "join_refused": f"refused a JOIN as {event.get('claimed', '?')} from {who}",
            "handshake_failed": "refused a connection: failed handshake",
            "connection_closed": f"{event['client']}'s {event.get('channel', '?')} connection closed"
            if event.get("client") else f"a connection closed ({who})"}[kind]
    if count is not None:
        what = f"{what} ({count} more like it in {event.get('over_s', '?')} s)"
    return f"{what}: {event.get('reason', '?')}"


def line_for(event: dict) -> str | None:
    """The timestamped line of an event, or None; an event with a malformed field gets none rather than a crash."""
    try:
        text = describe(event)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if text is None:
        return None
    t = event.get("t")
    return f"[{t:8.1f} s] {text}" if isinstance(t, (int, float)) else f"[{'?':>8} s] {text}"


def outcome_lines(run_dir: Path, summary: dict, exit_code: int | None) -> list[str]:
    """What `testbed run` says last: the outcome, the final accuracy, where the results are."""
    accuracy = summary.get("final_accuracy") or {}
    took = f"{summary.get('rounds_emulated_s', 0.0):.1f} s emulated ({summary.get('run_host_s', 0.0):.1f} s host"
    speedup = summary.get("speedup")
    took += f", {speedup:.2f} emulated s per host s, {summary.get('clock', 'real')} clock)" if speedup else ")"
    lines = [f"run {summary.get('status')}: {summary.get('rounds_completed')}/{summary.get('rounds_planned')} rounds "
             f"in {took}; final accuracy {json.dumps(accuracy)}; results in {run_dir}"]
    if exit_code not in (0, None, 130, -15):
        lines.append(f"the aggregator failed (exit code {exit_code}): see {run_dir}/logs/aggregator.log")
    return lines


class EventPrinter:
    """Tails events.jsonl and prints a line per interesting event."""

    def __init__(self, path: Path, stream=sys.stdout):
        self.tail, self.stream = FileTail(path), stream

    def poll(self) -> None:
        for event in self.tail.read():
            if line := line_for(event):
                print(line, file=self.stream, flush=True)

    def stop(self) -> None:
        """Nothing to leave: plain lines stay where they are."""

    def finish(self, run_dir: Path, summary: dict, exit_code: int | None) -> None:
        for line in outcome_lines(run_dir, summary, exit_code):
            print(line, file=self.stream, flush=True)
