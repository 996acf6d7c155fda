"""Run each strategy of a comparison, seed by seed, one run after the other; then write the compare directory.

compare/<scenario>-<time>/
  <strategy>-s<seed>/     an ordinary run directory per run (the centralized baseline's too)
  compare.md              the paper-shaped error table, the cost table, the cost per depth, the runs
  compare.json            every figure
  accuracy_vs_time.png    accuracy at each task's exit against training time, one line per strategy

Every run gets the identical fleet, data partition and seed; only the strategy differs. A run that
fails is recorded and the comparison goes on; Ctrl-C stops it after writing what is done.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import datetime
from pathlib import Path

from testbed.compare.figures import CENTRALIZED, RunRecord, comparison_figures
from testbed.compare.metrics import task_exit
from testbed.compare.plot import accuracy_vs_time
from testbed.compare.tables import markdown
from testbed.config.loader import load_scenario, resolve_fleet
from testbed.config.schema import Scenario
from testbed.errors import UserError
from testbed.events import read_events

log = logging.getLogger("testbed.compare")
ERROR_FILE = "compare_error.txt"  # the traceback of a run that raised, inside its run directory


class QuietPrinter:
    """What a run inside a comparison shows: nothing while it goes, one line at the end."""

    def __init__(self, events_path: Path):
        self.events_path = events_path

    def poll(self) -> None:
        pass

    def stop(self) -> None:
        """Nothing to leave (run() calls it when the run raises: without it, an AttributeError hid that error)."""

    def finish(self, run_dir: Path, summary: dict, exit_code: int | None) -> None:
        print(f"  {summary.get('status')}: {summary.get('rounds_completed')}/{summary.get('rounds_planned')} rounds, "
              f"{summary.get('rounds_emulated_s', 0.0):.1f} emulated s of rounds ({summary.get('reason')})", flush=True)


def compare_directory(scenario: Scenario, out: str | None) -> Path:
    directory = Path(out) if out else Path("compare") / f"{scenario.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if directory.exists() and any(directory.iterdir()):
        raise UserError(f"--out {directory} exists and is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def run_one(scenario_path: str, overrides: list[str], strategy: str, seed: int, directory: Path) -> RunRecord:
    """One run of the comparison; an exception becomes a failed record (its traceback in the run directory)."""
    from testbed.compare.centralized import run_centralized
    from testbed.launch.run import run

    label = f"{strategy}-s{seed}"
    run_dir = directory / label
    print(f"{label}:", flush=True)
    try:
        if strategy == CENTRALIZED:
            run_centralized(scenario_path, [*overrides, f"seed={seed}"], run_dir)
        else:
            run(scenario_path, [*overrides, f"strategy.name={strategy}", f"seed={seed}"], out=str(run_dir),
                make_printer=QuietPrinter)
    except KeyboardInterrupt:  # the centralized baseline runs here, in this process
        return RunRecord(strategy, seed, label, str(run_dir), "interrupted")
    except Exception as error:  # one failed run does not end the comparison
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        print(f"  failed: {reason}", flush=True)
        log.warning("%s failed: %s", label, reason)
        if run_dir.is_dir():
            (run_dir / ERROR_FILE).write_text(traceback.format_exc())
        return RunRecord(strategy, seed, label, str(run_dir) if run_dir.is_dir() else None, "failed", reason)
    summary = json.loads((run_dir / "summary.json").read_text())
    if strategy == CENTRALIZED:
        print(f"  {summary['status']}: {summary['rounds_completed']}/{summary['rounds_planned']} rounds, "
              f"{summary['run_host_s']:.1f} host s", flush=True)
    return RunRecord(strategy, seed, label, str(run_dir), summary["status"])


def compare(scenario_path: str, strategies: list[str], seeds: int, overrides: list[str],
            out: str | None = None, target: float | None = None) -> tuple[Path, bool]:
    """Run every strategy for `seeds` seeds (the scenario's seed, +1, ...), seed by seed, and write the comparison.

    Returns the compare directory and whether every run was made (False: interrupted)."""
    scenario = load_scenario(scenario_path, overrides)  # every run's scenario is valid before anything starts
    for name in strategies:
        if name != CENTRALIZED:
            load_scenario(scenario_path, [*overrides, f"strategy.name={name}"])
    directory = compare_directory(scenario, out)
    records: list[RunRecord] = []
    complete = True
    for seed in range(scenario.seed, scenario.seed + seeds):
        for name in strategies:
            records.append(run_one(scenario_path, overrides, name, seed, directory))
            if records[-1].status == "interrupted":
                complete = False
                break
        if not complete:
            break
    write_comparison(directory, scenario, strategies, records, target)
    return directory, complete


def write_comparison(directory: Path, scenario: Scenario, strategies: list[str], records: list[RunRecord],
                     target: float | None) -> dict:
    """compare.md, compare.json and accuracy_vs_time.png from the records' run directories; returns the figures."""
    events = {r.label: read_events(Path(r.directory) / "events.jsonl") for r in records
              if r.directory and (Path(r.directory) / "events.jsonl").exists()}
    started = next((e for log_ in events.values() for e in log_ if e["kind"] == "run_started"), None)
    if started is None:
        failures = "; ".join(f"{r.label}: {r.error or r.status}" for r in records)
        raise UserError(f"no run of the comparison started ({failures}); see {directory}")
    exits = [int(layer) for layer in started["exits"]]
    task_exits = {task: task_exit(scenario.exit_policy.preferred_exits.get(task), tuple(exits))
                  for task in sorted({client.task for client in resolve_fleet(scenario)})}
    figures = comparison_figures(scenario.name, exits, task_exits, strategies, records, events, target)
    (directory / "compare.json").write_text(json.dumps(figures, indent=1))
    text = markdown(figures)
    (directory / "compare.md").write_text(text)
    accuracy_vs_time(figures, directory / "accuracy_vs_time.png")
    print(text, flush=True)
    return figures
