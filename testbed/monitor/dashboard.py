"""The dashboard screen, drawn from a RunView alone: compact on an 80x24 terminal, roomier when bigger.

`Dashboard(view, clock)` is a rich renderable that lays itself out for the console's size each
time it is drawn, so a resized terminal gets the layout that fits it. Its times are on the run's clock
(the run clock, rounds, phases, when accuracy was reached: emulated seconds, host seconds for the
centralized baseline), and it says which.
"""

from __future__ import annotations

from collections.abc import Callable

from rich import box
from rich.console import Console, ConsoleOptions, Group, JustifyMethod, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from testbed.monitor.console import describe
from testbed.monitor.state import ClientRound, ClientView, RoundView, RunView

WIDE = (120, 36)  # columns, rows: from this size on, the wide layout (side-by-side panels, more rounds)
PHASES = {"download": ("░", "cyan"), "compute": ("█", "green"), "upload": ("▓", "magenta"),
          "idle": ("·", "bright_black")}
STATE_STYLES = {"asked": "yellow", "downloading": "cyan", "training": "green", "uploading": "magenta",
                "updated": "bold green", "idle": "bright_black", "joined": "bright_black", "ready": "bright_black",
                "loading": "bright_black", "back": "yellow", "skipped": "bright_black", "discarded": "yellow"}
TROUBLE = ("lost", "left", "late", "straggler", "straggling", "offline", "frozen", "failed")  # drawn red
STATE_LABELS = {"downloading": "download", "training": "train", "uploading": "upload", "updated": "done",
                "straggler": "late"}
STATUS_STYLES = {"running": "bold green", "finished": "bold cyan", "interrupted": "bold yellow",
                 "failed": "bold red", "waiting": "bright_black"}
SPARKS = "▁▂▃▄▅▆▇█"


# ---------------------------------------------------------------- small formatters
def seconds(value: float | None) -> str:
    """Compact seconds: 0.42, 9.8, 123, 2.1k; '-' when unknown."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}" if value < 1 else f"{value:.1f}"
    return f"{value:.0f}" if value < 1000 else f"{value / 1000:.1f}k"


def clock_time(value: float) -> str:
    value = int(max(0.0, value))
    return f"{value // 3600:d}:{value // 60 % 60:02d}:{value % 60:02d}"


def megabytes(value) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value / 1e6:.1f}"


def state_text(state: str) -> Text:
    style = "bold red" if state in TROUBLE else STATE_STYLES.get(state, "white")
    return Text(STATE_LABELS.get(state, state), style=style)


def shown_state(client: ClientView, part: ClientRound | None) -> str:
    """The state to show: 'updated' once its update is in, even after its heartbeat went back to idle."""
    if part is not None and part.status == "updated" and client.state in ("idle", "updated"):
        return "updated"
    return client.state


def bar(done: float, total: float, width: int, style: str = "green") -> Text:
    """A left-to-right fill bar of `width` cells (eighths of a cell resolved)."""
    fraction = 0.0 if not total else min(1.0, max(0.0, done / total))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    text = Text("█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else ""), style=style)
    text.append("─" * (width - len(text)), style="bright_black")
    return text


def sparkline(values: list[float], low: float, high: float) -> str:
    span = high - low
    if span <= 1e-9:
        return SPARKS[3] * len(values)
    return "".join(SPARKS[min(7, int((v - low) / span * 7.999))] for v in values)


def gantt_bar(round_: RoundView, client: str, now_t: float, width: int) -> Text:
    """A client's phases in a round as `width` cells of block characters (red when it never finished)."""
    span = max(round_.emulated_s(now_t), 1e-6)
    part = round_.clients.get(client)
    if part is None:
        return Text(" " * width)
    if part.status == "skipped":
        return Text("skipped".center(width, "-")[:width], style="bright_black")
    segments = round_.segments(client, now_t)
    trouble = part.status in TROUBLE
    text = Text()
    for cell in range(width):
        start, end = cell * span / width, (cell + 1) * span / width
        overlaps = [(min(end, s.end_s) - max(start, s.start_s), s.phase) for s in segments]
        overlap, phase = max(overlaps, default=(0.0, ""))
        if overlap <= 0:
            text.append(" ")
            continue
        char, style = PHASES[phase]
        text.append(char, style="red" if trouble and phase != "idle" else style)
    if part.status in ("lost", "left"):
        stop = min(width - 1, int(max((s.end_s for s in segments), default=0.0) / span * width))
        text = text[:stop] + Text("✗", style="bold red") + Text(" " * (width - stop - 1))
    return text


