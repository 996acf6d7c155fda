"""Server-side aggregation strategies (pure NumPy): a registry of small `Strategy` subclasses."""

from __future__ import annotations

from testbed.strategies.base import WEIGHTINGS, ClientUpdate, Strategy
from testbed.strategies.depth_aware import DepthAware
from testbed.strategies.fedavg_full import FedAvgFull
from testbed.strategies.layerwise import Layerwise

# Only what is implemented; fedavg_drop, fedavg_min_depth, fedavg_hetero_naive, depthfl come later.
STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (DepthAware, FedAvgFull, Layerwise)}


def make_strategy(name: str, weighting: str = "samples_depth") -> Strategy:
    """The strategy registered under `name`; an unknown name fails listing the valid ones."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}' (allowed: {', '.join(sorted(STRATEGIES))})")
    return STRATEGIES[name](weighting)


__all__ = ["STRATEGIES", "WEIGHTINGS", "ClientUpdate", "Strategy", "make_strategy"]
