"""Server-side aggregation strategies (pure NumPy): a registry of small `Strategy` subclasses."""

from __future__ import annotations

from testbed.strategies.base import WEIGHTINGS, ClientUpdate, Strategy
from testbed.strategies.depth_aware import DepthAware
from testbed.strategies.depthfl import DepthFL
from testbed.strategies.fedavg_drop import FedAvgDrop
from testbed.strategies.fedavg_full import FedAvgFull
from testbed.strategies.fedavg_hetero_naive import FedAvgHeteroNaive
from testbed.strategies.fedavg_min_depth import FedAvgMinDepth
from testbed.strategies.layerwise import Layerwise
from testbed.strategies.selection import Deadline, OverSelection, RoundRule, WaitForAll, round_rule

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    FedAvgFull, FedAvgDrop, FedAvgMinDepth, FedAvgHeteroNaive, Layerwise, DepthAware, DepthFL)}


def make_strategy(name: str, weighting: str = "samples_depth") -> Strategy:
    """The strategy registered under `name`; an unknown name fails listing the valid ones."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}' (allowed: {', '.join(sorted(STRATEGIES))})")
    return STRATEGIES[name](weighting)


__all__ = ["STRATEGIES", "WEIGHTINGS", "ClientUpdate", "Deadline", "OverSelection", "RoundRule", "Strategy",
           "WaitForAll", "make_strategy", "round_rule"]
