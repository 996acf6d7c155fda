"""What a comparison reports, from events alone (pure functions: events or figures in, numbers out).

A task is judged at its exit: the scenario's preferred exit for it when one is given; for an `auto` preferred
exit, the exit the rule picks from the run's last evaluation (the one its clients were sent next: the task is
used there); else the deepest. Its best exit at the last evaluation is reported too. Times are the rounds'
seconds, evaluation excluded (`Evaluation.trained_s`): emulated seconds for a federated run, host seconds for
the centralized baseline (its clock runs undilated).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

from testbed.model.early_exit import exit_depth
from testbed.model.geometry import auto_exit
from testbed.monitor import state
from testbed.monitor.metrics import DepthTotals, depth_totals, run_figures
from testbed.monitor.state import RunView, fold

# a run is read through the view the dashboard and the report fold it into
HANDLED, IGNORED = state.HANDLED, state.IGNORED

TARGET_MARGIN = 0.02  # the default target accuracy: fedavg_full's final accuracy minus 2 points
TARGET_STRATEGY = "fedavg_full"

Series = list[tuple[float, float]]  # (training seconds, accuracy), one point per evaluation


AUTO = "auto"  # a task whose preferred exit is `auto`: each run is judged where the rule put it


def task_exit(preferred: int | str | None, exits: tuple[int, ...]) -> int | str:
    """The exit layer a task is judged at: its preferred exit (1-based index), AUTO for "auto", else the deepest."""
    if preferred == AUTO:
        return AUTO
    return exit_depth(exits, preferred if isinstance(preferred, int) else None)


def last_accuracy(view: RunView, task: str) -> dict[int, float]:
    """{exit layer: accuracy} of `task` at the run's last evaluation of it; {} before any."""
    evaluated = [e for _, e in sorted(view.evaluations.items()) if e.accuracy.get(task)]
    return dict(evaluated[-1].accuracy[task]) if evaluated else {}


def judged_exit(view: RunView, task: str, rule: int | str) -> int | None:
    """The layer a run's task is judged at: the rule's layer, or for AUTO the exit the rule picks from the last
    evaluation; None for AUTO before any evaluation."""
    if rule != AUTO:
        return int(rule)
    accuracy = last_accuracy(view, task)
    return auto_exit(accuracy) if accuracy else None


def accuracy_at(view: RunView, task: str, layer: int) -> Series:
    """(training seconds, accuracy) of `task` at exit `layer`, one point per evaluation."""
    return [(t, value) for t, _, value in view.accuracy_series(task, layer)]


def time_to_target(series: Series, target: float) -> float | None:
    """First training second at which the accuracy reached `target`; None if it never did."""
    return next((t for t, value in series if value >= target), None)


def pool_depths(runs: Iterable[Mapping[int, DepthTotals]]) -> dict[int, DepthTotals]:
    """Per-depth totals of several runs added together (same model on the same host: comparable)."""
    pooled: dict[int, DepthTotals] = {}
    for totals in runs:
        for depth, figures in totals.items():
            pooled[depth] = pooled.get(depth, DepthTotals()).add(figures)
    return dict(sorted(pooled.items()))


def _ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


def relative_depth_costs(totals: Mapping[int, DepthTotals], full: DepthTotals | None) -> dict[int, dict]:
    """Per depth: host CPU seconds per clip and mean peak memory, each relative to full depth's."""
    return {depth: {"updates": figures.updates, "cpu_s_per_sample": figures.cpu_per_sample,
                    "compute_s_per_sample": figures.compute_per_sample, "peak_mb": figures.mean_peak_mb,
                    "compute_vs_full": _ratio(figures.cpu_per_sample, full.cpu_per_sample if full else None),
                    "memory_vs_full": _ratio(figures.mean_peak_mb, full.mean_peak_mb if full else None)}
            for depth, figures in totals.items()}


def costs_vs_full(totals: Mapping[int, DepthTotals], full: DepthTotals | None) -> dict[str, float | None]:
    """A run's client compute and memory relative to the same updates at full depth.

    Compute: host CPU seconds per clip over all its updates, over full depth's (host CPU time is the
    work done, whatever each device's speed; emulated seconds would compare devices, not depths).
    Memory: mean peak per update over the mean peak of a full-depth update."""
    whole = DepthTotals()
    for figures in totals.values():
        whole = whole.add(figures)
    return {"compute_vs_full": _ratio(whole.cpu_per_sample, full.cpu_per_sample if full else None),
            "memory_vs_full": _ratio(whole.mean_peak_mb, full.mean_peak_mb if full else None)}


