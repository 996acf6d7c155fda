"""What the real clock's duty cycle adds to a step's CPU seconds: one client, alone, under each clock.

Under the real clock a slow device is emulated by pausing its process between training steps
(emulation/throttle.py); under the event clock it computes straight through. Both bill the same
thing, the process's CPU seconds / throughput, so any difference in CPU seconds per step is what
pausing itself costs (nothing else runs: one client, no compute slots to share, a fast link).
Runs `testbed run` with a one-client scenario under the event clock and under the real clock at
each dilation asked for, back to back, and prints CPU seconds per step per round and their median.

    python tools/pacing_cost.py --dilations 1 10 --rounds 4
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIO = """name: pacing_cost
seed: 0
rounds: {rounds}
eval_every: {rounds}
deadline_s: 600.0
data: {{takes: 9, partition: speaker}}
backbone: {{name: tiny}}
training: {{local_steps: {steps}, batch_size: 16}}
strategy: {{name: fedavg_full}}
fleet:
  - {{profile: {profile}, task: keyword, link: wifi}}
"""


def cpu_per_step(run_dir: Path, steps: int) -> list[float]:
    """Host CPU seconds per local step of each round's update."""
    with open(run_dir / "clients.csv", newline="", encoding="utf-8") as file:
        return [float(row["cpu_host_s"]) / steps for row in csv.DictReader(file) if row["status"] == "updated"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="rpi4", help="the client's device profile (default: rpi4)")
    parser.add_argument("--dilations", type=float, nargs="+", default=[1.0, 10.0],
                        help="real-clock dilations to run (default: 1 10)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="local steps per round")
    parser.add_argument("--out", help="where the runs go (default: a temporary directory)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pacing-"))
    out.mkdir(parents=True, exist_ok=True)
    scenario = out / "scenario.yaml"
    scenario.write_text(SCENARIO.format(rounds=args.rounds, steps=args.steps, profile=args.profile))
    runs = [("events", ["--set", "emulation.clock=events"])]
    runs += [(f"real x{d:g}", ["--set", "emulation.clock=real", "--set", f"emulation.dilation={d}"])
             for d in args.dilations]
    medians = {}
    for label, overrides in runs:
        run_dir = out / label.replace(" ", "_")
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "testbed", "run", str(scenario), "--no-dashboard",
                                 "--out", str(run_dir), *overrides], capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{label}: rc {result.returncode}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        per_step = cpu_per_step(run_dir, args.steps)
        medians[label] = statistics.median(per_step)
        relative = f" ({100 * (medians[label] / medians['events'] - 1):+.1f} % against events)" \
            if label != "events" else ""
        print(f"{label:>10}: CPU s per step {', '.join(f'{v:.3f}' for v in per_step)}; median "
              f"{medians[label]:.3f}{relative}; {time.monotonic() - started:.0f} s wall", flush=True)


if __name__ == "__main__":
    main()
