"""Exit policies: how a client picks the depth it trains this round (DESIGN 4.2)."""

from __future__ import annotations


def exit_depth(exits: tuple[int, ...], max_exit: int | None) -> int:
    """The transformer depth of the `max_exit`-th exit (1-based, capped at the deepest); None = deepest."""
    index = len(exits) if max_exit is None else min(max_exit, len(exits))
    return exits[index - 1]


class StaticPolicy:
    """`static`: always the profile's cap (`max_exit`)."""

    def __init__(self, exits: tuple[int, ...], max_exit: int | None):
        self.depth = exit_depth(exits, max_exit)

    def choose(self) -> int:
        return self.depth

    def observe(self, depth: int, timings: dict) -> None:
        """Measured round timings; the static policy ignores them."""


POLICIES = {"static": StaticPolicy}


def make_policy(name: str, exits: tuple[int, ...], max_exit: int | None):
    if name not in POLICIES:
        raise ValueError(f"exit policy '{name}' is not implemented yet (available: {', '.join(POLICIES)})")
    return POLICIES[name](exits, max_exit)
