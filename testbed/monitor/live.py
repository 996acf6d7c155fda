"""Keeping a dashboard on screen: `testbed run`'s printer on a terminal, and `testbed monitor`'s loop."""

from __future__ import annotations

import atexit
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.live import Live

from testbed.events import ENDINGS
from testbed.monitor.console import line_for, outcome_lines
from testbed.monitor.dashboard import Dashboard
from testbed.monitor.sources import FileTail
from testbed.monitor.state import RunView

REFRESH_S = 0.25  # seconds between redraws: a smooth clock for a few percent of one core


class LiveScreen:
    """A Dashboard on the terminal's alternate screen (no scrolling, no flicker), redrawn at most every REFRESH_S."""

    def __init__(self, dashboard: Dashboard, console: Console | None = None):
        self.dashboard, self.console = dashboard, console or Console()
        self.live = Live(dashboard, console=self.console, screen=True, auto_refresh=False,
                         vertical_overflow="crop")
        self.drawn = 0.0  # time.monotonic() of the last redraw

    def refresh(self, force: bool = False) -> None:
        if not self.live.is_started:
            self.live.start()
            atexit.register(self.stop)  # an exception or exit elsewhere must not leave the terminal on our screen
        if force or time.monotonic() - self.drawn >= REFRESH_S:
            self.live.refresh()
            self.drawn = time.monotonic()

    def stop(self) -> None:
        """Back to the normal screen, where the last frame is printed once so that it stays in the scrollback."""
        if self.live.is_started:
            self.live.stop()
            atexit.unregister(self.stop)
            self.console.print(self.dashboard)


class RunDashboard:
    """`testbed run`'s printer on a terminal: poll() folds new events and redraws; finish() leaves the last frame."""

    def __init__(self, events_path: Path, console: Console | None = None, target: float | None = None):
        self.tail, self.view = FileTail(events_path), RunView()
        dashboard = Dashboard(self.view, lambda: self.view.run_seconds_at(time.time()), target)
        self.screen = LiveScreen(dashboard, console)
        self.ending: dict | None = None  # the last run_finished / run_interrupted / run_failed event seen

    def poll(self) -> None:
        for event in self.tail.read():
            self.view.apply(event)
            if event.get("kind") in ENDINGS:
                self.ending = event
        self.screen.refresh()

    def stop(self) -> None:
        """Leave the screen (an error is about to be told below it)."""
        self.screen.stop()

    def finish(self, run_dir: Path, summary: dict, exit_code: int | None) -> None:
        """Leave the screen, then say how the run ended (its ending event's line, as without the dashboard)."""
        self.poll()
        self.screen.stop()
        ending = line_for(self.ending) if self.ending is not None else None
        for line in ([ending] if ending else []) + outcome_lines(run_dir, summary, exit_code):
            self.screen.console.print(line, markup=False, highlight=False, soft_wrap=True)


def watch(source, view: RunView, clock: Callable[[], float], done: Callable[[], bool],
          console: Console | None = None, target: float | None = None) -> None:
    """Fold `source`'s events into `view` and show them live until `done()` (or Ctrl-C)."""
    screen = LiveScreen(Dashboard(view, clock, target), console)
    try:
        while True:
            for event in source.read():
                view.apply(event)
            screen.refresh(force=True)
            if done():
                break
            time.sleep(REFRESH_S)
    finally:
        screen.stop()


def print_lines(source, view: RunView, done: Callable[[], bool], stream) -> None:
    """Without a terminal: one timestamped line per event worth a line, until `done()` (or Ctrl-C)."""
    while True:
        for event in source.read():
            view.apply(event)
            if line := line_for(event):
                print(line, file=stream, flush=True)
        if done():
            break
        time.sleep(REFRESH_S)


def choose_printer(no_dashboard: bool) -> Callable[[Path], RunDashboard] | None:
    """What `testbed run` shows: the dashboard when stdout is a terminal (and it is wanted), else None
    (the run's default: plain timestamped lines)."""
    if no_dashboard or not sys.stdout.isatty():
        return None
    return RunDashboard
