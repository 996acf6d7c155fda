"""The report's numbers, from a RunView: per round, per client, per exit depth, and for the whole run."""

from __future__ import annotations

from collections import defaultdict
from statistics import mean

from testbed.monitor.state import TIMINGS, ClientRound, RoundView, RunView, number

LATE = ("straggler", "lost", "left")  # did not deliver an update to the round it was asked to


def closed_rounds(view: RunView) -> list[RoundView]:
    return [view.rounds[i] for i in sorted(view.rounds) if view.rounds[i].closed is not None]


def wait_share(parts: list[ClientRound]) -> float | None:
    """Straggler wait share: idle seconds over all client seconds (download + compute + upload + idle),
    over the clients that delivered an update; None when no client did."""
    timed = [p for p in parts if p.status == "updated" and all(k in p.timings for k in TIMINGS)]
    total = sum(p.timings[k] for p in timed for k in TIMINGS)
    return sum(p.timings["idle_s"] for p in timed) / total if total > 0 else None


def round_rows(view: RunView) -> list[dict]:
    """One row per closed round: wall and deadline seconds, who delivered, wait share, bytes."""
    rows = []
    for round_ in closed_rounds(view):
        statuses = [p.status for p in round_.clients.values()]
        closed = round_.closed
        rows.append({"round": round_.index, "started_t": round_.started_t, "wall_s": round_.wall_s(view.t),
                     "deadline_s": round_.deadline_s, "selected": len(statuses),
                     "updated": statuses.count("updated"), "late": sum(s in LATE for s in statuses),
                     "skipped": statuses.count("skipped"), "wait_share": wait_share(list(round_.clients.values())),
                     "bytes_down": number(closed.get("bytes_down")), "bytes_up": number(closed.get("bytes_up")),
                     "dilation": number(closed.get("dilation"))})
    return rows


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def client_rows(view: RunView) -> list[dict]:
    """One row per client: rounds asked / updated / late, mean depth and phase seconds, bytes moved."""
    parts = defaultdict(list)
    for round_ in closed_rounds(view):
        for cid, part in round_.clients.items():
            parts[cid].append(part)
    rows = []
    for cid, client in view.clients.items():
        mine = parts.get(cid, [])
        updated = [p for p in mine if p.status == "updated"]
        row = {"client": cid, "profile": client.profile, "task": client.task, "link": client.link,
               "asked": len(mine), "updated": len(updated), "late": sum(p.status in LATE for p in mine),
               "mean_depth": _mean([p.depth for p in updated]),
               "bytes": sum((number(p.row.get("bytes_down")) or 0) + (number(p.row.get("bytes_up")) or 0)
                            for p in mine)}
        row.update({key: _mean([p.timings.get(key) for p in updated]) for key in TIMINGS})
        rows.append(row)
    return rows


def depth_samples(view: RunView) -> dict[int, list[tuple[str, ClientRound]]]:
    """The delivered updates of the run, (client, its part), by the exit layer they trained to."""
    by_depth = defaultdict(list)
    for round_ in closed_rounds(view):
        for cid, part in round_.clients.items():
            if part.status == "updated" and part.depth:
                by_depth[part.depth].append((cid, part))
    return dict(sorted(by_depth.items()))


def depth_rows(view: RunView) -> list[dict]:
    """Per exit depth: updates, mean compute seconds, mean peak memory, mean bytes each way."""
    rows = []
    for depth, samples in depth_samples(view).items():
        parts = [part for _, part in samples]
        rows.append({"depth": depth, "updates": len(parts),
                     "compute_s": _mean([p.timings.get("compute_s") for p in parts]),
                     "peak_mb": _mean([number(p.row.get("peak_mb")) for p in parts]),
                     "bytes_down": _mean([number(p.row.get("bytes_down")) for p in parts]),
                     "bytes_up": _mean([number(p.row.get("bytes_up")) for p in parts])})
    return rows


def run_figures(view: RunView) -> dict:
    """Whole-run key figures."""
    closed = closed_rounds(view)
    all_parts = [p for r in closed for p in r.clients.values()]
    walls = [r.wall_s(view.t) for r in closed]
    return {"scenario": view.scenario, "status": view.status if view.ended else "incomplete",
            "reason": view.reason, "rounds_planned": view.rounds_planned,
            "rounds_completed": sum(r.aggregated_t is not None for r in view.rounds.values()),
            "run_s": view.t, "eval_s": view.eval_s, "train_s": view.t - view.eval_s,
            "mean_round_s": _mean(walls), "max_round_s": max(walls) if walls else None,
            "wait_share": wait_share(all_parts), "updates": sum(p.status == "updated" for p in all_parts),
            "late": sum(p.status in LATE for p in all_parts),
            "bytes": sum((number(r.closed.get("bytes_down")) or 0) + (number(r.closed.get("bytes_up")) or 0)
                         for r in closed),
            "dilation": view.dilation, "dilations": [factor for _, factor in view.dilations],
            "backend": view.backend, "lost_events": view.lost_events,
            "dropped_messages": view.dropped_messages, "malformed_events": view.malformed,
            "unknown_kinds": dict(view.unknown_kinds)}
