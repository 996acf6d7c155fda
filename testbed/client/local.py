"""What a client computes: its data shard, its copy of the model, one round of local training."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from testbed.client.costs import DepthCost, measure_costs
from testbed.config.convert import from_data
from testbed.config.loader import ClientSpec
from testbed.config.schema import Scenario
from testbed.emulation.memory import MemoryBudget, peak_mb, reset_peak
from testbed.emulation.throttle import ComputeThrottle, ThrottleReport
from testbed.model.backbone import build_backbone
from testbed.model.early_exit import EarlyExitModel
from testbed.model.state import load_partial_state, partial_state
from testbed.model.train import make_optimizer, train_steps


@dataclass(frozen=True)
class RoundResult:
    tensors: dict[str, np.ndarray]  # layers <= depth and this task's heads <= depth (views of the model)
    samples: int  # clips seen this round (local_steps x batch)
    loss: float  # mean training loss
    throttle: ThrottleReport  # host CPU seconds, target and achieved emulated seconds of local training
    peak_mb: float  # peak resident memory during the round, MiB


def to_torch(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Read-only views of received frames as tensors (no copy; they are only read)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return {name: torch.from_numpy(array) for name, array in tensors.items()}


@dataclass(frozen=True)
class Loaded:
    """What `LocalSession.release()` drops and `ensure_loaded()` builds again: the shard and the model."""

    model: EarlyExitModel
    waveforms: torch.Tensor  # this client's clips
    labels: torch.Tensor


class LocalSession:
    """A client's long-lived state, built from the aggregator's WELCOME.

    Data and model can be released between rounds (`release()`, when only a few clients of a large
    fleet train each round) and are loaded again on the next `ensure_loaded()`.
    """

    def __init__(self, run: dict, frontend: dict[str, np.ndarray]):
        self.scenario: Scenario = from_data(Scenario, run["scenario"], source="aggregator WELCOME")
        self.spec: ClientSpec = from_data(ClientSpec, run["client"], source="aggregator WELCOME")
        self.seed: int = run["seed"]
        self.task = self.spec.task
        self.loss_mode: str = run.get("loss", self.scenario.training.loss)  # a strategy may impose its own
        self.exits: tuple[int, ...] = ()
        self._run, self._frontend = run, {name: np.array(value) for name, value in frontend.items()}
        self.loaded: Loaded | None = None  # None while released
        self.ensure_loaded()

    def ensure_loaded(self) -> None:
        """Load this client's shard and build its model (a no-op when loaded)."""
        from testbed.data.source import task_data

        if self.loaded is not None:
            return
        data = task_data(self.scenario.data, self.task, self.scenario.seed)
        shard = np.asarray(self._run["shard"], dtype=np.int64)
        waveforms = torch.from_numpy(data.train_clips(shard))
        labels = torch.from_numpy(data.train_labels[shard])
        classes = len(data.classes)
        del data
        task_data.cache_clear()  # unmap the corpus-wide clip file: this client keeps only its shard (~60 MB)
        spec = self.scenario.backbone
        backbone = build_backbone(spec.name, spec.family, spec.pretrained, self.scenario.seed, progress=False)
        model = EarlyExitModel(backbone, {self.task: classes}, spec.exits, spec.freeze_feature_encoder)
        load_partial_state(model, to_torch(self._frontend))  # the aggregator's frozen front end
        self.exits = model.exits
        self.loaded = Loaded(model, waveforms, labels)

    def _ready(self) -> Loaded:
        """Shard and model, for the work that needs them: its caller has loaded them (the session loads at once,
        and the worker's round calls ensure_loaded() before its work)."""
        assert self.loaded is not None, "released: ensure_loaded() first"
        return self.loaded

    def release(self) -> None:
        """Drop data and model until the next round that needs them (the global layers come with it)."""
        self.loaded = None

    def measure_costs(self) -> dict[int, DepthCost]:
        training, loaded = self.scenario.training, self._ready()
        return measure_costs(loaded.model, loaded.waveforms, loaded.labels, task=self.task,
                             batch_size=training.batch_size, loss_mode=self.loss_mode)

    def load(self, tensors: dict[str, np.ndarray]) -> None:
        """Copy the received layers into the model (the received frames can then be let go)."""
        load_partial_state(self._ready().model, to_torch(tensors))

    def train_round(self, round_index: int, depth: int, on_step,
                    throttle: ComputeThrottle, memory: MemoryBudget) -> RoundResult:
        """Train `local_steps` to `depth` (layers loaded by `load`) at the device's pace; return the trained layers.

        After every step the throttle lets the device's clock catch up and the memory budget is checked
        (OutOfMemory propagates: the emulated device would have been killed).
        """
        reset_peak()
        training = self.scenario.training
        round_seed = self.seed * 100_003 + round_index
        generator = torch.Generator().manual_seed(round_seed)  # batch order, reproducible per round
        torch.manual_seed(round_seed)  # dropout

        def step_done(step: int, loss: float) -> None:
            throttle.step()
            memory.check()
            on_step(step, loss)

        loaded = self._ready()
        throttle.start()
        optimizer = make_optimizer(loaded.model, training.learning_rate, training.head_learning_rate)
        stats = train_steps(loaded.model, optimizer, loaded.waveforms,
                            loaded.labels, task=self.task, depth=depth, steps=training.local_steps,
                            batch_size=min(training.batch_size, len(loaded.waveforms)), loss_mode=self.loss_mode,
                            generator=generator, on_step=step_done)
        report = throttle.finish()
        state = partial_state(loaded.model, depth, {self.task})
        return RoundResult({name: value.numpy() for name, value in state.items()}, stats["samples"],
                           stats["loss"], report, peak_mb())
