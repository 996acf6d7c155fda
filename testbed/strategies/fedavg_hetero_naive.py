"""Naive heterogeneous FedAvg: own depth, untrained parameters count as the unchanged global ones.

FedAvg (McMahan et al., AISTATS 2017) applied as if every client had returned the whole model: a
client that trained to depth L_k sends layers <= L_k, and every layer above counts as the global
weights it received, unchanged. Everything is then averaged over all clients by n_k, so a layer
trained by few clients is pulled back towards its old value (the dilution that partial averaging,
Diao et al., HeteroFL, ICLR 2021, avoids). Backbone keys are averaged over every client of the
round; a head over every client of its task (a client never holds another task's heads). A key
nobody trained keeps its global value exactly. The global arrays are read in place, never copied.
"""

from __future__ import annotations

import numpy as np

from testbed.strategies.base import ClientUpdate, Strategy

HEAD_PREFIX = "heads."  # exit heads' state keys, "heads.<task>_<exit>." (testbed.model.state.group_of)


class FedAvgHeteroNaive(Strategy):
    """θ = Σ_k n_k θ̃_k / Σ_k n_k, θ̃_k = the client's upload where it trained the key, else the global value."""

    name = "fedavg_hetero_naive"
    cites = ("McMahan et al., FedAvg, AISTATS 2017 (naively averaged over all clients); "
             "Diao et al., HeteroFL, ICLR 2021 (the dilution it shows)")

    def contributors(self, key: str, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        trained_by = [update for update in updates if key in update.tensors]
        if not trained_by:
            return []  # nobody trained it: every term would be the global value, keep it as is
        if key.startswith(HEAD_PREFIX):  # the uploaders share the head's task: its population
            return [update for update in updates if update.task == trained_by[0].task]
        return list(updates)

    def tensor_of(self, update: ClientUpdate, key: str, current: np.ndarray) -> np.ndarray:
        return update.tensors.get(key, current)  # untrained here: the unchanged global array, by reference
