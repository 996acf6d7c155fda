"""The global early-exit model held by the aggregator: NumPy views for the wire, torch for evaluation."""

from __future__ import annotations

import time

import numpy as np
import torch

from testbed.config.schema import Scenario
from testbed.model.backbone import build_backbone
from testbed.model.early_exit import EarlyExitModel
from testbed.model.state import group_of, load_partial_state, partial_state, state_digest
from testbed.model.train import evaluate


class GlobalModel:
    """Owns the global weights; `state` maps every key to a NumPy view of the model's own storage."""

    def __init__(self, scenario: Scenario, classes: dict[str, int], progress: bool = False):
        spec = scenario.backbone
        backbone = build_backbone(spec.name, spec.family, spec.pretrained, scenario.seed, progress=progress)
        torch.manual_seed(scenario.seed)  # the heads' initialisation
        self.model = EarlyExitModel(backbone, classes, spec.exits, spec.freeze_feature_encoder)
        self.state = {key: value.numpy() for key, value in self.model.state_dict().items()}

    @property
    def exits(self) -> tuple[int, ...]:
        return self.model.exits

    def frontend(self) -> dict[str, np.ndarray]:
        """The frozen CNN front end, sent once per client at WELCOME (empty when it is trained)."""
        if not self.model.freeze_feature_encoder:
            return {}
        return {k: v for k, v in self.state.items() if group_of(k).kind == "frontend"}

    def tensors_for(self, depth: int, task: str) -> dict[str, np.ndarray]:
        """What a client training `task` to `depth` downloads and must upload: layers and heads <= depth."""
        return {key: value.numpy() for key, value in partial_state(self.model, depth, {task}).items()}

    def expected(self, depth: int, task: str) -> dict[str, tuple[tuple[int, ...], str]]:
        return {key: (value.shape, value.dtype.name) for key, value in self.tensors_for(depth, task).items()}

    def load(self, new_state: dict[str, np.ndarray]) -> None:
        """Copy an aggregated state into the model (only keys whose array changed)."""
        changed = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in new_state.items()
                   if v is not self.state[k]}
        load_partial_state(self.model, changed)

    def digest(self) -> str:
        """SHA-256 over every key and its bytes: equal digests mean identical global states."""
        return state_digest(self.state)

    def evaluate(self, test_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict, float]:
        """Accuracy per exit per task on held-out data: ({task: {exit layer: accuracy}}, seconds)."""
        started = time.perf_counter()
        accuracy = {task: {str(layer): round(value, 4) for layer, value in
                           evaluate(self.model, waveforms, labels, task=task).items()}
                    for task, (waveforms, labels) in test_sets.items()}
        return accuracy, time.perf_counter() - started
