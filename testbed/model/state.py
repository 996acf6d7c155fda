"""Per-layer views of an early-exit model's state, so that "layers <= d plus heads <= d" travel alone.

Every state-dict key belongs to one group:
  frontend  the CNN feature encoder (frozen by default, so never sent),
  embed     feature projection, mask embedding, positional conv, encoder layer norm (depth 0),
  layer k   transformer layer k (1-based),
  head      an exit head after layer k for one task.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

_LAYER = re.compile(r"^backbone\.encoder\.layers\.(\d+)\.")
_HEAD = re.compile(r"^heads\.(\w+)_(\d+)\.")


@dataclass(frozen=True)
class Group:
    kind: str  # "frontend" | "embed" | "layer" | "head"
    depth: int  # 0 for frontend/embed; the transformer layer (1-based) for layers and heads
    task: str | None = None  # heads only


def group_of(key: str) -> Group:
    """The group a state-dict key of `EarlyExitModel` belongs to."""
    if match := _LAYER.match(key):
        return Group("layer", int(match.group(1)) + 1)
    if match := _HEAD.match(key):
        return Group("head", int(match.group(2)), match.group(1))
    if key.startswith("backbone.feature_extractor."):
        return Group("frontend", 0)
    if key.startswith("backbone."):
        return Group("embed", 0)
    raise KeyError(f"state key '{key}' belongs to no known group")


def wanted(group: Group, depth: int, tasks: set[str] | None, include_frontend: bool) -> bool:
    """Does a client training to `depth` on `tasks` need (and send back) this group?"""
    if group.kind == "frontend":
        return include_frontend
    if group.kind == "head":
        return group.depth <= depth and (tasks is None or group.task in tasks)
    return group.depth <= depth


def partial_state(model: torch.nn.Module, depth: int, tasks: set[str] | None = None,
                  include_frontend: bool | None = None) -> dict[str, torch.Tensor]:
    """Embed + layers 1..depth + heads at exits <= depth (of `tasks`; None = all tasks).

    The frozen CNN front end is left out unless it is being trained (or asked for).
    Tensors are detached views of the model's own storage: copy before mutating.
    """
    if include_frontend is None:
        include_frontend = not getattr(model, "freeze_feature_encoder", True)
    return {key: value.detach() for key, value in model.state_dict().items()
            if wanted(group_of(key), depth, tasks, include_frontend)}


def load_partial_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a partial state into the model in place; unknown keys or shapes are an error."""
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise KeyError(f"unknown state key '{key}'")
        if own[key].shape != value.shape:
            raise ValueError(f"state key '{key}': shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def state_digest(state: Mapping[str, np.ndarray | torch.Tensor]) -> str:
    """SHA-256 over every key and its bytes, first 16 hex digits: equal digests mean identical states."""
    hasher = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        hasher.update(key.encode())
        hasher.update(np.ascontiguousarray(array).tobytes())
    return hasher.hexdigest()[:16]
