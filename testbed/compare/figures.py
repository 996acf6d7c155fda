"""Every figure of a comparison, from its runs' events: what compare.json holds and compare.md shows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from testbed.compare.metrics import (
    TARGET_MARGIN,
    TARGET_STRATEGY,
    costs_vs_full,
    error_table,
    mean_curve,
    mean_std,
    paired_differences,
    pool_depths,
    relative_depth_costs,
    run_metrics,
    targets,
    time_to_target,
)

CENTRALIZED = "centralized"  # not a strategy: the baseline with all data in one process
FINISHED = "finished"  # only finished runs enter the tables; the others are listed
# the paper's claims about depth-aware aggregation are made against these too (besides fedavg_full)
DEPTH_AWARE, DEPTH_AWARE_AGAINST = "depth_aware", ("layerwise", "fedavg_hetero_naive")


@dataclass
class RunRecord:
    """One run of a comparison: what was asked and how it ended."""

    strategy: str
    seed: int
    label: str  # <strategy>-s<seed>, also its directory's name
    directory: str | None  # None when it failed before it had one
    status: str  # finished, interrupted, failed, incomplete (from its events), or failed to start
    error: str | None = None  # one line, when it raised
    code: str | None = None  # the code version that made it, or last resumed it (testbed/version.py)


def _pair(stats: tuple[float, float] | None) -> list[float] | None:
    return list(stats) if stats else None


def strategy_figures(runs: list[dict], tasks: list[str], target_of: Mapping[str, float | None]) -> dict:
    """Mean ± std over one strategy's finished runs of every figure the tables show."""
    reach = {}
    for task in tasks:
        target = target_of.get(task)
        if target is None:
            continue
        times = [time_to_target(m["tasks"][task]["series"], target) for m in runs]
        reach[task] = {"seconds": _pair(mean_std(times)), "reached": sum(t is not None for t in times),
                       "runs": len(times)}
    return {"runs": len(runs),
            # the exit each run was judged at, and its best exit (at the last evaluation): in run order
            "exits": {task: [m["tasks"][task]["exit"] for m in runs] for task in tasks},
            "best_exits": {task: [m["tasks"][task]["best_exit"] for m in runs] for task in tasks},
            "final_accuracy": {task: _pair(mean_std(m["tasks"][task]["final"] for m in runs)) for task in tasks},
            "mean_round_s": _pair(mean_std(m["mean_round_s"] for m in runs)),
            "wait_share": _pair(mean_std(m["wait_share"] for m in runs)),
            "time_to_target": reach,
            "compute_vs_full": _pair(mean_std(m["compute_vs_full"] for m in runs)),
            "memory_vs_full": _pair(mean_std(m["memory_vs_full"] for m in runs)),
            "bytes": _pair(mean_std(m["bytes"] for m in runs)),
            "curve": {task: mean_curve([m["tasks"][task]["series"] for m in runs]) for task in tasks}}


def relative_to(summary: dict, reference: dict | None) -> dict | None:
    """Mean round time and mean time to target over the reference strategy's (fedavg_full); None without it."""
    if reference is None:
        return None
    mean = lambda pair: pair[0] if pair else None  # noqa: E731
    ratio = lambda a, b: a / b if a is not None and b else None  # noqa: E731
    return {"mean_round_s": ratio(mean(summary["mean_round_s"]), mean(reference["mean_round_s"])),
            "time_to_target": {task: ratio(mean(reach["seconds"]), mean(reference["time_to_target"][task]["seconds"]))
                               for task, reach in summary["time_to_target"].items()}}


def comparison_pairs(strategies: list[str]) -> list[tuple[str, str]]:
    """(strategy, against) pairs the paired differences are given for: every federated strategy against
    fedavg_full, and depth_aware against layerwise and fedavg_hetero_naive, as far as they are compared."""
    pairs = [(name, TARGET_STRATEGY) for name in strategies
             if TARGET_STRATEGY in strategies and name not in (TARGET_STRATEGY, CENTRALIZED)]
    if DEPTH_AWARE in strategies:
        pairs += [(DEPTH_AWARE, other) for other in DEPTH_AWARE_AGAINST if other in strategies]
    return pairs


def comparison_figures(scenario: str, exits: list[int], task_exits: dict[str, int | str], strategies: list[str],
                       records: list[RunRecord], events: Mapping[str, list[dict]], target: float | None) -> dict:
    """compare.json: every run's figures and each strategy's summary; `events` maps run labels to their events."""
    per_run = {r.label: run_metrics(events[r.label], task_exits) for r in records if r.label in events}
    finished = {name: [per_run[r.label] for r in records
                       if r.strategy == name and r.label in per_run and per_run[r.label]["status"] == FINISHED]
                for name in strategies}
    tasks = sorted(task_exits)
    pooled = pool_depths(m["depths"] for runs in finished.values() for m in runs)
    full = pooled.get(exits[-1])  # full depth as every finished run measured it: same model, same host
    for metrics in per_run.values():
        metrics.update(costs_vs_full(metrics["depths"], full))
    target_of = targets(finished, tasks, target)
    errors, best_errors = error_table(finished, tasks), error_table(finished, tasks, "best_final")
    summaries = {name: {**strategy_figures(finished[name], tasks, target_of),
                        "error": {task: _pair(errors[task][name]) for task in tasks},
                        "best_error": {task: _pair(best_errors[task][name]) for task in tasks}}
                 for name in strategies}
    by_seed = {name: {r.seed: per_run[r.label] for r in records if r.strategy == name and r.label in per_run
                      and per_run[r.label]["status"] == FINISHED} for name in strategies}
    paired = [{"strategy": a, "against": b, **paired_differences(by_seed[a], by_seed[b], tasks)}
              for a, b in comparison_pairs(strategies)]
    for name, summary in summaries.items():  # the baseline's host seconds do not compare with emulated ones
        summary["vs_" + TARGET_STRATEGY] = (None if name == CENTRALIZED
                                            else relative_to(summary, summaries.get(TARGET_STRATEGY)))
    return {
        "scenario": scenario, "exits": exits, "task_exits": task_exits, "full_depth": exits[-1],
        "targets": target_of,
        "target_rule": ("--target" if target is not None else
                        f"{TARGET_STRATEGY} final accuracy minus {TARGET_MARGIN * 100:.0f} points"
                        if finished.get(TARGET_STRATEGY) else None),
        "runs": [asdict(r) for r in records],
        "strategies": summaries,
        "paired": paired,
        "depths": relative_depth_costs(pooled, full),
        "per_run": {label: {**m, "depths": {d: asdict(t) for d, t in m["depths"].items()}}
                    for label, m in per_run.items()},
    }
