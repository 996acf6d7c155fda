"""report.md and plots/*.png of a run directory, built from its events.jsonl alone (a crashed run's too)."""

from __future__ import annotations

import logging
from pathlib import Path

from testbed.errors import UserError
from testbed.events import read_events
from testbed.monitor import plots
from testbed.monitor.metrics import client_rows, depth_rows, round_rows, run_figures
from testbed.monitor.state import RunView, fold

log = logging.getLogger("testbed.report")


def _fmt(value, spec: str = ".2f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _mb(value) -> str:
    return _fmt(None if value is None else value / 1e6, ".2f")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def draw_plots(view: RunView, plots_dir: Path, target: float | None = None) -> dict[str, Path]:
    """Every figure of the report, as plots_dir/<name>.png."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    return {"accuracy": plots.accuracy(view, plots_dir / "accuracy.png", target),
            "gantt": plots.plot_gantt(view, plots_dir / "gantt.png"),
            "depths": plots.depths(view, plots_dir / "depths.png"),
            "rounds": plots.rounds(view, plots_dir / "rounds.png"),
            "depth_cost": plots.depth_cost(view, plots_dir / "depth_cost.png")}


def _summary_section(view: RunView, figures: dict) -> list[str]:
    dilation = figures["dilation"]
    status = f"**{figures['status']}**" + (f" ({figures['reason']})" if figures["reason"] else "")
    # two clocks, each named: the rounds' emulated seconds (what time_budget_s counts) and this host's seconds
    clock = figures["clock"]
    lines = [f"{status}: {figures['rounds_completed']}/{figures['rounds_planned'] or '?'} rounds in "
             f"{figures['trained_s']:.1f} s {clock} ({'rounds' if clock == 'emulated' else 'training'} only, what "
             f"time_budget_s counts; the run clock read {figures['run_emulated_s']:.1f} s {clock} at the end). Host: "
             f"{figures['run_host_s']:.1f} s wall in all, {figures['eval_host_s']:.1f} s evaluating, "
             f"{figures['aggregate_host_s']:.2f} s aggregating."]
    if view.event_clock:  # its dilation figure is 1 only by convention: emulated seconds are not host seconds there
        lines.append("Event clock: nothing waited, so no time dilation; compute and transfers were billed in "
                     "emulated seconds.")
    elif dilation:
        steps = " → ".join(f"×{factor:.3g}" for factor in figures["dilations"])
        why = ("last change: " if len(figures["dilations"]) > 1 else "") + (dilation.get("reason") or "no reason given")
        lines.append(f"Time dilation {steps} ({why}): emulated seconds are host wall seconds / factor.")
    if figures["backend"]:
        lines.append(f"Emulation backend: {figures['backend']}.")
    health = [f"client losses {figures['lost_events']}", f"dropped messages {figures['dropped_messages']}"]
    if figures["malformed_events"]:
        health.append(f"malformed events ignored {figures['malformed_events']}")
    if figures["unknown_kinds"]:
        kinds = ", ".join(f"{kind} ({count})" for kind, count in figures["unknown_kinds"].items())
        health.append(f"event kinds not shown here: {kinds}")
    rows = [["mean / max round time", f"{_fmt(figures['mean_round_emulated_s'])} / "
                                       f"{_fmt(figures['max_round_emulated_s'])} s emulated"],
            ["straggler wait share (idle / client time)", _fmt(figures["wait_share"], ".1%")],
            ["updates delivered / late or lost", f"{figures['updates']} / {figures['late']}"],
            ["data moved (both ways)", f"{_mb(figures['bytes'])} MB"],
            ["health", "; ".join(health)]]
    return ["", *lines, "", *_table(["key figure", "value"], rows)]


def _accuracy_section(view: RunView, target: float | None, figure: Path) -> list[str]:
    lines = ["", "## Accuracy", ""]
    if not view.evaluations:
        return [*lines, "No evaluation yet.", "", f"![accuracy](plots/{figure.name})"]
    last = view.evaluations[max(view.evaluations)]
    layers = sorted({layer for by_exit in last.accuracy.values() for layer in by_exit})
    rows = [[task, *(_fmt(last.accuracy[task].get(layer), ".1%") for layer in layers)]
            for task in sorted(last.accuracy)]
    lines += [f"Last evaluation (round {last.round}, after {last.trained_s:.1f} s {view.clock} of rounds):", "",
              *_table(["task", *(f"exit L{layer}" for layer in layers)], rows), ""]
    for task in view.tasks():
        best = view.best(task)
        if best is None:  # an evaluated event that gave the task no number (a file not written by testbed)
            lines.append(f"- {task}: no accuracy recorded")
            continue
        line = f"- {task}: best {best[0]:.1%} (exit L{best[1]}, round {best[2]}, first at {best[3]:.1f} s {view.clock})"
        if target is not None:
            reached = view.time_to_target(task, target)
            line += (f"; reached {target:.0%} at {reached[0]:.1f} s {view.clock} (round {reached[1]}, "
                     f"exit L{reached[2]})"
                     if reached
                     else f"; has not reached {target:.0%}")
        lines.append(line)
    return [*lines, "", f"![accuracy](plots/{figure.name})"]


def _rounds_section(view: RunView, figures: dict[str, Path]) -> list[str]:
    rows = [[str(r["round"]), _fmt(r["round_emulated_s"]), _fmt(r["deadline_emulated_s"], ".1f"),
             f"{r['updated']}/{r['selected']}", str(r["late"]), str(r["skipped"]), _fmt(r["wait_share"], ".0%"),
             _mb(r["bytes_down"]), _mb(r["bytes_up"]), _fmt(r["eval_host_s"])]
            for r in round_rows(view)]
    return ["", "## Rounds", "", *_table(["round", "round s (emulated)", "deadline s (emulated)", "updated",
                                           "late/lost", "skipped", "wait share", "MB down", "MB up", "eval s (host)"],
                                          rows),
            "", f"![rounds](plots/{figures['rounds'].name})", "", f"![gantt](plots/{figures['gantt'].name})"]


def _clients_section(view: RunView, figures: dict[str, Path]) -> list[str]:
    rows = [[r["client"], r["profile"], r["task"], r["link"], f"{r['updated']}/{r['asked']}", str(r["late"]),
             _fmt(r["mean_depth"], ".1f"), _fmt(r["download_s"]), _fmt(r["compute_s"]), _fmt(r["upload_s"]),
             _fmt(r["idle_s"]), _mb(r["bytes"])] for r in client_rows(view)]
    return ["", "## Clients", "", "Means over the rounds in which the client delivered an update; phase seconds "
            "are emulated (the device's speed and its link).", "",
            *_table(["client", "profile", "task", "link", "updated", "late/lost", "depth", "download s",
                     "compute s", "upload s", "idle s", "MB"], rows),
            "", f"![depths](plots/{figures['depths'].name})"]


def _depth_section(view: RunView, figures: dict[str, Path]) -> list[str]:
    rows = [[f"L{r['depth']}", str(r["updates"]), _fmt(r["cpu_host_s_per_clip"], ".4f"), _fmt(r["peak_mb"], ".0f"),
             _mb(r["bytes_down"]), _mb(r["bytes_up"]), _fmt(r["compute_emulated_s_per_clip"], ".4f"),
             ", ".join(r["profiles"])] for r in depth_rows(view)]
    note = ("What a depth costs: host CPU seconds per trained clip and peak memory, whichever device trained it. "
            "Emulated compute seconds per clip depend on which devices trained that depth (the last two columns).")
    return ["", "## Exit depths", "", note, "",
            *_table(["exit", "updates", "CPU s/clip (host)", "peak MB", "MB down", "MB up",
                     "compute s/clip (emulated)", "trained by"], rows),
            "", f"![depth cost](plots/{figures['depth_cost'].name})"]


def markdown(view: RunView, figures: dict[str, Path], target: float | None, event_count: int) -> str:
    lines = [f"# Run report: {view.scenario or 'unnamed run'}", *_summary_section(view, run_figures(view)),
             *_accuracy_section(view, target, figures["accuracy"]), *_rounds_section(view, figures),
             *_clients_section(view, figures), *_depth_section(view, figures),
             "", f"Built by `testbed report` from {event_count} events of events.jsonl."]
    return "\n".join(lines) + "\n"


def build_report(run_dir: Path, target: float | None = None) -> Path:
    """Write run_dir/report.md and run_dir/plots/*.png from run_dir/events.jsonl; returns the report's path."""
    run_dir = Path(run_dir)
    path = run_dir / "events.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no events.jsonl (not a run directory, or its run never started)")
    events = read_events(path)
    if not events:
        raise UserError(f"{path}: no complete event yet (the run never started)")
    view = fold(events)
    figures = draw_plots(view, run_dir / "plots", target)
    report = run_dir / "report.md"
    report.write_text(markdown(view, figures, target, len(events)), encoding="utf-8")
    return report


def build_report_or_warn(run_dir: Path) -> Path | None:
    """build_report for the end of `testbed run`: a failure is logged as a warning, never raised (the run's
    results are already on disk; `testbed report RUN_DIR` can try again)."""
    try:
        return build_report(run_dir)
    except Exception as error:
        log.warning("could not write the report of %s (%s: %s); retry with `testbed report %s`",
                    run_dir, type(error).__name__, error, run_dir)
        return None
