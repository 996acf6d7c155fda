"""The strategy seam: `Strategy.aggregate` owns the per-key weighted-average loop, subclasses override hooks.

Pure NumPy (no zmq, no torch), in the spirit of Flower's strategy base class: each algorithm is one
small file that overrides `client_depth`, `weight`, `contributors` or `tensor_of` and sets two
declarative attributes the runtime reads (`waits_for_all`, `client_loss`); straggler handling
(deadlines, over-selection) wraps any strategy instead of copying it (testbed.strategies.selection).

The aggregator calls, in this order:
  1. `configure(fleet_depths, exits)` once, before the first round;
  2. per round, per selected client: `client_depth(0, exits[-1])` for the ROUND message
     (0 = the client picks its own depth; anything else is the depth it must train);
  3. per round, after it closed: `aggregate(global_state, updates)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

BLOCK_ELEMENTS = 1 << 17  # elements per block: float32 accumulator + scratch + anchor = 1.5 MiB, within L2 (2 MiB)
WEIGHTINGS = ("samples_depth", "samples")  # mirrors testbed.config.names.WEIGHTINGS (a test checks it)


@dataclass(frozen=True)
class ClientUpdate:
    """What one client sent back for one round."""

    client: str  # e.g. "c03"
    samples: int  # n_k: local training samples seen this round
    depth: int  # L_k: deepest transformer layer trained (1-based)
    task: str  # "keyword" | "speaker"
    tensors: Mapping[str, np.ndarray]  # embed + layers <= depth + this task's heads <= depth; never mutated


class Strategy:
    """Layer-by-layer weighted averaging: θ_key = Σ_k w_k θ_k,key / Σ_k w_k over the key's contributors.

    Numerics: the average is taken as the first contributor plus the weighted steps of the others
    from it, accumulated in the array's precision (`_average`): for a round's small steps about one
    rounding per element, and identical updates come back bit for bit. Streamed block by block
    (never a stack of all updates): peak memory is about the old state + the new state + two
    scratch blocks of 512 KiB.
    """

    name = "base"
    cites = ""
    waits_for_all = False  # True: the round has no deadline and waits for every selected client
    client_loss: str | None = None  # the loss mode clients must train with (names.LOSSES); None: the scenario's

    def __init__(self, weighting: str = "samples_depth"):
        # every strategy accepts the scenario's `weighting`; only depth_aware reads it
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting '{weighting}' (allowed: {', '.join(sorted(WEIGHTINGS))})")
        self.weighting = weighting

    # ---- hooks -------------------------------------------------------------------------------
    def configure(self, fleet_depths: Mapping[str, int], exits: tuple[int, ...]) -> None:
        """Called once before the first round: each client's depth cap (a transformer layer, one of
        `exits`) and the model's exit layers. Strategies that do not depend on the fleet ignore it."""

    def client_depth(self, chosen: int, full_depth: int) -> int:
        """The depth a client is told to train; `chosen` is its own choice (0 = let the client decide)."""
        return chosen

    def weight(self, update: ClientUpdate) -> float:
        """Un-normalised weight of one client's update: n_k (FedAvg)."""
        return float(update.samples)

    def contributors(self, key: str, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """The updates averaged into `key`: those that trained it (S_l for layers, same-task clients for heads)."""
        return [update for update in updates if key in update.tensors]

    def tensor_of(self, update: ClientUpdate, key: str, current: np.ndarray) -> np.ndarray:
        """The array a contributor adds to `key` (`current` = its global value): what it uploaded."""
        return update.tensors[key]

    # ---- the loop ----------------------------------------------------------------------------
    def normalised_weights(self, key: str, updates: list[ClientUpdate]) -> list[tuple[ClientUpdate, float]]:
        """(update, weight) for the contributors of `key`, weights summing to one; [] when nobody counts."""
        pairs = [(update, self.weight(update)) for update in self.contributors(key, updates)]
        for update, weight in pairs:
            if not (np.isfinite(weight) and weight >= 0):
                raise ValueError(f"{self.name}: client {update.client}: weight {weight} is not finite and >= 0")
        total = sum(weight for _, weight in pairs)
        if total <= 0:  # only zero-weight contributors: nothing to learn from, keep the global value
            return []
        return [(update, weight / total) for update, weight in pairs if weight > 0]

    def aggregate(self, global_state: dict[str, np.ndarray],
                  updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
        """A new state with every key of `global_state`; a key nobody trained keeps its global array."""
        check_updates(global_state, updates)
        new_state = {}
        for key, current in global_state.items():
            weights = self.normalised_weights(key, updates)
            if weights:
                new_state[key] = _average(current, ((self.tensor_of(update, key, current), weight)
                                                    for update, weight in weights))
            else:
                new_state[key] = current
        return new_state


def check_updates(global_state: Mapping[str, np.ndarray], updates: list[ClientUpdate]) -> None:
    """Guard (the aggregator validates earlier): every uploaded key exists globally with the same shape."""
    for update in updates:
        for key, value in update.tensors.items():
            if key not in global_state:
                raise ValueError(f"client {update.client}: unknown state key '{key}'")
            if np.shape(value) != np.shape(global_state[key]):
                raise ValueError(f"client {update.client}: state key '{key}': shape {np.shape(value)}, "
                                 f"expected {np.shape(global_state[key])}")


def _average(current: np.ndarray, weighted: Iterable[tuple[np.ndarray, float]]) -> np.ndarray:
    """Σ_k w_k θ_k for normalised weights, as θ_1 + Σ_{k>1} w_k (θ_k − θ_1), one block at a time.

    Why the difference form: clients' updates are small steps from a common start, so the steps are
    accumulated in the array's own float precision (float32 for float32 state: half the bytes and
    none of the conversions a float64 sum needs) and their rounding errors scale with the steps, not
    with the weights: the error is one rounding of the result plus a few float32 roundings of the
    steps' size (a plain float32 sum adds roundings of the weights' size), and identical updates
    (or a lone contributor) come back bit for bit. Blocks of BLOCK_ELEMENTS keep the accumulator,
    the scratch and θ_1's block in a core's L2 cache, so each array is read from memory once.
    Integer buffers are averaged in float64 and rounded to the nearest integer.
    """
    dtype = np.asarray(current).dtype
    sources = [(np.asarray(array).reshape(-1), weight) for array, weight in weighted]
    result = np.empty(np.shape(current), dtype=dtype)
    flat_result = result.reshape(-1)
    if not np.issubdtype(dtype, np.inexact):
        total = sum(np.float64(weight) * source.astype(np.float64) for source, weight in sources)
        flat_result[:] = np.rint(total)
        return result
    accumulate = np.promote_types(dtype, np.float32)  # float16 state steps are summed in float32
    (anchor, _), rest = sources[0], [(source, accumulate.type(weight)) for source, weight in sources[1:]]
    steps = np.empty(min(BLOCK_ELEMENTS, flat_result.size), dtype=accumulate)
    scratch = np.empty_like(steps)
    for start in range(0, flat_result.size, BLOCK_ELEMENTS):
        stop = min(start + BLOCK_ELEMENTS, flat_result.size)
        block_anchor = anchor[start:stop]
        block_steps, block_scratch = steps[:stop - start], scratch[:stop - start]
        block_steps.fill(0)
        for source, weight in rest:
            np.subtract(source[start:stop], block_anchor, out=block_scratch, dtype=accumulate)
            block_scratch *= weight
            block_steps += block_scratch
        np.add(block_anchor, block_steps, out=block_steps)
        flat_result[start:stop] = block_steps  # cast to the global dtype, as astype does
    return result
