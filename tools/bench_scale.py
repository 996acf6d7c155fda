"""Scale: many client processes with the tiny backbone on this host, on either clock.

Two fleets, each a real `testbed run` of 3 rounds:
  --clients 64:                   every client trains every round;
  --clients 256 --per-round 16:   over-selection, 16 updates kept per round (ceil(16 x 1.3) asked).
Prints the run's outcome, rounds completed, wall time, the dilation it chose, and the peak memory of
the whole host (MemTotal - MemAvailable, sampled twice a second) above what it was before the run.
The clients are light devices (speed 1.0, 1 thread, Wi-Fi, the first exit only) doing 2 local steps of
8 clips: scale is about processes, messages and memory, not about training.

    python tools/bench_scale.py --clients 64                       # the event clock, as `testbed run`
    python tools/bench_scale.py --clients 256 --per-round 16
    python tools/bench_scale.py --clients 256 --per-round 16 --clock real
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROFILE = """\
name: scale_device
description: a light device for scale runs
speed: 1.0
cores: 1
threads: 1
memory_mb: 2048
max_exit: 1
link: wifi
"""

SCENARIO = """\
name: bench_scale
rounds: 3
eval_every: 100
deadline_s: 600
data: {{partition: iid}}      # more clients than the corpus has speakers
backbone: {{name: tiny}}
training: {{local_steps: 2, batch_size: 8}}
strategy: {{name: depth_aware, clients_per_round: {per_round}}}
exit_policy: {{name: static}}
fleet: [{{profile: {profile}, count: {clients}}}]
emulation: {{clock: {clock}}}
"""


def used_mb() -> float:
    fields = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            name, value = line.split(":")
            fields[name] = int(value.split()[0])
    return (fields["MemTotal"] - fields["MemAvailable"]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--per-round", type=int, default=None, help="updates kept per round (over-selection)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is stopped")
    parser.add_argument("--clock", choices=("real", "events"), default="events",
                        help="emulation.clock of the run (default: %(default)s, as testbed run)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    profile = work / "scale_device.yaml"
    profile.write_text(PROFILE)
    scenario = work / "scenario.yaml"
    scenario.write_text(SCENARIO.format(clients=args.clients, profile=profile, clock=args.clock,
                                        per_round="null" if args.per_round is None else args.per_round))
    run_dir = work / "run"
    before = used_mb()
    peak = before
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(scenario), "--out", str(run_dir),
                                "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        while process.poll() is None and time.monotonic() - started < args.timeout:
            peak = max(peak, used_mb())
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)
    wall = time.monotonic() - started
    summary = json.loads((run_dir / "summary.json").read_text())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.endswith("}")]
    dilation = next(e["dilation"] for e in events if e["kind"] == "run_started")
    closed = [e for e in events if e["kind"] == "round_closed"]
    print(f"{args.clients} clients" + (f", {args.per_round} per round (over-selection)" if args.per_round else "")
          + f", {args.clock} clock: {summary['status']}, {summary['rounds_completed']}/3 rounds in {wall:.0f} s wall; "
          f"dilation {dilation['factor']:.1f} ({dilation['reason']})")
    print("per round: " + "; ".join(f"round {e['round']} {e['updates']} updates of {e['selected']} asked, "
                                   f"{e.get('discarded', 0)} discarded, {e['wall_s']:.1f} emulated s" for e in closed))
    print(f"host memory in use: {before:.0f} MB before, peak {peak:.0f} MB (+{peak - before:.0f} MB, "
          f"{(peak - before) / args.clients:.0f} MB per client); dropped messages {summary['dropped_messages']}")
    print(f"run directory {run_dir}")


if __name__ == "__main__":
    main()
