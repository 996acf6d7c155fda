"""Run stress tests one after the other: launch the run, carry out its script, judge it, write the results.

<results>/
  stress.json              every test: its actions and each check's verdict and figure
  <name>/scenario.yaml     the resolved base scenario (the variant's)
  <name>/run/              the stressed run directory (resumed in place after an aggregator kill)
  <name>/reference/        an uninterrupted run of the same scenario, when a check compares with one
  <name>/run.log, reference.log   what `testbed run` printed
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from testbed.config.convert import to_data
from testbed.config.loader import dump_scenario
from testbed.events import read_events
from testbed.stress.checks import Facts, Verdict, evaluate
from testbed.stress.injector import Injector, LiveRun, Script
from testbed.stress.spec import StressTest

POLL_S = 0.05  # seconds between looks at the run: a `start` trigger must catch a client before it joins
STOP_GRACE_S = 30.0  # seconds `testbed run` gets to stop cleanly after SIGINT before it is killed
ORPHAN_GRACE_S = 5.0  # seconds the run's processes get to disappear after `testbed run` exited


@dataclass
class TestResult:
    test: StressTest
    folder: Path
    actions: list[dict] = field(default_factory=list)
    verdicts: dict[str, Verdict] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.verdicts) and all(v.passed for v in self.verdicts.values())

    def to_data(self) -> dict:
        checks = self.test.checks.enabled()
        return {"name": self.test.name, "file": str(self.test.file), "description": self.test.description,
                "quick": self.test.quick, "folder": str(self.folder), "passed": self.passed,
                "actions": self.actions,
                "checks": [{"name": name, "passed": v.passed, "figure": v.figure,
                            "settings": to_data(checks[name]) if name in checks else None}
                           for name, v in self.verdicts.items()]}


def run_all(tests: list[StressTest], results: Path, out=sys.stdout) -> list[TestResult]:
    """Run every test in turn (one run at a time), print verdicts, keep stress.json up to date."""
    results.mkdir(parents=True, exist_ok=True)
    done: list[TestResult] = []
    started = datetime.now().isoformat(timespec="seconds")
    for test in tests:
        done.append(run_test(test, results / test.name, out))
        write_results(results / "stress.json", done, started)
    checks = [v for result in done for v in result.verdicts.values()]
    failed = sum(not v.passed for v in checks)
    print(f"\nstress: {len(done)} tests, {len(checks)} checks: {len(checks) - failed} PASS, {failed} FAIL; "
          f"results in {results / 'stress.json'}", file=out, flush=True)
    return done


def write_results(path: Path, done: list[TestResult], started: str) -> None:
    data = {"started": started, "passed": all(r.passed for r in done), "tests": [r.to_data() for r in done]}
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)


def run_test(test: StressTest, folder: Path, out=sys.stdout) -> TestResult:
    """One stress test: (reference run), the stressed run with its script, then every check."""
    say = lambda text: print(text, file=out, flush=True)  # noqa: E731
    folder.mkdir(parents=True, exist_ok=True)
    scenario_file = dump_scenario(test.scenario, folder / "scenario.yaml")
    variant = " (quick)" if test.quick else ""
    say(f"\n== {test.name}{variant}: {test.description}\n   {folder}")
    result = TestResult(test, folder)
    reference = None
    if test.checks.state_preserved is not None:
        say("   reference: an uninterrupted run of the same scenario ...")
        reference = _reference(scenario_file, folder, test.timeout_s)
        say(f"   reference: {len(reference)} rounds aggregated")
    live = _stressed_run(test, scenario_file, folder, result, say)
    events = read_events(live.run_dir / "events.jsonl") if (live.run_dir / "events.jsonl").exists() else []
    summary_file = live.run_dir / "summary.json"
    facts = Facts(deadline_s=test.scenario.deadline_s, rounds=test.scenario.rounds, actions=tuple(result.actions),
                  processes=len(live.seen), orphans=tuple(_orphans(live)), reference=reference,
                  summary=json.loads(summary_file.read_text()) if summary_file.exists() else None)
    result.verdicts = {"script": _script_verdict(test, result.actions), **evaluate(test.checks, events, facts)}
    if not events:
        say(f"   the run wrote no events: see {folder / 'run.log'}")
    for name, verdict in result.verdicts.items():
        say(f"   {'PASS' if verdict.passed else 'FAIL'}  {name:<22} {verdict.figure}")
    return result


def _reference(scenario_file: Path, folder: Path, timeout_s: float) -> dict[int, str]:
    """Round -> digest of an uninterrupted run of the scenario (same seed)."""
    run_dir = folder / "reference"
    process = _launch(["run", str(scenario_file), "--out", str(run_dir), "--no-dashboard"], folder / "reference.log")
    try:
        process.wait(timeout=timeout_s)
    finally:
        _stop(process)
    if not (run_dir / "events.jsonl").exists():
        return {}
    return {e["round"]: e["digest"] for e in read_events(run_dir / "events.jsonl") if e["kind"] == "round_aggregated"}


def _stressed_run(test: StressTest, scenario_file: Path, folder: Path, result: TestResult, say) -> LiveRun:
    """Launch the run and carry out the script until it ends (resuming it after an aggregator kill)."""
    run_dir = folder / "run"
    live = LiveRun(run_dir)
    script, injector = Script(test), Injector(test, live)
    log = folder / "run.log"
    process = _launch(["run", str(scenario_file), "--out", str(run_dir), "--no-dashboard"], log)
    give_up = time.monotonic() + test.timeout_s
    try:
        while True:
            new = live.poll()
            for item in script.due(live, new):
                record = injector.carry_out(item)
                script.done(item, record)
                result.actions.append(record)
                say(f"   [{record['t']:8.1f} s] {_describe(record)}")
            if process.poll() is not None:
                live.poll()
                if not injector.resume_pending:
                    break
                injector.resume_pending = False
                say(f"   [{live.now_t():8.1f} s] testbed run --resume (exit code {process.returncode} after the kill)")
                process = _launch(["run", "--resume", str(run_dir), "--no-dashboard"], log)
            if time.monotonic() > give_up:
                say(f"   the run took longer than {test.timeout_s:.0f} s: stopping it")
                break
            time.sleep(POLL_S)
    finally:
        injector.release()
        _stop(process)
    live.poll()
    return live


def _launch(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "a", encoding="utf-8") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "testbed", *args], stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _stop(process: subprocess.Popen) -> None:
    """Ctrl-C for a `testbed run` still going (it stops its processes itself), then SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _orphans(live: LiveRun) -> list[str]:
    deadline = time.monotonic() + ORPHAN_GRACE_S
    while (left := live.orphans()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _script_verdict(test: StressTest, actions: list[dict]) -> Verdict:
    failed = [f"{a['step']} ({a['do']}): {a['error']}" for a in actions if "error" in a]
    fired = {a["step"] for a in actions}
    missing = [step.name or f"#{index + 1}" for index, step in enumerate(test.steps)
               if (step.name or f"#{index + 1}") not in fired]
    problems = failed + [f"{name} never fired" for name in missing]
    if not test.steps:
        return Verdict(True, "no script: the scenario's own faults only")
    return Verdict(not problems, "; ".join(problems) or f"{len(actions)}/{len(test.steps)} steps carried out")


def _describe(record: dict) -> str:
    """One line for a step carried out: `kill c01 (pid 123)`, `flood: 13 messages`, ..."""
    text = f"{record['step']}: {record['do']}"
    if record.get("pids"):
        text += " " + ", ".join(f"{name} (pid {pid})" for name, pid in record["pids"].items())
    elif record.get("clients"):
        text += " " + ", ".join(record["clients"])
    if record.get("injected"):
        text += " " + json.dumps(next(iter(record["injected"].values())))
    if record.get("sent") is not None:
        text += f" {len(record['sent'])} malformed messages"
    text += f" (round {record['round']})"
    return text + (f": failed, {record['error']}" if "error" in record else "")
