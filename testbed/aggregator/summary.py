"""summary.json: the key figures of a run, computed from its events alone."""

from __future__ import annotations

from collections import Counter, defaultdict
from statistics import mean

from testbed.events import ENDINGS


def _last_per_round(events: list[dict], kind: str) -> dict[int, dict]:
    """The last event of `kind` for each round (a resumed run may repeat an interrupted round)."""
    return {e["round"]: e for e in events if e["kind"] == kind}


def _per_depth_bytes(closed: dict[int, dict]) -> dict[str, dict]:
    by_depth = defaultdict(list)
    for event in closed.values():
        for row in event["clients"]:
            if row["status"] == "updated":
                by_depth[row["depth"]].append(row)
    return {str(depth): {"updates": len(rows), "mean_bytes_down": round(mean(r["bytes_down"] for r in rows)),
                         "mean_bytes_up": round(mean(r["bytes_up"] for r in rows)),
                         "mean_compute_s": round(mean(r["compute_s"] for r in rows), 3)}
            for depth, rows in sorted(by_depth.items())}


def _rejected(events: list[dict]) -> dict:
    """Updates refused by the sanity screen, in total and per check (non_finite, shape, norm, ...)."""
    checks = Counter(e.get("check", "?") for e in events if e["kind"] == "update_rejected")
    return {"total": sum(checks.values()), "by_check": dict(sorted(checks.items()))}


def summarize(events: list[dict]) -> dict:
    kinds = [e["kind"] for e in events]
    started = next((e for e in events if e["kind"] == "run_started"), {})
    closed = _last_per_round(events, "round_closed")
    aggregated = _last_per_round(events, "round_aggregated")
    evaluations = _last_per_round(events, "evaluated")
    # a resumed run has one ending per launch: finished beats interrupted beats failed (ENDINGS' order);
    # incomplete: killed mid-run, no ending recorded
    status = next((ENDINGS[kind] for kind in ENDINGS if kind in kinds), "incomplete")
    end = next((e for e in reversed(events) if e["kind"] in ENDINGS), {})
    walls = [e["wall_s"] for e in closed.values()]
    final = evaluations[max(evaluations)] if evaluations else None
    return {
        "scenario": started.get("scenario"),
        "status": status,
        "reason": end.get("reason"),  # e.g. "rounds done", "time budget spent (...)"
        "rounds_planned": started.get("rounds"),
        "rounds_completed": len(aggregated),
        "last_digest": aggregated[max(aggregated)]["digest"] if aggregated else None,
        "run_seconds": events[-1]["t"] if events else 0.0,
        "round_wall_s": {"mean": round(mean(walls), 3), "max": round(max(walls), 3)} if walls else None,
        "eval_seconds": round(sum(e["eval_s"] for e in evaluations.values()), 3),
        "final_accuracy": {"round": final["round"], **final["accuracy"]} if final else None,
        "bytes": {"down": sum(e["bytes_down"] for e in closed.values()),
                  "up": sum(e["bytes_up"] for e in closed.values())},
        "per_depth": _per_depth_bytes(closed),
        "updates": sum(e["updates"] for e in closed.values()),
        "stragglers": sum(e["stragglers"] for e in closed.values()),
        "lost_events": kinds.count("client_lost"),
        "dropped_messages": kinds.count("message_dropped"),
        "rejected_updates": _rejected(events),
    }
