"""Training-step time and peak memory per exit depth, for the tiny preset and wav2vec2-base geometry.

Each (geometry, depth) runs in a fresh process so peak memory is its own: we report the growth of
the resident set over the built model during training (activations, gradients, optimizer state).
Random weights: timing does not depend on them. Per geometry, the last line says how far the middle
depths lie from the straight line through the shallowest and the deepest one (what clients assume).

    python tools/depth_cost.py                 # tiny (batch 16) and base (batch 4), 1 s clips
    python tools/depth_cost.py --geometries tiny --steps 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

GEOMETRIES = {"tiny": 16, "base": 4}  # geometry -> batch size of 1 s clips


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def measure(geometry: str, depth: int, steps: int, threads: int) -> dict:
    """One (geometry, depth): mean step seconds after 2 warm-up steps, peak training memory in MB."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from testbed.model.architecture import COMMON_OVERRIDES, build_random
    from testbed.model.early_exit import EarlyExitModel, exit_loss
    from testbed.model.train import make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    backbone = build_random("tiny") if geometry == "tiny" else Wav2Vec2Model(Wav2Vec2Config(**COMMON_OVERRIDES))
    model = EarlyExitModel(backbone, {"keyword": 12}).train()
    optimizer = make_optimizer(model, 1e-4)
    batch = GEOMETRIES[geometry]
    waveforms, labels = torch.randn(batch, 16000), torch.randint(0, 12, (batch,))
    before = resident_mb()
    times = []
    for step in range(steps + 2):
        started = time.perf_counter()
        loss = exit_loss(model(waveforms, depth, "keyword"), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB
    return {"geometry": geometry, "depth": depth, "exits": list(model.exits_up_to(depth)),
            "batch": batch, "step_s": sum(times[2:]) / steps, "train_mem_mb": peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometries", default="tiny,base")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("GEOMETRY", "DEPTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.steps, args.threads)))
        return
    print(f"{'geometry':9s} {'depth':>5s} {'exits':12s} {'batch':>5s} {'step s':>8s} {'x depth1':>8s} "
          f"{'train MB':>9s}")
    for geometry in args.geometries.split(","):
        layers = 8 if geometry == "tiny" else 12
        first, measured = None, {}
        for depth in [d for d in (layers // 4, layers // 2, 3 * layers // 4, layers)]:
            output = subprocess.run([sys.executable, __file__, "--one", geometry, str(depth),
                                     "--steps", str(args.steps), "--threads", str(args.threads)],
                                    check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            first = first or result["step_s"]
            print(f"{geometry:9s} {depth:5d} {str(result['exits']):12s} {result['batch']:5d} "
                  f"{result['step_s']:8.3f} {result['step_s'] / first:8.2f} {result['train_mem_mb']:9.0f}",
                  flush=True)
            measured[depth] = (result["step_s"], result["train_mem_mb"])
        print(line_fit(geometry, measured), flush=True)


def line_fit(geometry: str, measured: dict[int, tuple[float, float]]) -> str:
    """How far the middle depths lie from the line through the shallowest and the deepest one: the
    cost model of the clients' probe (testbed/client/costs.py), which measures only those two."""
    low, high = min(measured), max(measured)
    parts = []
    for depth in sorted(measured)[1:-1]:
        share = (depth - low) / (high - low)
        on_line = [a + share * (b - a) for a, b in zip(measured[low], measured[high])]
        parts.append(f"depth {depth}: time {measured[depth][0] / on_line[0] - 1:+.1%}, "
                     f"memory {measured[depth][1] / on_line[1] - 1:+.1%}")
    return f"{geometry:9s} line through depths {low} and {high}: " + "; ".join(parts)


if __name__ == "__main__":
    main()
