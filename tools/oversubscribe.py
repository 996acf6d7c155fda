"""Time dilation under oversubscription: N duty-cycled client processes computing at once on this host.

Each process applies its profile (affinity, threads), then runs the calibration workload paced by the
duty cycle; all start together. Printed per fleet: the dilation, each client's achieved speed
(reference work / emulated seconds) against its requested speed, and the worst error of the ratio
between any two clients. Run with the automatic factor and, for contrast, with none (factor 1).

    python tools/oversubscribe.py                      # 16 clients at speed 1.0 (1 core, 1 thread)
    python tools/oversubscribe.py --speeds 1.0,0.5,0.25 --clients 12
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics

from testbed.config.schema import EmulationSpec, Profile
from testbed.emulation.calibrate import _compute_child, _reference_child, _in_child
from testbed.emulation.dilation import choose_dilation, demand_cores


def run_fleet(profiles: list[Profile], dilation: float, work_s: float) -> list[float]:
    """Achieved speeds (host cores) of the profiles computing concurrently at `dilation`."""
    context = multiprocessing.get_context("spawn")
    queues = [context.Queue() for _ in profiles]
    start = context.Barrier(len(profiles))  # as in a run: everyone loaded before the round starts
    processes = [context.Process(target=_compute_child, args=(profile, dilation, slot, queue, start))
                 for slot, (profile, queue) in enumerate(zip(profiles, queues))]
    for process in processes:
        process.start()
    try:
        runs = [queue.get(timeout=900) for queue in queues]
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    return [work_s / (run["wall_s"] / dilation) for run in runs]


def report(label: str, profiles: list[Profile], dilation: float, speeds: list[float]) -> float:
    requested = [demand_cores(p) for p in profiles]
    errors = [a / r - 1 for a, r in zip(speeds, requested)]
    worst = max(abs((a / b) / (ra / rb) - 1) for a, ra in zip(speeds, requested) for b, rb in zip(speeds, requested))
    print(f"{label}: dilation {dilation:.2f}; achieved/requested per client: "
          + " ".join(f"{e:+.0%}" for e in errors))
    print(f"  mean error {statistics.mean(errors):+.1%}, worst pairwise ratio error {worst:.1%}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--speeds", default="1.0", help="comma-separated speeds, assigned round-robin")
    parser.add_argument("--headroom", type=float, default=0.75)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    speeds = [float(s) for s in args.speeds.split(",")]
    profiles = [Profile(name=f"c{i:02d}", speed=speeds[i % len(speeds)], cores=1, threads=1)
                for i in range(args.clients)]
    emulation = EmulationSpec(headroom=args.headroom)
    dilation = choose_dilation(emulation, profiles)
    print(f"{args.clients} clients, speeds {speeds}: {dilation.reason}")
    work_s = statistics.median(_in_child(_reference_child) for _ in range(3))
    report("automatic dilation", profiles, dilation.factor, run_fleet(profiles, dilation.factor, work_s))
    report("no dilation", profiles, 1.0, run_fleet(profiles, 1.0, work_s))


if __name__ == "__main__":
    main()
