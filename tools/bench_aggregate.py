"""Aggregation cost: depth_aware over many wav2vec2-base-sized partial updates vs a plain NumPy weighted sum.

Each update trained to an exit depth drawn from 3/6/9/12 (of 12 layers), so it holds the CNN,
projection and embeddings, layers <= depth and heads <= depth: the partial updates of a real round.
To fit in memory, the updates' tensors are the arrays of fewer distinct random states (--distinct):
the aggregator only reads them, so the arithmetic is the same, but re-reading the same memory favours
code that works block by block (the repeats hit the cache); --distinct equal to --count is the honest
figure where memory allows (32 x 380 MB = 12 GB). Compared in the same run, interleaved:
  ours   DepthAware().aggregate (first contributor + weighted float32 steps, streamed block by block);
  numpy  per key, sum((w_k / Σw) * a_k) over the key's contributors: what one writes by hand.
Peak memory is measured with tracemalloc in separate untimed passes (it slows allocation down).

    python tools/bench_aggregate.py                          # 32 updates of 95 M parameters, 8 distinct
    python tools/bench_aggregate.py --count 16 --distinct 16 --params 24e6 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_state import EXITS, depth_of, make_state, nbytes  # noqa: E402

from testbed.strategies import ClientUpdate, make_strategy  # noqa: E402

State = dict[str, np.ndarray]


def make_updates(params: int, count: int, distinct: int, seed: int) -> tuple[State, list[ClientUpdate]]:
    """The global state and `count` partial updates whose tensors come from `distinct` random states."""
    rng = np.random.default_rng(seed)
    global_state = make_state(params, seed)
    bases = [make_state(params, seed + 1 + index) for index in range(distinct)]
    updates = []
    for index in range(count):
        depth = int(rng.choice(EXITS))
        base = bases[index % distinct]
        tensors = {key: array for key, array in base.items() if depth_of(key) <= depth}
        updates.append(ClientUpdate(f"c{index:02d}", int(rng.integers(50, 500)), depth, "keyword", tensors))
    return global_state, updates


def numpy_weighted_sum(global_state: State, updates: list[ClientUpdate]) -> State:
    """The reference: the same n_k * L_k weights and partial participation, written the plain way."""
    new_state = {}
    for key, current in global_state.items():
        pairs = [(update.samples * update.depth, update.tensors[key]) for update in updates if key in update.tensors]
        total = sum(weight for weight, _ in pairs)
        new_state[key] = sum((weight / total) * array for weight, array in pairs) if pairs else current
    return new_state


def depth_aware(global_state: State, updates: list[ClientUpdate]) -> State:
    return make_strategy("depth_aware").aggregate(global_state, updates)


VARIANTS: dict[str, Callable[[State, list[ClientUpdate]], State]] = {"ours": depth_aware, "numpy": numpy_weighted_sum}


def peak_bytes(variant: Callable[[State, list[ClientUpdate]], State], global_state: State,
               updates: list[ClientUpdate]) -> int:
    """Peak bytes allocated while aggregating, the returned state included."""
    tracemalloc.start()
    try:
        result = variant(global_state, updates)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=95e6, help="float32 parameters per full state (95e6)")
    parser.add_argument("--count", type=int, default=32, help="updates aggregated (32)")
    parser.add_argument("--distinct", type=int, default=8, help="distinct random states behind them (8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed aggregations per variant (3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.params < 1 or args.count < 1 or args.repeats < 1 or not 1 <= args.distinct <= args.count:
        parser.error("--params, --count, --repeats must be >= 1 and 1 <= --distinct <= --count")
    global_state, updates = make_updates(int(args.params), args.count, args.distinct, args.seed)
    size = nbytes(global_state)
    read = sum(nbytes(dict(update.tensors)) for update in updates)
    depths = sorted(update.depth for update in updates)
    print(f"{args.count} updates ({args.distinct} distinct states) of {size / 1e6:.1f} MB float32 "
          f"({sum(a.size for a in global_state.values()) / 1e6:.1f} M parameters); "
          f"depths {', '.join(f'{d}x{depths.count(d)}' for d in EXITS if d in depths)}; "
          f"{read / 1e9:.2f} GB of update tensors read per aggregation")
    if args.distinct < args.count:
        print(f"note: updates share {args.distinct} states, which flatters cache-blocked code; "
              f"--distinct {args.count} gives the honest ratio")

    ours, reference = depth_aware(global_state, updates), numpy_weighted_sum(global_state, updates)  # warm-up
    worst = max(float(np.max(np.abs(ours[key].astype(np.float64) - reference[key]))) for key in global_state)
    scale = max(float(np.max(np.abs(array))) for array in global_state.values())
    print(f"largest |ours - numpy| over all elements: {worst:.3g} (values up to {scale:.3g}; numpy sums in float32)")
    tolerance = (args.count + 2) * 2.0**-24 * scale  # float32 summation bound of the reference
    if worst > tolerance:
        raise RuntimeError(f"depth_aware and the NumPy reference disagree by {worst:.3g} > {tolerance:.3g}")
    del ours, reference

    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name in (tuple(VARIANTS) if repeat % 2 == 0 else tuple(reversed(VARIANTS))):
            started = time.perf_counter()
            result = VARIANTS[name](global_state, updates)
            seconds[name].append(time.perf_counter() - started)
            del result  # freed outside the clock
    peaks = {name: peak_bytes(variant, global_state, updates) for name, variant in VARIANTS.items()}

    print(f"  {'variant':<40}{'seconds':>9}{'GB/s read':>11}{'peak MB':>9}")
    labels = {"ours": "ours   depth_aware (steps, streamed)", "numpy": "numpy  sum(w_k * a_k) per key (float32)"}
    for name in VARIANTS:
        median = statistics.median(seconds[name])
        print(f"  {labels[name]:<40}{median:>9.3f}{read / median / 1e9:>11.2f}{peaks[name] / 1e6:>9.0f}")
    ratio = statistics.median(a / b for a, b in zip(seconds["ours"], seconds["numpy"]))
    print(f"  ours time / numpy time   {ratio:.2f}  (target <= 1.5; median of {args.repeats} interleaved repeats)")
    print(f"  ours peak / new state    {peaks['ours'] / size:.2f}  (the result itself is 1.00; "
          f"a stack of {args.count} copies would be {args.count:.0f})")


if __name__ == "__main__":
    main()
