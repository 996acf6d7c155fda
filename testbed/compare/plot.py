"""accuracy_vs_time.png: accuracy at each task's exit against training time, one line per strategy (mean over seeds).

testbed.monitor.plots.accuracy_comparison draws one line per run at one exit for every task; a
comparison needs each task at its own exit and the mean over seeds, hence this figure.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from testbed.compare.figures import CENTRALIZED
from testbed.compare.tables import exit_label

DPI = 110


def accuracy_vs_time(figures: dict, path: Path) -> Path:
    """One panel per task; the centralized baseline's line is in host seconds and says so in its label."""
    tasks = sorted(figures["task_exits"])
    figure = Figure(figsize=(5.5 * max(1, len(tasks)), 4.0), layout="constrained")
    axes = figure.subplots(1, max(1, len(tasks)), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        for name, summary in figures["strategies"].items():
            curve = summary["curve"].get(task) or []
            if curve:
                label = f"{name} (host s)" if name == CENTRALIZED else name
                ax.plot([t for t, _ in curve], [value for _, value in curve], marker="o", markersize=3, label=label)
        target = figures["targets"].get(task)
        if target is not None:
            ax.axhline(target, color="black", linestyle=":", linewidth=1, label=f"target {target:.0%}")
        ax.set_title(f"{task}, exit {exit_label(figures['task_exits'][task])}")
        ax.set_xlabel("emulated training time, s (evaluation excluded)")
        ax.set_ylabel("accuracy (mean over seeds)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(f"accuracy against time · {figures['scenario']}")
    figure.savefig(path, dpi=DPI)
    return path
