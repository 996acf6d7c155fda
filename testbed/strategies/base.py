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

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

BLOCK_ELEMENTS = 1 << 15  # float64 elements per block: accumulator + scratch = 512 KiB, within L2
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

    Numerics: every element is accumulated in float64, then cast back to the global array's dtype,
    so float32 in gives float32 out and the rounding error is one float32 rounding per element.
    Streamed block by block (never a stack of all updates): peak memory is about the old state +
    the new state + two float64 blocks of 256 KiB.
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
    """Σ w_k θ_k for normalised weights in float64, one block of elements at a time.

    Block-major order (every array's block, then the next block) keeps the float64 accumulator and
    scratch in a core's L2 cache, so memory traffic is just reading each array once; per element
    the operations and their order are those of a whole-array float64 sum, so results are identical.
    """
    dtype = np.asarray(current).dtype
    result = np.empty(np.shape(current), dtype=dtype)
    flat_result = result.reshape(-1)
    # explicit float64 weights so float32 input is never multiplied in float32 (NumPy 1 vs 2 casting rules)
    sources = [(np.asarray(array).reshape(-1), np.float64(weight)) for array, weight in weighted]
    total = np.empty(min(BLOCK_ELEMENTS, flat_result.size), dtype=np.float64)
    scratch = np.empty_like(total)  # w_k * θ_k for one block, reused
    rounds = not np.issubdtype(dtype, np.inexact)  # integer buffers: the nearest integer, not a truncation
    for start in range(0, flat_result.size, BLOCK_ELEMENTS):
        stop = min(start + BLOCK_ELEMENTS, flat_result.size)
        block_total, block_scratch = total[:stop - start], scratch[:stop - start]
        block_total.fill(0.0)
        for source, weight in sources:
            np.multiply(source[start:stop], weight, out=block_scratch, dtype=np.float64)
            block_total += block_scratch
        if rounds:
            np.rint(block_total, out=block_total)
        flat_result[start:stop] = block_total  # cast to the global dtype, as astype does
    return result
