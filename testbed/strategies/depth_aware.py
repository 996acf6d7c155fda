"""Depth-aware layer-wise aggregation, the method under study.

Guo et al., "Adaptive Federated Fine-Tuning of Self-Supervised Speech Representations",
Interspeech 2026: the server aggregates layer by layer over the clients that trained the layer,
weighting by data size and trained depth. The exact formula is not published; we use
    θ_l = Σ_{k∈S_l} n_k L_k θ_{k,l} / Σ_{k∈S_l} n_k L_k
(`weighting="samples_depth"`, the default). Why n_k L_k: a client that trained deeper back-propagated
through more layers above l, so its copy of l has adapted to a deeper stack. `weighting="samples"`
drops the depth factor, which makes this exactly `layerwise` (kept as an ablation switch).
Heads need no special case: only clients of a task upload that task's heads, so the contributors
rule averages each head over the clients that trained it.
"""

from __future__ import annotations

from testbed.strategies.base import ClientUpdate, Strategy


class DepthAware(Strategy):
    """Layer-wise partial averaging weighted by n_k * L_k (or n_k with weighting="samples")."""

    name = "depth_aware"
    cites = ("Guo et al., Adaptive Federated Fine-Tuning of Self-Supervised Speech Representations, "
             "Interspeech 2026")

    def weight(self, update: ClientUpdate) -> float:
        if self.weighting == "samples":
            return float(update.samples)
        return float(update.samples) * float(update.depth)