def one_line(text: Text, width: int) -> Text:
    """`text` cut to `width` cells with an ellipsis: a line of the screen never wraps."""
    text.no_wrap, text.overflow = True, "ellipsis"
    text.truncate(width, overflow="ellipsis")
    return text


def legend() -> Text:
    text = Text()
    for phase, (char, style) in PHASES.items():
        text.append(char * 2, style=style).append(f" {phase}  ")
    return text.append("red: did not finish", style="red")


# ---------------------------------------------------------------- parts of the screen
def header(view: RunView, now_t: float) -> Text:
    text = Text(" testbed ", style="bold reverse")
    text.append(f" {view.scenario or '(waiting for the run to start)'} ", style="bold")
    if view.current is not None:
        text.append(f"· round {view.current}/{view.rounds_planned or '?'} ")
    text.append(f"· {clock_time(now_t)} {view.clock} · ")
    text.append(view.status, style=STATUS_STYLES.get(view.status, "white"))
    if view.event_clock:
        speedup = view.speedup()
        text.append(" · event clock" + (f", {speedup:.3g} s per host s" if speedup else ""), style="yellow")
    elif view.dilation:
        text.append(f" · time ×{view.dilation['factor']:.3g}", style="yellow")
    if view.backend:
        text.append(f" · {view.backend} backend")
    return text


def round_status(view: RunView, now_t: float, width: int, names: bool = True) -> Text:
    """One line: the round's elapsed time against its deadline and (`names`) who it still waits for."""
    round_ = view.round_view()
    if round_ is None:
        joined = sum(c.state != "expected" for c in view.clients.values())
        return one_line(Text(f"waiting for clients: {joined}/{len(view.clients) or '?'} joined", style="yellow"), width)
    text = Text(f"round {round_.index} ", style="bold")
    if round_.closed is not None:
        closed = round_.closed
        text.append(f"closed in {seconds(round_.emulated_s(now_t))} s emulated: {closed.get('updates', '?')}/"
                    f"{closed.get('selected', '?')} updates, {closed.get('stragglers', 0)} late, "
                    f"{closed.get('lost', 0)} lost")
        if view.ended and view.reason:
            text.append(f" · run {view.status}: {view.reason}")
        return one_line(text, width)
    elapsed, deadline = round_.emulated_s(now_t), round_.deadline_s
    if deadline:
        late = elapsed > deadline
        text.append_text(bar(elapsed, deadline, 16, "red" if late else "blue"))
        text.append(f" {seconds(elapsed)}/{seconds(deadline)} s ", style="red" if late else "")
    else:
        text.append(f"{seconds(elapsed)} s ")
    out = round_.out()
    text.append(f"waiting for {len(out)}/{len(round_.clients)}" + (": " if names and out else ""))
    for cid in out if names else []:
        if len(text) + len(cid) + 2 > width:
            text.append("…")
            break
        text.append(f"{cid} ", style="red" if view.clients[cid].state in TROUBLE else "yellow")
    return one_line(text, width)


def visible_clients(view: RunView, rows: int) -> tuple[list[ClientView], int]:
    """At most `rows` clients in fleet order, those the round waits for or in trouble first; and how many left out."""
    clients = list(view.clients.values())
    if len(clients) <= rows:
        return clients, 0
    round_ = view.round_view()
    out = set(round_.out()) if round_ is not None else set()
    urgent = [c for c in clients if c.client in out or c.state in TROUBLE]
    chosen = {c.client for c in (urgent + clients)[:max(0, rows - 1)]}
    shown = [c for c in clients if c.client in chosen]
    return shown, len(clients) - len(shown)


