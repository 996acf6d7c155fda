"""FedAvg at the fleet's shallowest depth: every client trains only as deep as the weakest one can.

The baseline that limits the global model to what the weakest client can train (Diao et al.,
HeteroFL, ICLR 2021, and Kim et al., DepthFL, ICLR 2023, propose sub-models against it): nobody
straggles for lack of capacity, but the layers above that depth are never trained. Aggregation is
FedAvg (McMahan et al., AISTATS 2017) by n_k; layers and heads above the shared depth keep their
global value. The depth is min over the fleet's depth caps, given once through `configure`.
"""

from __future__ import annotations

from collections.abc import Mapping

from testbed.strategies.base import Strategy


class FedAvgMinDepth(Strategy):
    """Every client is told the depth min_k cap_k; θ = Σ_k n_k θ_k / Σ_k n_k on what they trained."""

    name = "fedavg_min_depth"
    cites = ("McMahan et al., FedAvg, AISTATS 2017; Diao et al., HeteroFL, ICLR 2021 and "
             "Kim et al., DepthFL, ICLR 2023 (the shallowest-model baseline)")

    def __init__(self, weighting: str = "samples_depth"):
        super().__init__(weighting)
        self.min_depth: int | None = None  # transformer layers; set by configure()

    def configure(self, fleet_depths: Mapping[str, int], exits: tuple[int, ...]) -> None:
        if not fleet_depths:
            raise ValueError(f"{self.name}: the fleet is empty (no depth caps to take the minimum of)")
        for client, depth in fleet_depths.items():
            if depth not in exits:
                raise ValueError(f"{self.name}: client {client}: depth cap {depth} is not an exit "
                                 f"(allowed: {', '.join(map(str, exits))})")
        self.min_depth = min(fleet_depths.values())

    def client_depth(self, chosen: int, full_depth: int) -> int:
        if self.min_depth is None:
            raise RuntimeError(f"{self.name}: configure(fleet_depths, exits) must be called before the first round")
        return min(self.min_depth, full_depth)
