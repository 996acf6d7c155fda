"""The early-exit model: an SSL backbone run to depth d, with a pooled linear head after each exit layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from testbed.model.geometry import default_exits, exit_depth  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from transformers import HubertModel, Wav2Vec2Model, WavLMModel

    Backbone = Wav2Vec2Model | HubertModel | WavLMModel  # the families architecture.py builds or loads

LOSS_MODES = ("all_exits", "deepest", "self_distill")


FRONTEND_CHUNK = 4  # clips per pass through a frozen CNN front end (peak memory, not speed)


def normalise(waveforms: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per utterance, as wav2vec 2.0's feature extractor does."""
    return (waveforms - waveforms.mean(-1, keepdim=True)) / (waveforms.std(-1, keepdim=True) + 1e-5)


def statistics_pool(hidden: torch.Tensor) -> torch.Tensor:
    """(batch, frames, hidden) -> (batch, 2 * hidden): mean || std over frames."""
    std = (hidden.var(dim=1, unbiased=False) + 1e-5).sqrt()
    return torch.cat([hidden.mean(dim=1), std], dim=-1)


class ExitHead(nn.Module):
    """Statistics pooling (mean || std over frames), a layer norm of the pooled vector, one linear layer.

    Why the norm: the pooled statistics are poorly scaled for a linear layer (at L4 of the tiny backbone their
    spread across clips ranges from 0.05 to 1.46 between dimensions, and the standard-deviation half sits on
    a common offset about five times its spread). Measured on the speaker task, depth 4, 600 centralized
    steps: 48.4 % held-out with the norm against 22.3 % without (docs/benchmarks.md, "Speaker information").
    A layer norm keeps no running statistics, so federated averaging treats it like any other weight.
    """

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(2 * hidden_size)
        self.linear = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (batch, frames, hidden) -> (batch, classes)
        return self.linear(self.norm(statistics_pool(hidden)))


class EarlyExitModel(nn.Module):
    """Backbone + one head per (task, exit). `forward(wave, depth, task)` never runs layers > depth."""

    def __init__(self, backbone: Backbone, tasks: dict[str, int], exits: tuple[int, ...] | None = None,
                 freeze_feature_encoder: bool = True):
        super().__init__()
        self.backbone = backbone
        config = backbone.config
        self.num_layers: int = config.num_hidden_layers
        self.exits = tuple(exits) if exits else default_exits(self.num_layers)
        if any(b <= a for a, b in zip(self.exits, self.exits[1:])) or not self.exits[0] >= 1 \
                or self.exits[-1] > self.num_layers:
            raise ValueError(f"exits {self.exits} must be strictly increasing within 1..{self.num_layers}")
        self.family: str = config.model_type
        self.stable_layer_norm: bool = bool(getattr(config, "do_stable_layer_norm", False))
        self.freeze_feature_encoder = freeze_feature_encoder
        if freeze_feature_encoder:
            backbone.feature_extractor.requires_grad_(False)
        # keys "<task>_<layer>" (ModuleDict keys cannot contain dots)
        self.heads = nn.ModuleDict({f"{task}_{layer}": ExitHead(config.hidden_size, classes)
                                    for task, classes in tasks.items() for layer in self.exits})
        self.tasks = dict(tasks)

    def exits_up_to(self, depth: int) -> tuple[int, ...]:
        return tuple(e for e in self.exits if e <= depth)

    def embed(self, waveforms: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """CNN front end + projection + positional conv: (batch, samples) -> (batch, frames, hidden)."""
        backbone = self.backbone
        waveforms = normalise(waveforms)
        if self.freeze_feature_encoder or not torch.is_grad_enabled():
            # nothing is kept for a backward pass: run the CNN a few clips at a time, so its
            # intermediate maps (the first is 128-512 channels x 1/5 of the samples) stay small
            with torch.no_grad():
                features = torch.cat([backbone.feature_extractor(chunk)
                                      for chunk in waveforms.split(FRONTEND_CHUNK)]).transpose(1, 2)
        else:
            features = backbone.feature_extractor(waveforms).transpose(1, 2)
        hidden = backbone.feature_projection(features)
        if isinstance(hidden, tuple):  # wav2vec2/WavLM also return the normed CNN features
            hidden = hidden[0]
        if mask is not None:  # (batch, frames) bool: HuBERT-style masked prediction during pretraining
            hidden = torch.where(mask[..., None], backbone.masked_spec_embed.to(hidden.dtype), hidden)
        encoder = backbone.encoder
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not self.stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        return encoder.dropout(hidden)

    def hidden_states(self, waveforms: torch.Tensor, depth: int, mask: torch.Tensor | None = None):
        """Yield (layer index 1..depth, hidden state) running only transformer layers 1..depth."""
        if not 1 <= depth <= self.num_layers:
            raise ValueError(f"depth {depth} outside 1..{self.num_layers}")
        hidden = self.embed(waveforms, mask)
        position_bias = None  # WavLM's relative position bias, computed by its first layer
        for index, layer in enumerate(self.backbone.encoder.layers[:depth]):
            if self.family == "wavlm":
                hidden, position_bias = layer(hidden, position_bias=position_bias, index=index)
            else:
                hidden = layer(hidden)
            yield index + 1, hidden

    def forward(self, waveforms: torch.Tensor, depth: int, task: str) -> list[torch.Tensor]:
        """Logits of every exit <= depth, shallowest first; each (batch, classes)."""
        logits = []
        for layer, hidden in self.hidden_states(waveforms, depth):
            if layer in self.exits:
                if self.stable_layer_norm:  # pre-LN stacks normalise only at the very end
                    hidden = self.backbone.encoder.layer_norm(hidden)
                logits.append(self.heads[f"{task}_{layer}"](hidden))
        return logits


def exit_loss(logits: list[torch.Tensor], labels: torch.Tensor, mode: str = "all_exits",
              temperature: float = 2.0) -> torch.Tensor:
    """Loss over the exits a client ran.

    all_exits: sum of cross-entropies of every exit <= d; deepest: only the deepest head;
    self_distill: all_exits plus DepthFL's mutual distillation (each exit matches the others'
    softened predictions, KL at `temperature`).
    """
    if mode not in LOSS_MODES:
        raise ValueError(f"unknown loss mode '{mode}' (allowed: {', '.join(LOSS_MODES)})")
    if mode == "deepest":
        return F.cross_entropy(logits[-1], labels)
    losses = [F.cross_entropy(out, labels) for out in logits]
    loss = sum(losses[1:], losses[0])
    if mode == "self_distill" and len(logits) > 1:
        for i, student in enumerate(logits):
            teachers = [t.detach() for j, t in enumerate(logits) if j != i]
            target = torch.stack([F.softmax(t / temperature, -1) for t in teachers]).mean(0)
            loss = loss + temperature ** 2 * F.kl_div(F.log_softmax(student / temperature, -1), target,
                                                      reduction="batchmean")
    return loss