def run_metrics(events: list[dict], task_exits: Mapping[str, int | str]) -> dict:
    """The figures of one run: per task, the final accuracy and its curve at its exit and the best exit's final
    accuracy; round and client costs."""
    view = fold(events)
    figures = run_figures(view)
    tasks = {}
    for task, rule in task_exits.items():
        layer = judged_exit(view, task, rule)
        series = accuracy_at(view, task, layer) if layer is not None else []
        last = last_accuracy(view, task)
        best = max(last, key=lambda exit_layer: (last[exit_layer], -exit_layer)) if last else None
        tasks[task] = {"exit": layer, "final": series[-1][1] if series else None, "series": series,
                       "best_exit": best, "best_final": last[best] if best is not None else None}
    return {"status": figures["status"], "tasks": tasks, "mean_round_s": figures["mean_round_emulated_s"],
            "wait_share": figures["wait_share"], "bytes": figures["bytes"],
            "rounds_emulated_s": figures["rounds_emulated_s"], "depths": depth_totals(view)}


def mean_std(values: Iterable[float | None]) -> tuple[float, float] | None:
    """(mean, sample standard deviation) of the values present; the deviation is 0 for a single value."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return statistics.fmean(present), (statistics.stdev(present) if len(present) > 1 else 0.0)


def error_table(metrics: Mapping[str, list[dict]], tasks: list[str], final: str = "final"
                ) -> dict[str, dict[str, tuple[float, float] | None]]:
    """task -> strategy -> (mean, std) over seeds of the final error (1 - accuracy) at the task's exit (or, with
    final="best_final", at each run's best exit)."""
    return {task: {name: mean_std(None if m["tasks"][task][final] is None else 1 - m["tasks"][task][final]
                                  for m in runs)
                   for name, runs in metrics.items()}
            for task in tasks}


# Two-sided 95 % quantiles of Student's t by degrees of freedom (standard tables); beyond 30, the value at 30 is
# used, which is a little wider than the truth (1.96 in the limit): a conservative interval.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci(values: Iterable[float]) -> dict | None:
    """{"mean", "ci": [low, high] (95 %, Student's t; None for one value), "n"}; None for no value."""
    present = list(values)
    if not present:
        return None
    mean = statistics.fmean(present)
    if len(present) < 2:
        return {"mean": mean, "ci": None, "n": 1}
    half = T_975[min(len(present) - 1, len(T_975)) - 1] * statistics.stdev(present) / len(present) ** 0.5
    return {"mean": mean, "ci": [mean - half, mean + half], "n": len(present)}


def paired_differences(runs: Mapping[int, dict], reference: Mapping[int, dict], tasks: list[str]) -> dict:
    """Seed by seed, one strategy's runs against another's (both finished, same seed: same fleet and data):
    per task the difference of final errors (1 - accuracy, at each task's exit), and the ratio of mean round
    times; each as mean and 95 % confidence interval over the seeds both have."""
    seeds = sorted(set(runs) & set(reference))

    def error(metrics: dict, task: str) -> float | None:
        final = metrics["tasks"][task]["final"]
        return None if final is None else 1 - final

    differences = {task: mean_ci(a - b for s in seeds if (a := error(runs[s], task)) is not None
                                 and (b := error(reference[s], task)) is not None) for task in tasks}
    ratios = mean_ci(runs[s]["mean_round_s"] / reference[s]["mean_round_s"] for s in seeds
                     if runs[s]["mean_round_s"] is not None and reference[s]["mean_round_s"])
    return {"seeds": seeds, "error": differences, "round_time_ratio": ratios}


def targets(metrics: Mapping[str, list[dict]], tasks: list[str], explicit: float | None) -> dict[str, float | None]:
    """Target accuracy per task: `explicit` when given, else fedavg_full's mean final accuracy minus 2 points
    when fedavg_full is compared, else None (no time to target); None too where that is not above 0."""
    if explicit is not None:
        return {task: explicit for task in tasks}
    reference = metrics.get(TARGET_STRATEGY) or []
    finals = {task: mean_std(m["tasks"][task]["final"] for m in reference) for task in tasks}
    derived = {task: stats[0] - TARGET_MARGIN if stats else None for task, stats in finals.items()}
    return {task: value if value is not None and value > 0 else None for task, value in derived.items()}


def mean_curve(curves: list[Series]) -> Series:
    """The seeds' curves averaged point by point, over the evaluations every seed has."""
    curves = [c for c in curves if c]
    if not curves:
        return []
    length = min(len(c) for c in curves)
    return [(statistics.fmean(c[i][0] for c in curves), statistics.fmean(c[i][1] for c in curves))
            for i in range(length)]
