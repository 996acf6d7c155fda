"""Deadline FedAvg ("exclusive learning"): full depth for everyone, updates after the deadline are lost.

FedAvg (McMahan et al., AISTATS 2017) run under a round deadline: the straggler-dropping baseline of
Li et al., "Federated Optimization in Heterogeneous Networks" (FedProx, MLSys 2020), which discards
the devices that do not finish in time, and the exclusive-learning baseline of heterogeneous FL
(compared against by Kim et al., DepthFL, ICLR 2023), which learns only from the clients able to
train the full model.
The aggregation is FedAvg over what arrived; the dropping itself is the round's deadline
(`waits_for_all = False`, applied by testbed.strategies.selection.Deadline).
"""

from __future__ import annotations

from testbed.strategies.fedavg_full import FedAvgFull


class FedAvgDrop(FedAvgFull):
    """θ = Σ_k n_k θ_k / Σ_k n_k over the full-depth updates that arrived before the deadline."""

    name = "fedavg_drop"
    cites = ("McMahan et al., FedAvg, AISTATS 2017; Li et al., FedProx, MLSys 2020 (dropping stragglers); "
             "Kim et al., DepthFL, ICLR 2023 (exclusive learning)")
    waits_for_all = False  # the deadline closes the round; late full-depth updates are discarded
