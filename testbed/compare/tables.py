"""compare.md: the paper-shaped error table, the cost table and the cost per depth, from compare.json's figures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from testbed.compare.figures import CENTRALIZED, FINISHED
from testbed.compare.metrics import TARGET_STRATEGY

# a table row's cell from one strategy's figures; `...`, not [dict]: mypy infers no lambda
# that binds the loop's `task` as a default argument against a one-parameter signature
CellOf = Callable[..., str]


def cell(stats: list[float] | None, scale: float = 1.0, digits: int = 1) -> str:
    """"mean ± std" of a (mean, std) pair, scaled; "-" when there is none."""
    if not stats:
        return "-"
    mean, std = stats
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _header(first: str, columns: list[str]) -> list[str]:
    return [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]


def exit_label(rule: int | str) -> str:
    """How a task's exit rule reads in a header: "L6", or "auto" (each run's own pick)."""
    return f"L{rule}" if isinstance(rule, int) else str(rule)


def _exits_cell(layers: list[int | None]) -> str:
    """The exits of a strategy's runs, in run order: "L4 L4 L6"."""
    return " ".join("-" if layer is None else f"L{layer}" for layer in layers) or "-"


def error_lines(figures: dict) -> list[str]:
    strategies = figures["strategies"]
    auto = sorted(task for task, rule in figures["task_exits"].items() if not isinstance(rule, int))
    lines = ["## Error at each task's exit", "",
             "Error (1 - accuracy, %) after the last round, mean ± std over seeds (finished runs: "
             + ", ".join(f"{name} {s['runs']}" for name, s in strategies.items())
             + "). A task's exit is its preferred exit in the scenario, else the deepest"
             + ("; for an `auto` preferred exit, the exit the rule picked at each run's last evaluation (the "
                "shallowest within 1 point of the best: where its clients trained next), listed below"
                if auto else "") + ".", ""]
    lines += _header("task (exit)", list(strategies))
    for task, rule in sorted(figures["task_exits"].items()):
        lines.append(f"| {task} ({exit_label(rule)}) | " + " | ".join(cell(s["error"][task], 100)
                                                                     for s in strategies.values()) + " |")
    for task in auto:
        lines.append(f"| {task}: auto exits | " + " | ".join(_exits_cell(s["exits"][task])
                                                             for s in strategies.values()) + " |")
    lines += ["", "## Error at each task's best exit", "",
              "The same runs, each at the exit with the least error at its last evaluation (which one is listed).",
              ""]
    lines += _header("task", list(strategies))
    for task in sorted(figures["task_exits"]):
        lines.append(f"| {task} | " + " | ".join(f"{cell(s['best_error'][task], 100)} "
                                                 f"({_exits_cell(s['best_exits'][task])})"
                                                 for s in strategies.values()) + " |")
    return lines


def interval(stats: dict | None, scale: float, unit: str, signed: bool) -> str:
    """"+1.2 [-0.5, +2.9] (n=3)": mean and 95 % interval; "-" without values."""
    if not stats:
        return "-"
    spec = "+.1f" if signed else ".2f"

    def form(value: float) -> str:
        return f"{value * scale:{spec}}{unit}"

    interval = f" [{form(stats['ci'][0])}, {form(stats['ci'][1])}]" if stats["ci"] else ""
    return f"{form(stats['mean'])}{interval} (n={stats['n']})"


def paired_lines(figures: dict) -> list[str]:
    """Seed by seed differences against fedavg_full (and depth_aware against layerwise, fedavg_hetero_naive)."""
    if not figures.get("paired"):
        return []
    tasks = sorted(figures["task_exits"])
    lines = ["## Paired differences, seed by seed", "",
             "Each strategy's run against the other's of the same seed (same fleet, data and initial state): "
             "final error difference in points at each task's exit (negative: fewer errors), and the ratio of "
             "mean round times; mean over the seeds both finished, with a 95 % confidence interval (Student's t; "
             "none for one seed).", ""]
    lines += _header("pair", [f"{task} error, points" for task in tasks] + ["mean round time ratio"])
    for pair in figures["paired"]:
        cells = [interval(pair["error"][task], 100, "", True) for task in tasks]
        cells.append(interval(pair["round_time_ratio"], 1, "x", False))
        lines.append(f"| {pair['strategy']} vs {pair['against']} | " + " | ".join(cells) + " |")
    return lines


def _time_cell(reach: dict | None) -> str:
    if not reach or not reach["runs"]:
        return "-"
    return f"{cell(reach['seconds'])} ({reach['reached']}/{reach['runs']} reached)"


