"""The report's numbers, from a RunView: per round, per client, per exit depth, and for the whole run.

Each time figure's name says its clock: `_emulated_s` (the event clock's seconds: device and link
speed, dilation undone) or `_host_s` (measured on this host: evaluation, aggregation, CPU time).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
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
    """One row per closed round: its emulated and deadline seconds, who delivered, wait share, bytes, and the host
    seconds of its evaluation (None: not evaluated)."""
    rows = []
    for round_ in closed_rounds(view):
        statuses = [p.status for p in round_.clients.values()]
        closed, evaluation = round_.closed, view.evaluations.get(round_.index)
        assert closed is not None  # closed_rounds gives closed rounds only
        rows.append({"round": round_.index, "started_emulated_s": round_.started_t,
                     "round_emulated_s": round_.emulated_s(view.t), "deadline_emulated_s": round_.deadline_s,
                     "eval_host_s": evaluation.host_s if evaluation is not None else None, "selected": len(statuses),
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


@dataclass
class DepthTotals:
    """Sums over the delivered updates trained to one depth (sums, so that several runs pool exactly)."""

    updates: int = 0
    samples: int = 0  # clips trained on
    cpu_s: float = 0.0  # host CPU seconds of local training, over the updates that reported it
    cpu_samples: int = 0  # clips of the updates that reported cpu_s
    compute_s: float = 0.0  # emulated seconds of local training (depends on each device's speed)
    peak_mb: float = 0.0  # sum of the updates' peak resident memory, MiB
    peaks: int = 0  # updates that reported a peak

    def add(self, other: DepthTotals) -> DepthTotals:
        return DepthTotals(**{key: value + getattr(other, key) for key, value in asdict(self).items()})

    @property
    def cpu_per_sample(self) -> float | None:
        return self.cpu_s / self.cpu_samples if self.cpu_samples else None

    @property
    def compute_per_sample(self) -> float | None:
        return self.compute_s / self.samples if self.samples else None

    @property
    def mean_peak_mb(self) -> float | None:
        return self.peak_mb / self.peaks if self.peaks else None


def depth_totals(view: RunView) -> dict[int, DepthTotals]:
    """The delivered updates of a run (its round_closed rows), summed per trained depth."""
    totals: dict[int, DepthTotals] = {}
    for round_ in closed_rounds(view):
        for part in round_.clients.values():
            row = part.row
            samples = number(row.get("samples"))
            if part.status != "updated" or not part.depth or not samples:
                continue
            cpu, compute, peak = number(row.get("cpu_s")), number(row.get("compute_s")), number(row.get("peak_mb"))
            totals[part.depth] = totals.get(part.depth, DepthTotals()).add(DepthTotals(
                updates=1, samples=int(samples), cpu_s=cpu or 0.0, cpu_samples=int(samples) if cpu is not None else 0,
                compute_s=compute or 0.0, peak_mb=peak or 0.0, peaks=int(peak is not None)))
    return dict(sorted(totals.items()))


def depth_rows(view: RunView) -> list[dict]:
    """Per exit depth: updates, host CPU seconds per clip and mean peak memory (what the depth costs, whichever
    device trained it), mean bytes each way; and apart, the emulated compute seconds per clip with the profiles
    that trained it (a slower device takes longer at the same depth)."""
    samples = depth_samples(view)
    rows = []
    for depth, totals in depth_totals(view).items():
        parts = [part for _, part in samples.get(depth, [])]
        rows.append({"depth": depth, "updates": totals.updates, "cpu_host_s_per_clip": totals.cpu_per_sample,
                     "peak_mb": totals.mean_peak_mb,
                     "bytes_down": _mean([number(p.row.get("bytes_down")) for p in parts]),
                     "bytes_up": _mean([number(p.row.get("bytes_up")) for p in parts]),
                     "compute_emulated_s_per_clip": totals.compute_per_sample,
                     "profiles": sorted({view.clients[cid].profile for cid, _ in samples.get(depth, [])})})
    return rows


def run_figures(view: RunView) -> dict:
    """Whole-run key figures."""
    closed = closed_rounds(view)
    all_parts = [p for r in closed for p in r.clients.values()]
    rounds_s = [r.emulated_s(view.t) for r in closed]
    return {"scenario": view.scenario, "status": view.status if view.ended else "incomplete",
            "reason": view.reason, "rounds_planned": view.rounds_planned,
            "rounds_completed": len(view.aggregated),
            "clock": view.clock, "trained_s": view.trained_s(),  # training seconds on the run's clock
            "rounds_emulated_s": view.rounds_emulated_s(), "run_emulated_s": view.t, "run_host_s": view.host_s,
            "eval_host_s": view.eval_host_s, "aggregate_host_s": view.aggregate_host_s,
            "mean_round_emulated_s": _mean(rounds_s), "max_round_emulated_s": max(rounds_s) if rounds_s else None,
            "wait_share": wait_share(all_parts), "updates": sum(p.status == "updated" for p in all_parts),
            "late": sum(p.status in LATE for p in all_parts),
            "bytes": sum((number(r.closed.get("bytes_down")) or 0) + (number(r.closed.get("bytes_up")) or 0)
                         for r in closed if r.closed is not None),
            "dilation": view.dilation, "dilations": [factor for _, factor in view.dilations],
            "backend": view.backend, "lost_events": view.lost_events,
            "dropped_messages": view.dropped_messages, "malformed_events": view.malformed,
            "unknown_kinds": dict(view.unknown_kinds)}
