"""The report's figures: one PNG each, drawn with matplotlib's Agg canvas from a RunView (no display needed).

Every time axis names its clock. Accuracy is plotted against the rounds' emulated seconds (what
time_budget_s counts: evaluating is measurement, not training, and runs on host seconds); the
client phases against the event clock (emulated seconds, evaluation and the wait for clients
included). What a depth costs is host CPU seconds per clip and peak memory: emulated compute
seconds would compare the devices that happened to train each depth, not the depths.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from testbed.monitor.metrics import LATE, depth_samples, depth_totals, round_rows
from testbed.monitor.state import RunView, fold, number

PHASE_COLORS = {"download": "#4c8fd6", "compute": "#3a9e50", "upload": "#a45fc4", "idle": "#dddddd"}
TIME_LABEL = "time of the rounds, {clock} s (evaluation excluded)"
CLOCK_LABEL = "run clock, emulated s (evaluation and joining included)"
DPI = 110


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path


def _empty(axes, what: str) -> None:
    axes.text(0.5, 0.5, f"no {what} in the events (yet)", ha="center", va="center", transform=axes.transAxes,
              color="grey")
    axes.set_xticks([])
    axes.set_yticks([])


def _task_axes(tasks: list[str], title: str) -> tuple[Figure, list]:
    figure = Figure(figsize=(5.0 * max(1, len(tasks)), 3.8))
    axes = figure.subplots(1, max(1, len(tasks)), squeeze=False)[0]
    figure.suptitle(title)
    return figure, list(axes)


def accuracy(view: RunView, path: Path, target: float | None = None) -> Path:
    """Accuracy of every exit, one panel per task, against the rounds' emulated seconds."""
    tasks = view.tasks()
    figure, axes = _task_axes(tasks, f"accuracy per exit · {view.scenario or 'run'}")
    if not tasks:
        _empty(axes[0], "evaluation")
    for ax, task in zip(axes, tasks):
        for layer in view.exit_layers(task):
            series = view.accuracy_series(task, layer)
            ax.plot([s[0] for s in series], [s[2] for s in series], marker="o", markersize=3, label=f"exit L{layer}")
        if target is not None:
            ax.axhline(target, color="black", linestyle=":", linewidth=1, label=f"target {target:.0%}")
        ax.set_title(task)
        ax.set_xlabel(TIME_LABEL.format(clock=view.clock))
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a task evaluated without numbers has no line to name
            ax.legend(fontsize=8)
    return _save(figure, path)


def plot_gantt(view: RunView, path: Path) -> Path:
    """Every client's download / compute / upload / idle per round on the run's time axis; red: never delivered."""
    clients = list(view.clients)
    figure = Figure(figsize=(11, 1.2 + 0.35 * max(3, len(clients))))
    ax = figure.subplots()
    rounds = [view.rounds[i] for i in sorted(view.rounds)]
    if not rounds:
        _empty(ax, "round")
        return _save(figure, path)
    for y, cid in enumerate(clients):
        for round_ in rounds:
            part = round_.clients.get(cid)
            if part is None:
                continue
            late = part.status in LATE
            for segment in round_.segments(cid, view.t):
                if segment.end_s > segment.start_s:
                    ax.broken_barh([(round_.started_t + segment.start_s, segment.end_s - segment.start_s)],
                                   (y - 0.38, 0.76), facecolors=PHASE_COLORS[segment.phase],
                                   edgecolor="red" if late else "none", hatch="///" if late else None, linewidth=0.8)
    for round_ in rounds:
        ax.axvline(round_.started_t, color="black", linewidth=0.6, alpha=0.5)
        ax.text(round_.started_t, -0.55, f" r{round_.index}", fontsize=7, va="bottom")
    ax.set_yticks(range(len(clients)), clients)
    ax.set_ylim(len(clients) - 0.5, -1.0)  # first client on top, room above it for the round labels
    ax.set_xlabel(CLOCK_LABEL)
    ax.set_title(f"client phases per round · {view.scenario or 'run'}")
    handles = [Patch(color=color, label=phase) for phase, color in PHASE_COLORS.items()]
    handles.append(Patch(facecolor="white", edgecolor="red", hatch="///", label="no update (late, lost)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(figure, path)


def depths(view: RunView, path: Path) -> Path:
    """The exit each client trained to in each round; crosses: asked but no update delivered."""
    figure = Figure(figsize=(9, 4))
    ax = figure.subplots()
    clients = list(view.clients)
    offsets = {cid: (i - (len(clients) - 1) / 2) * min(0.08, 0.6 / max(1, len(clients)))
               for i, cid in enumerate(clients)}  # layers apart: clients at one depth stay visible
    drawn = False
    for cid in clients:
        # (round, plotted depth, status) of the rounds it was asked to and chose an exit in
        points = [(i, depth + offsets[cid], r.clients[cid].status) for i, r in sorted(view.rounds.items())
                  if cid in r.clients and (depth := r.clients[cid].depth)]
        if not points:
            continue
        drawn = True
        ax.plot([i for i, _, _ in points], [y for _, y, _ in points], marker="o",
                       markersize=4, linewidth=1, label=cid)
        missed = [(i, y) for i, y, status in points if status in LATE]
        if missed:
            ax.scatter([i for i, _ in missed], [y for _, y in missed], marker="x", s=60, color="red", zorder=3)
    if not drawn:
        _empty(ax, "depth choice")
    else:
        layers = view.exits or sorted({p.depth for r in view.rounds.values() for p in r.clients.values() if p.depth})
        ax.set_yticks(layers, [f"L{layer}" for layer in layers])
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("exit depth")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"exit depth per client · {view.scenario or 'run'}")
    return _save(figure, path)


def rounds(view: RunView, path: Path) -> Path:
    """Round time in emulated seconds (bars, red when someone was late) against the deadline, and the straggler
    wait share."""
    rows = round_rows(view)
    figure = Figure(figsize=(9, 4))
    ax = figure.subplots()
    if not rows:
        _empty(ax, "closed round")
        return _save(figure, path)
    index = [r["round"] for r in rows]
    ax.bar(index, [r["round_emulated_s"] for r in rows], color=["#d9534f" if r["late"] else "#5b8fd6" for r in rows],
           label="round time (emulated s; red: someone late)")
    deadlines = [(i, r["deadline_emulated_s"]) for i, r in zip(index, rows) if r["deadline_emulated_s"] is not None]
    if deadlines:
        ax.hlines([d for _, d in deadlines], [i - 0.45 for i, _ in deadlines], [i + 0.45 for i, _ in deadlines],
                  color="black", linestyle="--", linewidth=1, label="deadline")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("emulated s")
    share = ax.twinx()
    share.plot(index, [r["wait_share"] if r["wait_share"] is not None else float("nan") for r in rows],
               color="#e08a1e", marker="o", label="straggler wait share")
    share.set_ylim(0, 1)
    share.set_ylabel("idle / client time")
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = share.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=3, frameon=False)
    ax.set_title(f"round time and straggler wait share · {view.scenario or 'run'}")
    return _save(figure, path)