NUMERIC = ("down", "comp", "up", "idle", "MB", "MB ↓/↑")  # right-aligned columns of the fleet table


def fleet_columns(name_width: int, compact: bool) -> list[tuple[str, int]]:
    """(header, width) of the fleet table's columns; widths in cells, without the space after each."""
    columns = [("id", name_width), ("profile", 9 if compact else 16), ("task", 7), ("state", 8), ("exit", 4),
               ("steps", 6 if compact else 16), ("down", 4), ("comp", 4), ("up", 4), ("idle", 4),
               ("MB", 4) if compact else ("MB ↓/↑", 11)]
    if not compact:
        columns.insert(3, ("link", 9))
    return columns


def fleet_row(client: ClientView, part: ClientRound | None, compact: bool) -> list:
    """A client's cells: this round's state, exit and steps; the last closed round's seconds and bytes."""
    last = client.last
    timings, row = (last.timings, last.row) if last is not None else ({}, {})
    steps = Text("")
    if part is not None:
        steps = bar(part.step, part.steps or 0, 6 if compact else 10)
        if not compact:
            steps.append(f" {part.step}/{part.steps or '?'}")
    if not row:
        moved = "-"
    elif compact:
        moved = megabytes((row.get("bytes_down") or 0) + (row.get("bytes_up") or 0))
    else:
        moved = f"{megabytes(row.get('bytes_down'))}/{megabytes(row.get('bytes_up'))}"
    depth = part.depth if part is not None else (last.depth if last is not None else None)
    cells = [client.client, client.profile, client.task, state_text(shown_state(client, part)),
             f"L{depth}" if depth else "-", steps,
             *(seconds(timings.get(k)) for k in ("download_s", "compute_s", "upload_s", "idle_s")), moved]
    if not compact:
        cells.insert(3, client.link)
    return cells


def fleet_table(view: RunView, now_t: float, width: int, rows: int, compact: bool) -> Table:
    """Clients, one row each; the compact layout adds this round's timeline as a last column."""
    round_ = view.round_view()
    shown, hidden = visible_clients(view, rows)
    table = Table(box=None if compact else box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False,
                  header_style="bold", show_edge=False)
    columns = fleet_columns(max([len(c.client) for c in shown] + [2]), compact)
    for name, column_width in columns:
        table.add_column(name, width=column_width, no_wrap=True, overflow="ellipsis",
                         justify="right" if name in NUMERIC else "left")
    gantt_width = width - sum(w for _, w in columns) - len(columns)  # one space after each column
    gantt_round = round_ if compact and gantt_width >= 6 else None  # the round the timeline column shows
    if gantt_round is not None:
        table.add_column(f"r{gantt_round.index} {seconds(gantt_round.emulated_s(now_t))}s", width=gantt_width,
                         no_wrap=True, overflow="crop")
    for client in shown:
        part = round_.clients.get(client.client) if round_ is not None else None
        cells = fleet_row(client, part, compact)
        table.add_row(*cells, *([gantt_bar(gantt_round, client.client, now_t, gantt_width)]
                                if gantt_round is not None else []))
    if hidden:
        table.add_row(Text(f"+{hidden}", style="bright_black"), Text("more", style="bright_black"))
    return table


