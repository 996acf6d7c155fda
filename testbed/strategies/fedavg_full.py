"""Homo-FL / FedAvg: every client trains the full depth; weights n_k.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017. The homogeneous baseline the paper compares against: the round has no deadline and
waits for every selected client (`waits_for_all`); `fedavg_drop` is the same rule under a deadline.
"""

from __future__ import annotations

from testbed.strategies.base import Strategy


class FedAvgFull(Strategy):
    """θ = Σ_k n_k θ_k / Σ_k n_k, with every client forced to the full depth."""

    name = "fedavg_full"
    cites = ("McMahan et al., Communication-Efficient Learning of Deep Networks from Decentralized Data, "
             "AISTATS 2017")
    waits_for_all = True  # Homo-FL: no deadline, the slowest selected client sets the round's length

    def client_depth(self, chosen: int, full_depth: int) -> int:
        return full_depth  # Homo-FL: nobody is allowed a shallower exit