def depth_cost(view: RunView, path: Path) -> Path:
    """Peak memory and host CPU seconds per clip by exit depth: the mean over the depth's delivered updates (bar)
    and each update (dot). Host CPU time is the work done whatever the device's speed, so depths compare as
    depths; the emulated compute seconds (device-dependent) are in the report's table, apart."""
    totals, samples = depth_totals(view), depth_samples(view)
    figure = Figure(figsize=(10, 3.8))
    memory_ax, cpu_ax = figure.subplots(1, 2)

    def cpu_per_clip(part) -> float | None:
        cpu, clips = number(part.row.get("cpu_s")), number(part.row.get("samples"))
        return cpu / clips if cpu is not None and clips else None

    for ax, label, mean, each in ((memory_ax, "peak memory, MB", lambda t: t.mean_peak_mb,
                                   lambda p: number(p.row.get("peak_mb"))),
                                  (cpu_ax, "host CPU s per clip", lambda t: t.cpu_per_sample, cpu_per_clip)):
        means = {depth: value for depth, figures in totals.items() if (value := mean(figures)) is not None}
        if not means:
            _empty(ax, label.split(",")[0])
            continue
        positions = range(len(means))
        ax.bar(positions, list(means.values()), color="#dde3ec")
        for x, depth in zip(positions, means):
            dots = [v for _, part in samples.get(depth, []) if (v := each(part)) is not None]
            ax.scatter([x] * len(dots), dots, s=14, zorder=3, color="#3a6ea5")
        ax.set_xticks(list(positions), [f"L{depth}" for depth in means])
        ax.set_xlabel("exit depth")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    figure.suptitle(f"memory and host CPU per clip by depth (bar: mean, dot: an update) · {view.scenario or 'run'}")
    return _save(figure, path)


def accuracy_comparison(runs: list[tuple[str, list[dict]]], path: Path, exit_layer: int | None = None) -> Path:
    """Accuracy against the rounds' emulated seconds, one line per labelled run, one panel per task: the given
    exit's, or (None) the best exit's at each evaluation. For comparing strategies or scenarios."""
    views = [(label, fold(events)) for label, events in runs]
    tasks = sorted({task for _, view in views for task in view.tasks()})
    which = f"exit L{exit_layer}" if exit_layer is not None else "best exit"
    figure, axes = _task_axes(tasks, f"accuracy ({which}) against the rounds' emulated time")
    if not tasks:
        _empty(axes[0], "evaluation")
    for ax, task in zip(axes, tasks):
        for label, view in views:
            points = [(e.trained_s, max(e.accuracy[task].values()) if exit_layer is None
                       else e.accuracy[task][exit_layer]) for _, e in sorted(view.evaluations.items())
                      if e.accuracy.get(task) and (exit_layer is None or exit_layer in e.accuracy[task])]
            if points:  # a run on another clock says so (the centralized baseline: host seconds)
                ax.plot(*zip(*points), marker="o", markersize=3,
                        label=label if view.clock == "emulated" else f"{label} ({view.clock} s)")
        ax.set_title(task)
        ax.set_xlabel(TIME_LABEL.format(clock="emulated"))
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a task evaluated without numbers has no line to name
            ax.legend(fontsize=8)
    return _save(figure, path)