def accuracy_lines(view: RunView, width: int, target: float | None) -> list[Text]:
    """One line per task: sparkline and latest accuracy of each exit; the best so far, or when it reached the target."""
    lines = []
    for task in view.tasks():
        layers = view.exit_layers(task)
        series = {layer: [acc for _, _, acc in view.accuracy_series(task, layer)] for layer in layers}
        values = [v for s in series.values() for v in s]
        best, reached = view.best(task), None
        tail = f" best {best[0]:.0%} L{best[1]} r{best[2]}" if best else ""
        if target is not None:
            reached = view.time_to_target(task, target)
            tail = (f" {target:.0%} at {seconds(reached[0])} s {view.clock} r{reached[1]}" if reached
                    else f" {target:.0%}: not yet")
        room = width - len(task) - 1 - len(tail) - len(layers) * 9
        spark = max(1, min(24, room // max(1, len(layers))))
        text = Text(f"{task[:8]:<8} ", style="bold")
        for layer in layers:
            text.append(f"L{layer} ").append(sparkline(series[layer][-spark:], min(values), max(values)), style="cyan")
            text.append(f" {series[layer][-1]:.0%}  " if series[layer] else " -  ")
        lines.append(one_line(text.append(tail, style="green" if reached else "bright_black"), width))
    return lines or [Text("accuracy: no evaluation yet", style="bright_black")]


def accuracy_table(view: RunView, width: int, target: float | None) -> Table:
    """Wide layout: per task and exit, a sparkline over the evaluations, the latest and the best accuracy."""
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold", show_edge=False)
    spark = max(6, min(40, width - 40))
    when = f"≥{target:.0%} at" if target is not None else "first best at"
    columns: list[tuple[str, JustifyMethod]] = [("task", "left"), ("exit", "left"), ("over rounds", "left"),
                                                ("now", "right"), ("best", "right"), (when, "right")]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)
    for task in view.tasks():
        layers = view.exit_layers(task)
        values = [acc for layer in layers for _, _, acc in view.accuracy_series(task, layer)]
        best = view.best(task)
        if target is not None:
            reached = view.time_to_target(task, target)
        else:
            reached = (best[3], best[2], best[1]) if best else None
        when = f"{seconds(reached[0])} s {view.clock} (r{reached[1]}, L{reached[2]})" if reached else "not yet"
        for i, layer in enumerate(layers):
            series = [acc for _, _, acc in view.accuracy_series(task, layer)]
            spark_text = Text(sparkline(series[-spark:], min(values), max(values)), style="cyan")
            table.add_row(task if i == 0 else "", f"L{layer}", spark_text,
                          f"{series[-1]:.1%}" if series else "-", f"{max(series):.1%}" if series else "-",
                          when if i == 0 else "")
    if not view.tasks():
        table.add_row("no evaluation yet")
    return table


def timeline(view: RunView, now_t: float, width: int, rows: int) -> Table:
    """The last rounds side by side, one row per client: its phases in each round, scaled to that round."""
    shown, hidden = visible_clients(view, rows)
    name_width = max([len(c.client) for c in shown] + [2])
    indices = sorted(view.rounds)
    cell = 14
    count = max(1, min(len(indices), (width - name_width) // (cell + 1)))
    cell = max(cell, (width - name_width) // count - 1) if indices else cell
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold", show_edge=False)
    table.add_column("", width=name_width, no_wrap=True)
    chosen = [view.rounds[i] for i in indices[-count:]]
    for round_ in chosen:
        table.add_column(f"r{round_.index} {seconds(round_.emulated_s(now_t))}s", width=cell, no_wrap=True,
                         overflow="crop")
    for client in shown:
        table.add_row(client.client, *(gantt_bar(r, client.client, now_t, cell) for r in chosen))
    if hidden:
        table.add_row(Text(f"+{hidden}", style="bright_black"))
    return table


def recent_lines(view: RunView, count: int, width: int) -> list[Text]:
    lines: list[Text] = []
    for event in reversed(view.recent):
        if len(lines) >= count:
            break
        try:
            line = describe(event)
        except (KeyError, TypeError, ValueError, AttributeError):
            line = None
        if line:
            t = event.get("t")
            stamp = f"{t:7.1f}s " if isinstance(t, (int, float)) else " " * 9
            lines.append(one_line(Text(stamp, style="bright_black").append(line), width))
    return lines[::-1]


def round_panel_lines(view: RunView, now_t: float, width: int) -> list[Text]:
    """Wide layout: the round line, who is out and doing what, dilation, health counters."""
    lines = [round_status(view, now_t, width, names=False)]
    round_ = view.round_view()
    if round_ is not None and round_.out():
        out = Text("out: ")
        for cid in round_.out()[:12]:  # with how long each has been in its state: a stuck client shows
            client = view.clients[cid]
            out.append(f"{cid} ").append_text(state_text(client.state))
            out.append(f" {seconds(max(0.0, now_t - client.state_t))}s  ", style="bright_black")
        lines.append(one_line(out, width))
    previous = view.rounds.get((round_.index - 1) if round_ is not None else -1)
    if previous is not None and previous.closed is not None:
        closed = previous.closed
        lines.append(one_line(Text(f"round {previous.index}: {seconds(previous.emulated_s(now_t))} s, "
                                   f"{closed.get('stragglers', 0)} late, {closed.get('lost', 0)} lost",
                                   style="bright_black"), width))
    if view.dilation and not view.event_clock:  # the event clock has no dilation (its header says which clock)
        reason = view.dilation.get("reason") or ""
        lines.append(one_line(Text(f"time dilation ×{view.dilation['factor']:.3g} (emulated s = host s / factor): "
                                   f"{reason}",
                                   style="yellow"), width))
    health = f"events {view.events} · lost {view.lost_events} · dropped messages {view.dropped_messages}"
    if view.unknown_kinds:
        health += f" · other kinds {sum(view.unknown_kinds.values())}"
    lines.append(one_line(Text(health, style="bright_black"), width))
    return lines


# ---------------------------------------------------------------- layouts
def compact_layout(view: RunView, now_t: float, width: int, height: int, target: float | None) -> Group:
    accuracy = accuracy_lines(view, width, target)
    spare = height - 3 - len(accuracy) - len(view.clients)  # header, round line, table header
    recent = recent_lines(view, max(1, spare), width)
    rows = max(1, height - 3 - len(accuracy) - len(recent))
    return Group(one_line(header(view, now_t), width), round_status(view, now_t, width),
                 fleet_table(view, now_t, width, rows, compact=True), *accuracy, *recent)


def wide_layout(view: RunView, now_t: float, width: int, height: int, target: float | None) -> Group:
    left_width = width // 2
    round_lines = round_panel_lines(view, now_t, left_width - 4)
    accuracy = accuracy_table(view, width - left_width - 4, target)
    top_height = max(len(round_lines), sum(max(1, len(view.exit_layers(t))) for t in view.tasks()) + 1) + 2
    top = Table.grid(expand=True)
    top.add_column(ratio=1)
    top.add_column(ratio=1)
    top.add_row(Panel(Group(*round_lines), title="round", title_align="left", height=top_height),
                Panel(accuracy, title="accuracy per exit", title_align="left", height=top_height))
    free = height - 1 - top_height - 3 - 3  # header, top panels, table header and rule, timeline borders+header
    table_rows = max(1, (free + 1) // 2)
    timeline_rows = max(1, free - table_rows)
    fleet = fleet_table(view, now_t, width, table_rows, compact=False)
    events_width = max(30, width // 3)
    lines = timeline(view, now_t, width - events_width - 4, timeline_rows)
    fleet_height = min(table_rows, len(view.clients)) + 2 + (len(view.clients) > table_rows)  # header and rule
    bottom_height = max(lines.row_count + 3, height - 1 - top_height - fleet_height)  # + header and borders
    bottom = Table.grid(expand=True)
    bottom.add_column(ratio=1)
    bottom.add_column(width=events_width)
    bottom.add_row(Panel(lines, title="timeline", subtitle=legend(), title_align="left", height=bottom_height),
                   Panel(Group(*recent_lines(view, bottom_height - 2, events_width - 4)), title="events",
                         title_align="left", height=bottom_height))
    return Group(one_line(header(view, now_t), width), top, fleet, bottom)


class Dashboard:
    """The whole screen, laid out for the console's current size each time rich draws it."""

    def __init__(self, view: RunView, clock: Callable[[], float], target: float | None = None):
        self.view, self.clock, self.target = view, clock, target  # clock(): run seconds now

    def now_t(self) -> float:
        return self.view.t if self.view.ended else max(self.view.t, self.clock())

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width, height = options.max_width, options.height or console.height
        layout = wide_layout if width >= WIDE[0] and height >= WIDE[1] else compact_layout
        yield layout(self.view, self.now_t(), width, height, self.target)
