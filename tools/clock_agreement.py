"""Agreement of the two clocks: one scenario and seed under the real clock and under the event clock.

Runs `testbed run` twice, back to back (real at its faithful automatic dilation, then events), or
reads two run directories already made (`--runs REAL EVENTS`), and prints per client and round:

- compute: median |difference| of `compute_emulated_s`, relative to the real clock's value;
- link: the same for the link phases (download + upload emulated seconds);
- round time: the same for `round_emulated_s` per round;
- depths: the share of client-rounds (taken by both) that chose the same exit depth;
- deadline cuts: the rounds whose stragglers differ;
- wall time of each run, and their ratio.

    python tools/clock_agreement.py scenarios/smoke.yaml --rounds 3
    python tools/clock_agreement.py scenarios/paper_fleet.yaml --rounds 2 --set emulation.backend=kernel
    python tools/clock_agreement.py --runs runs/real-dir runs/events-dir

The kernel backend, where it works (`testbed doctor`), is the better reference: its CPU quota paces
within steps, while the user backend's pauses between steps make steps dearer at high dilation
(docs/benchmarks.md, "Event clock").
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLOCKS = ("real", "events")


def run_both(scenario: str, rounds: int, seed: int, overrides: list[str], out: Path) -> list[Path]:
    """Run the scenario under each clock (real first, at its automatic dilation); their run directories."""
    dirs = []
    for clock in CLOCKS:
        run_dir = out / clock
        command = [sys.executable, "-m", "testbed", "run", scenario, "--no-dashboard", "--out", str(run_dir),
                   "--set", f"emulation.clock={clock}", "--set", "emulation.dilation=null"]
        for override in [*overrides, f"rounds={rounds}", f"seed={seed}"]:
            command += ["--set", override]
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True)
        print(f"{clock:>6} clock: rc {result.returncode} in {time.monotonic() - started:.1f} s wall, "
              f"backend {_backend(run_dir)} ({run_dir})", flush=True)
        if result.returncode != 0:
            sys.exit(result.stdout[-2000:] + result.stderr[-2000:])
        dirs.append(run_dir)
    return dirs


def _backend(run_dir: Path) -> str:
    """The emulation backend the run's `run_started` event names; "?" when the run never started."""
    try:
        with open(run_dir / "events.jsonl", encoding="utf-8") as file:
            return json.loads(file.readline()).get("backend", "?")
    except (OSError, ValueError):
        return "?"


def _rows(run_dir: Path, name: str) -> list[dict]:
    with open(run_dir / name, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def _relative(a: float, b: float) -> float:
    """|a - b| relative to a (the real clock's value); 0 when both are 0."""
    return abs(a - b) / abs(a) if a else (0.0 if b == 0 else float("inf"))


def agreement(real_dir: Path, events_dir: Path) -> dict:
    """The figures above, from two run directories of the same scenario and seed."""
    clients = [{(r["round"], r["client"]): r for r in _rows(d, "clients.csv")} for d in (real_dir, events_dir)]
    rounds = [{r["round"]: r for r in _rows(d, "rounds.csv")} for d in (real_dir, events_dir)]
    both = sorted(set(clients[0]) & set(clients[1]))
    compute, link, depths = [], [], []
    for key in both:
        real, event = clients[0][key], clients[1][key]
        if real["status"] == event["status"] == "updated":
            compute.append(_relative(float(real["compute_emulated_s"]), float(event["compute_emulated_s"])))
            link.append(_relative(float(real["download_emulated_s"]) + float(real["upload_emulated_s"]),
                                  float(event["download_emulated_s"]) + float(event["upload_emulated_s"])))
        if int(real["depth"]) and int(event["depth"]):  # both chose a depth (fetched)
            depths.append(real["depth"] == event["depth"])
    round_times = [_relative(float(rounds[0][r]["round_emulated_s"]), float(rounds[1][r]["round_emulated_s"]))
                   for r in sorted(set(rounds[0]) & set(rounds[1]), key=int)]
    def stragglers(table: dict, index: str) -> set[str]:
        return {client for (r, client), row in table.items() if r == index and row["status"] == "straggler"}

    differing = [r for r in sorted(set(rounds[0]) & set(rounds[1]), key=int)
                 if stragglers(clients[0], r) != stragglers(clients[1], r)]
    summaries = [json.loads((d / "summary.json").read_text()) for d in (real_dir, events_dir)]
    median = lambda values: statistics.median(values) if values else None  # noqa: E731
    return {"client_rounds": len(both), "compared_updates": len(compute),
            "compute_median_rel_diff": median(compute), "link_median_rel_diff": median(link),
            "round_median_rel_diff": median(round_times),
            "same_depth_share": sum(depths) / len(depths) if depths else None,
            "rounds_with_different_cuts": differing,
            "wall_s": {clock: s["run_host_s"] for clock, s in zip(CLOCKS, summaries)},
            "digests": {clock: s["last_digest"] for clock, s in zip(CLOCKS, summaries)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", help="scenario YAML to run under both clocks")
    parser.add_argument("--runs", nargs=2, metavar=("REAL", "EVENTS"), help="compare two run directories instead")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more scenario overrides")
    parser.add_argument("--out", help="where the two runs go (default: a temporary directory)")
    args = parser.parse_args()
    if args.runs:
        real_dir, events_dir = map(Path, args.runs)
    elif args.scenario:
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="clocks-"))
        real_dir, events_dir = run_both(args.scenario, args.rounds, args.seed, args.set, out)
    else:
        parser.error("give a scenario, or --runs REAL EVENTS")
    figures = agreement(real_dir, events_dir)
    pct = lambda value: "n/a" if value is None else f"{100 * value:.1f} %"  # noqa: E731
    print(f"client-rounds in both runs: {figures['client_rounds']} ({figures['compared_updates']} updated in both)")
    print(f"compute time, median |difference|: {pct(figures['compute_median_rel_diff'])}")
    print(f"link phases,  median |difference|: {pct(figures['link_median_rel_diff'])}")
    print(f"round time,   median |difference|: {pct(figures['round_median_rel_diff'])}")
    print(f"same exit depth: {pct(figures['same_depth_share'])} of client-rounds")
    print(f"rounds whose deadline cut other clients: {figures['rounds_with_different_cuts'] or 'none'}")
    wall = figures["wall_s"]
    ratio = wall["real"] / wall["events"] if wall["events"] else float("nan")
    print(f"wall time: real {wall['real']:.1f} s, events {wall['events']:.1f} s (events {ratio:.1f}x faster)")
    print(f"last digests: real {figures['digests']['real']}, events {figures['digests']['events']}")


if __name__ == "__main__":
    main()
