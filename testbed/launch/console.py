"""Plain, timestamped log lines from a run's events (when there is no dashboard)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def describe(event: dict) -> str | None:
    """One line for the events worth a line; None for the chatty ones (progress, heartbeats)."""
    kind = event["kind"]
    if kind == "client_joined":
        return f"{event['client']} joined (pid {event['pid']}, {event['profile']}, {event['task']}, {event['link']})"
    if kind == "round_closed":
        depths = sorted({row["depth"] for row in event["clients"] if row["status"] == "updated"})
        return (f"round {event['round']}: {event['wall_s']:.1f} s, {event['updates']}/{event['selected']} updates, "
                f"{event['stragglers']} stragglers, {event['lost']} lost, depths {depths}, "
                f"{event['bytes_down'] / 1e6:.1f} MB down / {event['bytes_up'] / 1e6:.1f} MB up")
    if kind == "evaluated":
        parts = [f"{task} " + " ".join(f"L{layer} {acc:.1%}" for layer, acc in by_exit.items())
                 for task, by_exit in event["accuracy"].items()]
        return f"round {event['round']} accuracy: {'; '.join(parts)} ({event['eval_s']:.1f} s)"
    if kind in ("client_lost", "client_rejoined", "client_left", "late_update"):
        return f"{event['client']}: {kind.replace('client_', '').replace('_', ' ')}"
    if kind == "message_dropped":
        return f"dropped a message from {event['identity']!r}: {event['reason']}"
    if kind in ("run_started", "run_resumed", "run_finished", "run_interrupted", "run_failed"):
        details = {k: v for k, v in event.items()
                   if k in ("scenario", "rounds", "from_round", "reason", "dropped_messages")}
        return f"{kind.replace('_', ' ')} {details}"
    return None


class EventPrinter:
    """Tails events.jsonl and prints a line per interesting event."""

    def __init__(self, path: Path, stream=sys.stdout):
        self.path, self.stream, self.offset = path, stream, 0

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as file:
            file.seek(self.offset)
            while (line := file.readline()).endswith("\n"):
                self.offset = file.tell()
                line_text = describe(json.loads(line))
                if line_text:
                    print(f"[{json.loads(line)['t']:8.1f} s] {line_text}", file=self.stream, flush=True)

    def finish(self, run_dir: Path, summary: dict, exit_code: int | None) -> None:
        accuracy = summary.get("final_accuracy") or {}
        print(f"run {summary['status']}: {summary['rounds_completed']}/{summary['rounds_planned']} rounds in "
              f"{summary['run_seconds']:.1f} s; final accuracy {json.dumps(accuracy)}; results in {run_dir}",
              file=self.stream, flush=True)
        if exit_code not in (0, None, 130, -15):
            print(f"the aggregator failed (exit code {exit_code}): see {run_dir}/logs/aggregator.log",
                  file=self.stream, flush=True)
