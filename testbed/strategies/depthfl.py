"""DepthFL: unweighted partial averaging by depth, with self-distillation among the exits on the client.

Kim et al., "DepthFL: Depthwise Federated Learning for Heterogeneous Clients", ICLR 2023. Each
client trains a depth-truncated model with a classifier after every block it holds; the server
averages each layer (and classifier) as a plain mean over the clients that hold it,
    θ_l = (1 / |S_l|) Σ_{k∈S_l} θ_{k,l},
and the clients add mutual self-distillation among their exits to the loss (the `self_distill` loss
mode of testbed.model.early_exit, which the runtime reads from `client_loss`).
"""

from __future__ import annotations

from testbed.strategies.base import ClientUpdate, Strategy


class DepthFL(Strategy):
    """θ_l = mean over S_l of θ_{k,l}, every client weighted alike; clients train with self-distillation."""

    name = "depthfl"
    cites = "Kim et al., DepthFL: Depthwise Federated Learning for Heterogeneous Clients, ICLR 2023"
    client_loss = "self_distill"  # the exits teach one another on the client

    def weight(self, update: ClientUpdate) -> float:
        return 1.0  # unweighted: every client that trained the layer counts once, whatever its n_k
