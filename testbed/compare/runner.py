"""Run each strategy of a comparison, seed by seed, one run after the other; then write the compare directory.

compare/<scenario>-<time>/
  scenario.yaml           the scenario resolved (overrides applied): every run of the comparison runs it
  compare_plan.json       strategies, seeds, target, its digest and the code that made each run
  <strategy>-s<seed>/     an ordinary run directory per run (the centralized baseline's too)
  compare.md              the paper-shaped error table, the cost table, the cost per depth, the runs
  compare.json            every figure
  accuracy_vs_time.png    accuracy at each task's exit against training time, one line per strategy

Every run gets the identical fleet, data partition and seed; only the strategy differs. A run that
fails is recorded and the comparison goes on; Ctrl-C stops it after writing what is done, and
`testbed compare --resume DIR` finishes it: finished runs are kept, an interrupted or failed run is resumed
from its last checkpoint (the centralized baseline, which has none, starts again, its old directory kept
aside), missing runs are made.
"""

from __future__ import annotations

import itertools
import json
import logging
import traceback
from datetime import datetime
from pathlib import Path

from testbed.aggregator.checkpoint import scenario_digest
from testbed.compare.figures import CENTRALIZED, FINISHED, RunRecord, comparison_figures
from testbed.compare.metrics import task_exit
from testbed.compare.plot import accuracy_vs_time
from testbed.compare.tables import markdown
from testbed.config.loader import dump_scenario, load_scenario, resolve_fleet
from testbed.config.schema import Scenario
from testbed.errors import UserError
from testbed.events import read_events
from testbed.version import code_version

log = logging.getLogger("testbed.compare")
ERROR_FILE = "compare_error.txt"  # the traceback of a run that raised, inside its run directory
SCENARIO_FILE = "scenario.yaml"  # the resolved scenario every run of the comparison runs
PLAN_FILE = "compare_plan.json"  # what the comparison runs, and which code made each run


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


def run_one(scenario_path: str, overrides: list[str], strategy: str, seed: int, directory: Path,
            resume: bool = False) -> RunRecord:
    """One run of the comparison (`resume`: continue its directory from its last checkpoint); an exception
    becomes a failed record (its traceback in the run directory)."""
    from testbed.compare.centralized import run_centralized
    from testbed.launch.run import run

    label = f"{strategy}-s{seed}"
    run_dir = directory / label
    print(f"{label}:{' resumed' if resume else ''}", flush=True)
    try:
        if strategy == CENTRALIZED:
            run_centralized(scenario_path, [*overrides, f"seed={seed}"], run_dir)
        elif resume:
            run(None, [], resume=str(run_dir), make_printer=QuietPrinter)
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
    dump_scenario(scenario, directory / SCENARIO_FILE)
    plan = {"strategies": strategies, "seeds": list(range(scenario.seed, scenario.seed + seeds)), "target": target,
            "scenario": scenario_digest(scenario), "made_by": {}}
    (directory / PLAN_FILE).write_text(json.dumps(plan, indent=1))
    return _run_plan(directory, plan)


def resume_compare(folder: str, target: float | None = None) -> tuple[Path, bool]:
    """Finish the comparison in `folder`: its plan and resolved scenario, as it began (`target` replaces its
    target when given: it only changes what the tables report)."""
    directory = Path(folder)
    plan = read_plan(directory)
    digest = scenario_digest(load_scenario(directory / SCENARIO_FILE))
    if digest != plan["scenario"]:
        raise UserError(f"--resume {directory}: {SCENARIO_FILE} has digest {digest}, but the "
                        f"comparison began with {plan['scenario']} ({PLAN_FILE}): it was edited, and its runs "
                        "would no longer compare; start a new comparison")
    return _run_plan(directory, {**plan, "target": plan["target"] if target is None else target})


def read_plan(directory: Path) -> dict:
    """compare_plan.json of a compare directory, checked for its fields; a UserError names what is wrong."""
    path = directory / PLAN_FILE
    if not path.is_file():
        raise UserError(f"--resume {directory}: not a compare directory (no {PLAN_FILE}; comparisons begun by "
                        "`testbed compare` write one)")
    try:
        plan = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"--resume {directory}: {PLAN_FILE} is not JSON ({error})") from None
    expected = {"strategies": list, "seeds": list, "scenario": str, "made_by": dict}
    wrong = [name for name, kind in expected.items() if not isinstance(plan.get(name), kind)]
    if wrong or not (plan["target"] is None or isinstance(plan["target"], (int, float))):
        raise UserError(f"--resume {directory}: {PLAN_FILE} lacks or mistypes {', '.join(wrong) or 'target'} "
                        "(expected: strategies and seeds lists, scenario digest, made_by map, target number or null)")
    return plan


def _run_plan(directory: Path, plan: dict) -> tuple[Path, bool]:
    """Every run of the plan, seed by seed, skipping the finished ones; then the comparison's files."""
    records: list[RunRecord] = []
    complete = True
    for seed in plan["seeds"]:
        for name in plan["strategies"]:
            record = _take_up(directory, name, seed, plan)
            records.append(record)
            if record.status == "interrupted":
                complete = False
                break
        if not complete:
            break
    write_comparison(directory, load_scenario(directory / SCENARIO_FILE), plan["strategies"], records,
                     plan["target"])
    return directory, complete


def _take_up(directory: Path, strategy: str, seed: int, plan: dict) -> RunRecord:
    """One run of the plan: kept when finished, resumed when it can be, else made (afresh)."""
    label = f"{strategy}-s{seed}"
    run_dir = directory / label
    status = _status(run_dir)
    if status == FINISHED:
        print(f"{label}: finished (kept)", flush=True)
        record = RunRecord(strategy, seed, label, str(run_dir), FINISHED)
    else:
        resumable = strategy != CENTRALIZED and (run_dir / "scenario.yaml").is_file()
        if run_dir.exists() and not resumable:  # the baseline has no checkpoint: it starts again, the old one kept
            names = (run_dir.with_name(f"{label}.{status or 'incomplete'}-{n}") for n in itertools.count(1))
            aside = next(name for name in names if not name.exists())
            run_dir.rename(aside)
            print(f"{label}: {status or 'incomplete'}, kept as {aside.name}; made again", flush=True)
        plan["made_by"][label] = code_version()  # written first: a comparison killed meanwhile can resume
        (directory / PLAN_FILE).write_text(json.dumps(plan, indent=1))
        record = run_one(str(directory / SCENARIO_FILE), [], strategy, seed, directory,
                         resume=resumable and run_dir.exists())
    record.code = plan["made_by"].get(label)
    return record


def _status(run_dir: Path) -> str | None:
    """The status its summary.json records; None without one (never ran, or ended before writing it)."""
    try:
        return json.loads((run_dir / "summary.json").read_text())["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
