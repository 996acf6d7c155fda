"""Where a backbone's exits sit: plain arithmetic on layer counts, free of torch (the config checks use it)."""

from __future__ import annotations

from collections.abc import Mapping


def default_exits(num_layers: int, count: int = 4) -> tuple[int, ...]:
    """Evenly spaced exit layers: 12 layers -> (3, 6, 9, 12); 8 -> (2, 4, 6, 8); 2 -> (1, 2)."""
    count = min(count, num_layers)
    return tuple(sorted({round(num_layers * (i + 1) / count) for i in range(count)}))


def exit_depth(exits: tuple[int, ...], max_exit: int | None) -> int:
    """The transformer depth of the `max_exit`-th exit (1-based, capped at the deepest); None = deepest."""
    index = len(exits) if max_exit is None else min(max_exit, len(exits))
    return exits[index - 1]


PREFER_WITHIN = 0.01  # accuracy: an exit this close to the best is as good, and cheaper


def auto_exit(accuracy: Mapping[int, float]) -> int:
    """The exit an `auto` preferred exit picks from one evaluation of a task ({exit layer: accuracy}): the
    shallowest within PREFER_WITHIN of the best. The aggregator sends it to the clients for the next rounds;
    a comparison judges the task there."""
    best = max(accuracy.values())
    return min(layer for layer, value in accuracy.items() if value >= best - PREFER_WITHIN)
