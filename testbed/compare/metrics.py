"""What a compare table reports about one run, from its events alone (pure: events in, numbers out).

A task is judged at its exit: the scenario's preferred exit for it when one is given, else the
deepest. Times are the run's emulated seconds without evaluation (`train_t`), as in its report.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from testbed.model.early_exit import exit_depth
from testbed.monitor.metrics import run_figures
from testbed.monitor.state import RunView, fold, number


def task_exit(preferred: int | str | None, exits: tuple[int, ...]) -> int:
    """The exit layer a task is judged at: its preferred exit (1-based index) or the deepest."""
    return exit_depth(exits, preferred if isinstance(preferred, int) else None)


def accuracy_at(view: RunView, task: str, layer: int) -> list[tuple[float, float]]:
    """(training seconds, accuracy) of `task` at exit `layer`, one point per evaluation."""
    return [(t, value) for t, _, value in view.accuracy_series(task, layer)]


def time_to_target(series: list[tuple[float, float]], target: float) -> float | None:
    """First training second at which the accuracy reached `target`; None if it never did."""
    return next((t for t, value in series if value >= target), None)


def relative_costs(events: list[dict]) -> dict[str, float | None]:
    """Mean over updates of (step CPU seconds, peak memory) at the trained depth relative to full depth,
    each client against its own measurements (the per-exit costs it reported when ready)."""
    costs = {e["client"]: e.get("device", {}).get("costs", {}) for e in events if e["kind"] == "client_ready"}
    compute, memory = [], []
    for event in events:
        if event["kind"] != "update_received":
            continue
        own = costs.get(event["client"], {})
        if not own:
            continue
        full = own[max(own, key=int)]
        at = own.get(str(event["depth"]))
        if at and number(full.get("step_cpu_s")) and number(full.get("peak_mb")):
            compute.append(at["step_cpu_s"] / full["step_cpu_s"])
            memory.append(at["peak_mb"] / full["peak_mb"])
    mean = lambda values: statistics.fmean(values) if values else None  # noqa: E731
    return {"compute_vs_full": mean(compute), "memory_vs_full": mean(memory)}


def run_metrics(events: list[dict], task_exits: Mapping[str, int]) -> dict:
    """The figures of one run: final accuracy and its curve per task at its exit, and the costs."""
    view = fold(events)
    figures = run_figures(view)
    tasks = {}
    for task, layer in task_exits.items():
        series = accuracy_at(view, task, layer)
        tasks[task] = {"exit": layer, "final": series[-1][1] if series else None, "series": series}
    return {"status": figures["status"], "tasks": tasks, "mean_round_s": figures["mean_round_s"],
            "wait_share": figures["wait_share"], "bytes": figures["bytes"], "train_s": figures["train_s"],
            **relative_costs(events)}


def mean_std(values: list[float | None]) -> tuple[float, float] | None:
    """(mean, standard deviation) of the values present; the deviation is 0 for a single value."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return statistics.fmean(present), (statistics.stdev(present) if len(present) > 1 else 0.0)