def cost_lines(figures: dict) -> list[str]:
    strategies = figures["strategies"]
    rows: list[tuple[str, CellOf]] = [
        ("mean round time, s", lambda s: cell(s["mean_round_s"], 1, 2)),
        ("straggler wait share, %", lambda s: cell(s["wait_share"], 100)),
        ("client compute vs full depth, %", lambda s: cell(s["compute_vs_full"], 100, 0)),
        ("client peak memory vs full depth, %", lambda s: cell(s["memory_vs_full"], 100, 0)),
        ("bytes moved, MB", lambda s: cell(s["bytes"], 1e-6))]
    versus = lambda s: s["vs_" + TARGET_STRATEGY] or {}  # noqa: E731  (none for the baseline)
    if TARGET_STRATEGY in strategies:
        rows.append((f"mean round time vs {TARGET_STRATEGY}", lambda s: _times(versus(s).get("mean_round_s"))))
    for task, target in sorted(figures["targets"].items()):
        if target is not None:
            rows.append((f"time to {target:.1%}, {task}, s",
                         lambda s, task=task: _time_cell(s["time_to_target"].get(task))))
            if TARGET_STRATEGY in strategies:
                rows.append((f"time to {target:.1%}, {task}, vs {TARGET_STRATEGY}",
                             lambda s, task=task: _times(versus(s).get("time_to_target", {}).get(task))))
    missing = [task for task, target in sorted(figures["targets"].items()) if target is None]
    target_note = (f" Target: {figures['target_rule']}, at each task's exit" if figures["target_rule"]
                   else " No time to target: compare fedavg_full or give --target")
    if figures["target_rule"] and missing:
        target_note += f"; none for {', '.join(missing)} (no finished {TARGET_STRATEGY} run above 2 %)"
    target_note += "."
    lines = ["## Cost", "",
             "Round time and time to target: emulated seconds of training (evaluation excluded). Wait share: "
             "Σ idle / Σ client time (download + compute + upload + idle) over delivered updates. Client "
             "compute: host CPU seconds per trained clip over all updates, relative to a full-depth update's; "
             f"peak memory: mean peak resident memory per update, relative to a full-depth update's (full depth "
             f"L{figures['full_depth']}, pooled over every finished run).{target_note}", ""]
    lines += _header("", list(strategies))
    lines += [f"| {label} | " + " | ".join(get(s) for s in strategies.values()) + " |" for label, get in rows]
    return lines


def depth_lines(figures: dict) -> list[str]:
    lines = ["## Cost per trained depth", "",
             "Delivered updates of every finished run, pooled. CPU: host CPU seconds per trained clip; "
             "compute: emulated seconds per clip (depends on which devices trained to that depth).", ""]
    lines += _header("depth", ["updates", "CPU s/clip", "vs full", "compute s/clip", "peak MB", "vs full"])
    for depth, row in figures["depths"].items():
        lines.append(f"| L{depth} | {row['updates']} | {_number(row['cpu_s_per_sample'], 4)} | "
                     f"{_ratio(row['compute_vs_full'])} | {_number(row['compute_s_per_sample'], 4)} | "
                     f"{_number(row['peak_mb'], 0)} | {_ratio(row['memory_vs_full'])} |")
    return lines


def run_lines(figures: dict) -> list[str]:
    lines = ["## Runs", ""]
    codes = {run.get("code") for run in figures["runs"]} - {None}
    if len(codes) > 1:  # a comparison resumed by other code: its runs may not compare
        lines += [f"**Made by {len(codes)} code versions** ({', '.join(sorted(codes))}): each run says which.", ""]
    for run in figures["runs"]:
        where = f" in `{Path(run['directory']).name}/`" if run["directory"] else ""
        why = f": {run['error']}" if run["error"] else ""
        left_out = "" if run["status"] == FINISHED else " (not in the tables)"
        made = f", made by {run['code']}" if len(codes) > 1 and run.get("code") else ""
        lines.append(f"- {run['label']}: {run['status']}{why}{where}{made}{left_out}")
    return lines


def markdown(figures: dict) -> str:
    """The whole of compare.md."""
    lines = [f"# Comparison: {figures['scenario']}", ""]
    if CENTRALIZED in figures["strategies"]:
        lines += ["`centralized` is the baseline with all of the fleet's data in one process: its times are this "
                  "host's wall seconds of training, with no device or link emulation, and it moves no bytes.", ""]
    for section in (error_lines, paired_lines, cost_lines, depth_lines, run_lines):
        lines += [*section(figures), ""]
    return "\n".join(lines)
