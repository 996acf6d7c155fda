"""Where a `testbed run`'s wall time goes before and after its rounds: launch to `run_started`, the rounds
(and evaluations) to `run_finished`, and the end to the launcher's exit (summary, report, plots).

Runs the scenario REPEAT times and prints each run's phases and their medians. With `--base DIR`, each
repetition also runs the testbed of another checkout DIR (imported from there through PYTHONPATH; its fork
server follows), back to back and alternating, so that two versions are compared on the same host load.

    python tools/run_phases.py scenarios/smoke.yaml --repeat 5
    python tools/run_phases.py scenarios/smoke.yaml --repeat 5 --base /tmp/older-checkout --set rounds=1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("to run_started", "rounds to run_finished", "end to exit", "total")


def phases(scenario: str, overrides: list[str], out: Path, pythonpath: str | None) -> tuple[float, ...]:
    """One run's phases in host seconds (see PHASES)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "testbed", "run", scenario, "--no-dashboard", "--out", str(out)]
    for override in overrides:
        command += ["--set", override]
    launched = time.time()
    # run from the output's folder: `python -m` puts the working directory first on the import path, which would
    # import the testbed there (this checkout, when run from it) instead of the one PYTHONPATH names
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out.parent)
    exited = time.time()
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)}: exit code {result.returncode}\n{result.stderr[-2000:]}")
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    started = next(e["wall"] for e in events if e["kind"] == "run_started")
    finished = events[-1]["wall"]
    return started - launched, finished - started, exited - finished, exited - launched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base", help="another checkout's root, run alternately with this one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="scenario overrides")
    args = parser.parse_args()
    versions = {"this": None} if args.base is None else {"base": str(Path(args.base).resolve()), "this": None}
    figures: dict[str, list[tuple[float, ...]]] = {name: [] for name in versions}
    scenario = str(Path(args.scenario).resolve())
    print(f"{'':>5} " + " | ".join(f"{phase:>22}" for phase in PHASES), flush=True)
    with tempfile.TemporaryDirectory(prefix="run-phases-") as folder:
        for repetition in range(args.repeat):
            for name, pythonpath in versions.items():
                row = phases(scenario, args.set, Path(folder) / f"{name}-{repetition}", pythonpath)
                figures[name].append(row)
                print(f"{name:>5} " + " | ".join(f"{value:20.2f} s" for value in row), flush=True)
    for name, rows in figures.items():
        medians = [statistics.median(column) for column in zip(*rows)]
        print(f"{name}, median of {len(rows)}: " + ", ".join(f"{phase} {value:.2f} s"
                                                         for phase, value in zip(PHASES, medians)))


if __name__ == "__main__":
    main()
