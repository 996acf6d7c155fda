"""summary.json: the key figures of a run, computed from its events alone.

Each time figure's name says its clock: `_emulated_s` (the event clock: host wall seconds / the run's
dilation; a round_closed event's `wall_s` is on it) or `_host_s` (measured on this host).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from statistics import mean

from testbed.events import ENDINGS, read_events

# the kinds summary.json is computed from, and those it leaves out
HANDLED = frozenset({"run_started", *ENDINGS, "round_closed", "round_aggregated", "evaluated", "client_lost",
                     "client_left", "client_skipped", "update_rejected", "message_dropped"})
IGNORED = frozenset({"run_resumed", "dilation_changed", "client_joined", "client_ready", "client_state",
                     "client_progress", "client_rejoined", "round_started", "model_sent", "update_received",
                     "update_discarded", "late_update",  # each client's round is in round_closed's rows
                     "join_refused", "handshake_failed", "connection_closed"})


def _last_per_round(events: list[dict], kind: str) -> dict[int, dict]:
    """The last event of `kind` for each round (a resumed run may repeat an interrupted round)."""
    return {e["round"]: e for e in events if e["kind"] == kind}


def _per_depth_bytes(closed: dict[int, dict]) -> dict[str, dict]:
    """Per trained depth: bytes, host CPU seconds per clip and peak memory (what the depth costs), and apart the
    emulated compute seconds (which depend on the devices that trained it)."""
    by_depth = defaultdict(list)
    for event in closed.values():
        for row in event["clients"]:
            if row["status"] == "updated":
                by_depth[row["depth"]].append(row)
    figures = {}
    for depth, rows in sorted(by_depth.items()):
        timed = [r for r in rows if r.get("cpu_s") is not None and r.get("samples")]
        peaks = [r["peak_mb"] for r in rows if r.get("peak_mb") is not None]
        figures[str(depth)] = {
            "updates": len(rows), "mean_bytes_down": round(mean(r["bytes_down"] for r in rows)),
            "mean_bytes_up": round(mean(r["bytes_up"] for r in rows)),
            "cpu_host_s_per_clip": round(sum(r["cpu_s"] for r in timed) / sum(r["samples"] for r in timed), 6)
            if timed else None,
            "mean_peak_mb": round(mean(peaks), 1) if peaks else None,
            "mean_compute_emulated_s": round(mean(r["compute_s"] for r in rows), 3)}
    return figures


def _host_seconds(events: list[dict]) -> float:
    """Host wall seconds of the run: first to last event of each launch, summed (a resumed run's pause is not run
    time)."""
    spans: list[list[float]] = []
    for event in events:
        wall = event.get("wall")  # Unix time; events written by hand (tests, tools) may lack it
        if wall is None:
            continue
        if event["kind"] == "run_started" or not spans:
            spans.append([wall, wall])
        spans[-1][1] = wall
    return round(sum(last - first for first, last in spans), 3)


def _speedup(emulated_s: float, host_s: float) -> float | None:
    return round(emulated_s / host_s, 3) if host_s > 0 else None


def _rejected(events: list[dict]) -> dict:
    """Updates refused by the sanity screen, in total and per check (non_finite, shape, norm, ...)."""
    checks = Counter(e.get("check", "?") for e in events if e["kind"] == "update_rejected")
    return {"total": sum(checks.values()), "by_check": dict(sorted(checks.items()))}


def untrained(events: list[dict], most_groups: int = 8) -> str | None:
    """Why a run trained nothing, or None when some round aggregated an update (or no round closed yet).

    Rounds without updates are no failure by themselves (availability can empty a round); a run none of
    whose rounds aggregated anything is. The reason says what became of each client in every round,
    clients with the same story together: "no round aggregated an update (2 rounds): c00, c01: skipped
    (offline) x2; c02: rejected (samples) x1, straggler x1".
    """
    closed = _last_per_round(events, "round_closed")
    if not closed or any(event["updates"] for event in closed.values()):
        return None
    checks = {(e["client"], e["round"]): e.get("check", "?") for e in events if e["kind"] == "update_rejected"}
    skips = {(e["client"], e["round"]): e.get("reason", "?") for e in events if e["kind"] == "client_skipped"}
    started = next((e for e in events if e["kind"] == "run_started"), {})
    fates: dict[str, Counter[str]] = {c["client_id"]: Counter() for c in started.get("clients", [])}
    for event in closed.values():
        for row in event["clients"]:
            key, status = (row["client"], event["round"]), row["status"]
            detail = checks.get(key) if status == "rejected" else skips.get(key) if status == "skipped" else None
            fates.setdefault(row["client"], Counter())[f"{status} ({detail})" if detail else status] += 1
    for event in events:
        if event["kind"] == "client_left":
            fates.setdefault(event["client"], Counter())[f"left ({str(event.get('reason'))[:80]})"] += 1
    stories: defaultdict[str, list[str]] = defaultdict(list)  # what became of a client -> the clients it befell
    for client, fate in fates.items():
        story = ", ".join(f"{what} x{n}" for what, n in sorted(fate.items(), key=lambda item: (-item[1], item[0])))
        stories[story or "never in a round"].append(client)
    told = [f"{', '.join(clients[:5])}{f' and {len(clients) - 5} more' if len(clients) > 5 else ''}: {story}"
            for story, clients in stories.items()]
    more = f"; and {len(told) - most_groups} more" if len(told) > most_groups else ""
    return f"no round aggregated an update ({len(closed)} rounds): {'; '.join(told[:most_groups])}{more}"


def summarize(events: list[dict]) -> dict:
    kinds = [e["kind"] for e in events]
    started = next((e for e in events if e["kind"] == "run_started"), {})
    closed = _last_per_round(events, "round_closed")
    aggregated = _last_per_round(events, "round_aggregated")
    evaluations = _last_per_round(events, "evaluated")
    # a resumed run has one ending per launch, and the last launch's says where the run stands (a refused
    # resume of a finished run is failed); incomplete: killed mid-run, no ending recorded
    end: dict = next((e for e in reversed(events) if e["kind"] in ENDINGS), {})
    status = ENDINGS[end["kind"]] if end else "incomplete"
    rounds_s = [e["wall_s"] for e in closed.values()]  # emulated seconds of each round
    final = evaluations[max(evaluations)] if evaluations else None
    host_s = _host_seconds(events)
    return {
        "scenario": started.get("scenario"),
        "status": status,
        "reason": end.get("reason"),  # e.g. "rounds done", "time budget spent (...)"
        "rounds_planned": started.get("rounds"),
        "rounds_completed": len(aggregated),
        "last_digest": aggregated[max(aggregated)]["digest"] if aggregated else None,
        "rounds_emulated_s": round(sum(rounds_s), 3),  # what time_budget_s counts
        "run_emulated_s": events[-1]["t"] if events else 0.0,  # the event clock at the end (evaluation included)
        "run_host_s": host_s,
        "clock": started.get("clock") or "real",  # how emulated time passed (testbed/emulation/clock.py)
        # emulated seconds of rounds per host second: > 1, the run went faster than the devices would
        "speedup": _speedup(sum(rounds_s), host_s),
        "round_emulated_s": {"mean": round(mean(rounds_s), 3), "max": round(max(rounds_s), 3)} if rounds_s else None,
        "eval_host_s": round(sum(e["eval_s"] for e in evaluations.values()), 3),
        "aggregate_host_s": round(sum(e.get("aggregate_s", 0.0) for e in aggregated.values()), 4),
        "final_accuracy": {"round": final["round"], **final["accuracy"]} if final else None,
        "bytes": {"down": sum(e["bytes_down"] for e in closed.values()),
                  "up": sum(e["bytes_up"] for e in closed.values())},
        "per_depth": _per_depth_bytes(closed),
        "updates": sum(e["updates"] for e in closed.values()),
        "stragglers": sum(e["stragglers"] for e in closed.values()),
        "lost_events": kinds.count("client_lost"),
        # a message_dropped event may stand for several drops (repeats are counted, not told one by one)
        "dropped_messages": sum(e.get("count", 1) for e in events if e["kind"] == "message_dropped"),
        "rejected_updates": _rejected(events),
    }


def write_summary(run_dir: Path) -> dict:
    """summary.json from events.jsonl alone (works for crashed or interrupted runs too)."""
    summary = summarize(read_events(run_dir / "events.jsonl"))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
