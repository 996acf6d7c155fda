"""Run each strategy (x seed) of a comparison one after the other, then write the compare directory.

compare/<scenario>-<time>/
  <strategy>-s<seed>/     an ordinary run directory per run
  compare.md              the paper-shaped error table and the cost table
  compare.json            every figure
  accuracy_vs_time.png    accuracy at each task's exit against emulated time, one line per strategy
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

from testbed.compare.centralized import run_centralized
from testbed.compare.metrics import mean_std, run_metrics, task_exit, time_to_target
from testbed.config.loader import load_scenario
from testbed.errors import UserError
from testbed.events import read_events

log = logging.getLogger("testbed.compare")
CENTRALIZED = "centralized"  # not a strategy: the baseline with all data in one process
TARGET_MARGIN = 0.02  # target accuracy = fedavg_full's final accuracy minus 2 points


class QuietPrinter:
    """One line per finished run instead of a line per event."""

    def __init__(self, events_path: Path):
        self.events_path = events_path

    def poll(self) -> None:
        pass

    def finish(self, run_dir: Path, summary: dict, exit_code: int | None) -> None:
        print(f"  {run_dir.name}: {summary.get('status')}, {summary.get('rounds_completed')} rounds, "
              f"{summary.get('run_seconds', 0):.1f} emulated s", flush=True)


def compare(scenario_path: str, strategies: list[str], seeds: int, overrides: list[str],
            out: str | None = None, target: float | None = None) -> Path:
    """Run every strategy for `seeds` seeds (scenario seed, +1, ...) and write the comparison."""
    from testbed.launch.run import run

    scenario = load_scenario(scenario_path, overrides)  # validates before anything starts
    for name in strategies:
        if name != CENTRALIZED:
            load_scenario(scenario_path, [*overrides, f"strategy.name={name}"])
    directory = Path(out) if out else Path("compare") / f"{scenario.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if directory.exists() and any(directory.iterdir()):
        raise UserError(f"--out {directory} exists and is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[Path]] = {name: [] for name in strategies}
    for name in strategies:
        for offset in range(seeds):
            seed = scenario.seed + offset
            label = f"{name}-s{seed}"
            print(f"{label}:", flush=True)
            try:
                if name == CENTRALIZED:
                    run_dir = run_centralized(scenario_path, [*overrides, f"seed={seed}"], directory / label)
                    print(f"  {label}: finished", flush=True)
                else:
                    run_dir = run(scenario_path, [*overrides, f"strategy.name={name}", f"seed={seed}"],
                                  out=str(directory / label), make_printer=QuietPrinter)
                runs[name].append(run_dir)
            except UserError as error:  # one failed run does not end the comparison
                print(f"  {label} failed: {error}", flush=True)
                log.warning("%s failed: %s", label, error)
    write_comparison(directory, scenario, runs, target)
    return directory


def write_comparison(directory: Path, scenario, runs: dict[str, list[Path]], target: float | None) -> None:
    logs = {name: [read_events(d / "events.jsonl") for d in dirs if (d / "events.jsonl").exists()]
            for name, dirs in runs.items()}
    started = next((e for events in logs.values() for log_ in events for e in log_ if e["kind"] == "run_started"),
                   None)
    if started is None:
        raise UserError(f"no run of the comparison started: see the run directories in {directory}")
    exits = tuple(started["exits"])
    tasks = sorted({entry.task for entry in scenario.fleet})
    task_exits = {task: task_exit(scenario.exit_policy.preferred_exits.get(task), exits) for task in tasks}
    metrics = {name: [run_metrics(events, task_exits) for events in log_list] for name, log_list in logs.items()}
    targets = {}
    for task in tasks:
        if target is not None:
            targets[task] = target
        elif metrics.get("fedavg_full"):
            final = mean_std([m["tasks"][task]["final"] for m in metrics["fedavg_full"]])
            targets[task] = final[0] - TARGET_MARGIN if final else None
    table = _tables(scenario.name, tasks, task_exits, metrics, targets)
    (directory / "compare.md").write_text(table)
    (directory / "compare.json").write_text(json.dumps(
        {"scenario": scenario.name, "task_exits": task_exits, "targets": targets,
         "runs": {name: [str(d) for d in dirs] for name, dirs in runs.items()}, "metrics": metrics}, indent=1))
    _plot(directory, tasks, task_exits, metrics)
    print(table)


def _cell(values: list[float | None], scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    stats = mean_std(values)
    if stats is None:
        return "-"
    mean, std = stats
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}{unit}"


def _tables(name: str, tasks: list[str], task_exits: dict, metrics: dict, targets: dict) -> str:
    strategies = list(metrics)
    lines = [f"# Comparison: {name}", "",
             "Error (1 - accuracy, %) at each task's exit after the last round, mean ± std over seeds "
             f"({', '.join(f'{s}: {len(metrics[s])} runs' for s in strategies)})."
             + (" centralized: all data in one process, host seconds, no emulation." if CENTRALIZED in metrics else ""),
             "",
             "| task (exit) | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    for task in tasks:
        cells = [_cell([None if m["tasks"][task]["final"] is None else 1 - m["tasks"][task]["final"]
                        for m in metrics[s]], 100) for s in strategies]
        lines.append(f"| {task} (L{task_exits[task]}) | " + " | ".join(cells) + " |")
    lines += ["", "Cost. Times are emulated seconds of training (evaluation excluded). Wait share = Σ idle / "
              "Σ client time. Compute and memory: each update's step CPU time and peak memory at its depth "
              "relative to the same client's at full depth. Time to target: first evaluation at or above the "
              "target at the task's exit" + "".join(f"; {task} target {targets[task]:.1%}" for task in tasks
                                                   if targets.get(task) is not None) + ".", "",
              "| | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    rows = [("mean round time, s", lambda m: m["mean_round_s"], 1, 2, ""),
            ("straggler wait share, %", lambda m: m["wait_share"], 100, 1, ""),
            ("compute vs full depth, %", lambda m: m["compute_vs_full"], 100, 0, ""),
            ("peak memory vs full depth, %", lambda m: m["memory_vs_full"], 100, 0, ""),
            ("bytes moved, MB", lambda m: m["bytes"], 1e-6, 1, "")]
    for label, get, scale, digits, unit in rows:
        lines.append(f"| {label} | " + " | ".join(_cell([get(m) for m in metrics[s]], scale, digits, unit)
                                                 for s in strategies) + " |")
    for task in tasks:
        if targets.get(task) is None:
            continue
        cells = []
        for s in strategies:
            times = [time_to_target(m["tasks"][task]["series"], targets[task]) for m in metrics[s]]
            reached = [t for t in times if t is not None]
            cells.append(_cell(reached, 1, 1) + (f" ({len(reached)}/{len(times)} reached)" if times else ""))
        lines.append(f"| time to target, {task}, s | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(directory: Path, tasks: list[str], task_exits: dict, metrics: dict) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * max(1, len(tasks)), 4), layout="constrained")
    axes = figure.subplots(1, max(1, len(tasks)), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        for name, runs in metrics.items():
            curves = [m["tasks"][task]["series"] for m in runs if m["tasks"][task]["series"]]
            if not curves:
                continue
            length = min(len(c) for c in curves)  # the evaluations every seed has
            times = [statistics_mean([c[i][0] for c in curves]) for i in range(length)]
            values = [statistics_mean([c[i][1] for c in curves]) for i in range(length)]
            ax.plot(times, values, marker="o", label=name)
        ax.set_title(f"{task}, exit L{task_exits[task]}")
        ax.set_xlabel("emulated training time, s")
        ax.set_ylabel("accuracy (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.savefig(directory / "accuracy_vs_time.png", dpi=110)


def statistics_mean(values: list[float]) -> float:
    return sum(values) / len(values)
