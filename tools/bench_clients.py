"""Process footprint: how fast N clients become ready, and the private memory each one holds.

Starts a real run (`testbed run`) of N identical clients with the tiny backbone for one round, and
samples every client process's private memory (USS: Private_Clean + Private_Dirty of
/proc/PID/smaps_rollup; shared pages of the pre-imported fork server are not counted) twice a
second. Prints: seconds from the run's start until all N reported ready (joined, profile applied,
data and model loaded, costs measured), per client; and per client the private memory while
ready and idle, and its peak while training.

    python tools/bench_clients.py --clients 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIO = """\
name: bench_clients
rounds: 1
eval_every: 100
deadline_s: 600
backbone: {{name: tiny}}
training: {{local_steps: 5, batch_size: 16}}
emulation: {{clock: real, dilation: 1}}  # as measured in docs/benchmarks.md, "Process footprint"
fleet: [{{profile: laptop, count: {clients}, link: wifi}}]
"""


def private_mb(pid: int) -> float | None:
    try:
        fields = {}
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1])
        return (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024
    except (FileNotFoundError, ProcessLookupError, KeyError):
        return None


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-clients-"))
    scenario = work / "scenario.yaml"
    scenario.write_text(SCENARIO.format(clients=args.clients))
    run_dir = work / "run"
    process = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(scenario), "--out", str(run_dir),
                                "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    idle: dict[str, float] = {}
    training: dict[str, float] = {}
    states: dict[str, str] = {}
    try:
        while process.poll() is None:
            time.sleep(0.5)
            pids_file = run_dir / "processes.json"
            if not pids_file.exists():
                continue
            for event in read_events(run_dir / "events.jsonl"):
                if event["kind"] == "client_state":
                    states[event["client"]] = event["state"]
            for name, pid in json.loads(pids_file.read_text()).items():
                if not name.startswith("c"):
                    continue
                memory = private_mb(pid)
                if memory is None:
                    continue
                bucket = training if states.get(name) == "training" else idle if states.get(name) == "idle" else None
                if bucket is not None:
                    bucket[name] = max(bucket.get(name, 0.0), memory)
    finally:
        if process.poll() is None:
            process.kill()
    events = read_events(run_dir / "events.jsonl")
    started = next(e["wall"] for e in events if e["kind"] == "run_started")
    ready = [e["wall"] for e in events if e["kind"] == "client_ready"]
    print(f"{args.clients} clients (tiny backbone, laptop profile), run directory {run_dir}")
    print(f"all ready {max(ready) - started:.2f} s after the aggregator started: "
          f"{(max(ready) - started) / args.clients:.2f} s per client (target <= 0.5)")
    if idle:
        print(f"private memory, ready and idle: median {statistics.median(idle.values()):.0f} MB, "
              f"max {max(idle.values()):.0f} MB")
    if training:
        print(f"private memory while training (peak of 2 Hz samples): median "
              f"{statistics.median(training.values()):.0f} MB, max {max(training.values()):.0f} MB (target <= 350)")


if __name__ == "__main__":
    main()
