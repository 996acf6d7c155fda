"""CLI of the monitor role: `testbed monitor` (watch a run live or replay one) and `testbed report`."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from testbed.errors import UserError

ADDRESS_SCHEMES = ("tcp://", "ipc://")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number (expected an accuracy in (0, 1], e.g. 0.8)") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1] (an accuracy, e.g. 0.8 for 80 %)")
    return value


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number (expected a factor > 0, e.g. 10)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0 (1 = as fast as the run went, 10 = ten times faster)")
    return value


def add_monitor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_DIR|ADDRESS",
                        help="a run directory (running: follow it; finished: show or replay it), or the event "
                             "PUB address of a running aggregator, e.g. tcp://host:5556")
    parser.add_argument("--speed", type=_speed, help="replay a finished run this many times faster than it ran "
                                                      "(default: show its final state)")
    parser.add_argument("--target", type=_fraction, help="accuracy target for time-to-target, e.g. 0.8")
    parser.add_argument("--no-dashboard", action="store_true",
                        help="plain timestamped lines even on a terminal (the default when not on one)")


def add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory (finished, running or crashed)")
    parser.add_argument("--target", type=_fraction, help="accuracy target for time-to-target, e.g. 0.8")


def report(args: argparse.Namespace) -> int:
    from testbed.monitor.report import build_report

    path = build_report(args.run_dir, args.target)
    print(f"report: {path}; plots in {path.parent / 'plots'}")
    return 0


def _aggregator_alive(events: list[dict]) -> bool:
    """Whether the aggregator that wrote these events still runs on this host."""
    pid = next((e.get("pid") for e in events if e.get("kind") == "run_started"), None)
    if not isinstance(pid, int):
        return True  # not known yet: the run is starting
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open(args: argparse.Namespace, view):
    """The event source `testbed monitor` reads, its clock (run seconds now), and when it is done.
    A finished run without --speed is replayed infinitely fast: its final state at once."""
    from testbed.events import ENDINGS, read_events
    from testbed.monitor.sources import FileTail, Replay, Subscription

    live = (lambda: view.run_seconds_at(time.time())), (lambda: view.ended)
    if args.source.startswith(ADDRESS_SCHEMES):
        if args.speed:
            raise UserError("--speed replays a finished run directory; an address only carries a running run's events")
        return (Subscription(args.source), *live)
    run_dir = Path(args.source)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory (give a run directory, or an address such as "
                        f"tcp://host:5556)")
    path = run_dir / "events.jsonl"
    if not path.exists() and not (run_dir / "scenario.yaml").exists():
        raise UserError(f"{run_dir}: not a run directory (neither events.jsonl nor scenario.yaml in it)")
    recorded = read_events(path) if path.exists() else []
    running = not any(e.get("kind") in ENDINGS for e in recorded) and _aggregator_alive(recorded)
    if running:
        if args.speed:
            raise UserError(f"{run_dir} is still running: --speed replays finished runs (attach without it)")
        return (FileTail(path), *live)
    if not recorded:
        raise UserError(f"{path}: no events (the run never started)")
    replay = Replay(recorded, args.speed or math.inf)
    return replay, replay.now_t, (lambda: replay.done)


def monitor(args: argparse.Namespace) -> int:
    from rich.console import Console

    from testbed.monitor.dashboard import Dashboard
    from testbed.monitor.live import print_lines, watch
    from testbed.monitor.sources import Subscription
    from testbed.monitor.state import RunView

    view = RunView()
    source, clock, done = _open(args, view)
    plain = args.no_dashboard or not sys.stdout.isatty()
    try:
        if not plain and getattr(source, "speed", None) == math.inf:  # a finished run's last frame, no live screen
            for event in source.read():
                view.apply(event)
            Console().print(Dashboard(view, clock, args.target))
        elif plain:
            print_lines(source, view, done, sys.stdout)
        else:
            watch(source, view, clock, done, target=args.target)
    except KeyboardInterrupt:
        pass  # leaving a monitor is the normal way out: the run itself goes on
    finally:
        if isinstance(source, Subscription):
            source.close()
    return 0
