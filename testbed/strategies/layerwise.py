"""Layer-wise partial FedAvg: each layer averaged by n_k over the clients that trained it (S_l).

Partial (sub-model) aggregation as in HeteroFL (Diao et al., "HeteroFL: Computation and
Communication Efficient Federated Learning for Heterogeneous Clients", ICLR 2021), where each
parameter is averaged only over the clients whose sub-model holds it; applied to depth, as in
early-exit FL such as ReeFL (Lee et al., "Recurrent Early Exits for Federated Learning with
Heterogeneous Clients", ICML 2024) and DepthFL (Kim et al., ICLR 2023).
"""

from __future__ import annotations

from testbed.strategies.base import Strategy


class Layerwise(Strategy):
    """θ_l = Σ_{k∈S_l} n_k θ_{k,l} / Σ_{k∈S_l} n_k: the base class's default hooks, unchanged."""

    name = "layerwise"
    cites = ("Diao et al., HeteroFL, ICLR 2021 (partial averaging); "
             "Lee et al., ReeFL, ICML 2024 (early-exit FL)")
