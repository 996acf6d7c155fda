"""What each depth costs this client: measured once after joining, before the first round.

A transformer's layers are alike, so a step's cost is affine in its depth (the front end and the
heads are a fixed part, each layer adds the same): after an unrecorded warm-up step, real training
steps run at the shallowest and the deepest exit on a scratch copy of the trainable state, and the
exits between are put on the line through them. Measured: host CPU seconds per step and the peak
resident memory of a round (the step allocates gradients and AdamW's moments, as a round does);
counted: the bytes of layers <= d each way. The exit policies turn these into predicted emulated
seconds with the profile's speed and link. (tools/depth_cost.py prints the line's fit.)

To keep joining cheap, the steps use a probe batch of at most PROBE_BATCH clips and scale to the
training batch: time proportionally (measured on the tiny backbone: a step at batch 16 took 0.52 s,
4 x the 0.133 s at batch 4, within 2 %), memory above the resident set before the probe likewise.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from testbed.emulation.memory import peak_mb, reset_peak, resident_mb
from testbed.model.early_exit import exit_loss
from testbed.model.state import load_partial_state, partial_state, state_bytes
from testbed.model.train import make_optimizer

if TYPE_CHECKING:
    from testbed.config.schema import Scenario
    from testbed.model.early_exit import Backbone

PROBE_BATCH = 4  # clips per measured step


@dataclass(frozen=True)
class DepthCost:
    depth: int  # transformer layers run
    step_cpu_s: float  # host CPU seconds of one local step (forward, backward, optimizer), all threads
    peak_mb: float  # peak resident set of a training round at this depth, MiB
    state_bytes: int  # bytes of layers <= depth and this task's heads <= depth: each way, per round


def measure_costs(model, waveforms: torch.Tensor, labels: torch.Tensor, *, task: str, batch_size: int,
                  loss_mode: str) -> dict[int, DepthCost]:
    """A measured step at the shallowest and the deepest exit, the exits between on their line; the
    model's weights are restored afterwards."""
    batch = torch.arange(min(batch_size, len(waveforms), PROBE_BATCH))
    scale = min(batch_size, len(waveforms)) / len(batch)
    baseline = resident_mb()
    shallow, deep = model.exits[0], model.exits[-1]
    # The first step to a depth pays one-off costs (first touch of the gradients' and moments' pages,
    # kernels prepared for new shapes): 1.7x a later step to depth 8 of the tiny backbone, measured.
    # One step of one clip to the deepest exit pays them for every depth; it is not recorded.
    _probe_step(model, waveforms[:1], labels[:1], task=task, depth=deep, loss_mode=loss_mode)
    measured = {}
    for depth in (shallow, deep):
        cpu_s, peak = _probe_step(model, waveforms[batch], labels[batch], task=task, depth=depth, loss_mode=loss_mode)
        measured[depth] = (cpu_s * scale, baseline + (peak - baseline) * scale)
    costs = {}
    for depth in model.exits:
        share = (depth - shallow) / (deep - shallow) if deep > shallow else 0.0
        cpu_s, peak_mb = (low + share * (high - low) for low, high in zip(measured[shallow], measured[deep]))
        costs[depth] = DepthCost(depth, cpu_s, peak_mb, state_bytes(partial_state(model, depth, {task})))
    return costs


def _probe_step(model, waveforms: torch.Tensor, labels: torch.Tensor, *, task: str, depth: int,
                loss_mode: str) -> tuple[float, float]:
    """(host CPU seconds, peak resident MiB) of one training step to `depth`; the weights are restored."""
    saved = {name: value.clone() for name, value in partial_state(model, depth, {task}).items()}
    optimizer = make_optimizer(model, 1e-4)
    reset_peak()
    started = time.process_time()
    model.train()
    optimizer.zero_grad(set_to_none=True)  # where a round's step frees them (model/train.py)
    loss = exit_loss(model(waveforms, depth, task), labels, loss_mode)
    loss.backward()
    optimizer.step()
    cpu_s = time.process_time() - started
    peak = peak_mb()
    del optimizer
    model.zero_grad(set_to_none=True)
    load_partial_state(model, saved)
    return cpu_s, peak


COST_TABLE_FILE = "costs.json"  # in a run directory: the table its clients bill their steps by (compute: modeled)
TABLE_STEPS = 4  # real steps per depth measured for the cost table; the first is left out


def cost_table(scenario: Scenario, tasks: list[str], classes: dict[str, int], loss_mode: str) -> dict[str, dict[str, float]]:
    """Host CPU seconds of one local step, per task and exit depth, on one thread: what `emulation.compute:
    modeled` bills, and the event clock's reference for the compute time a client claims.

    Measured once per backbone, exits, batch, loss and task on this host (`_step_table`), cached, and
    copied into each event-clock run directory: every client of the run is judged (and, when modeled,
    billed) by the same figures. JSON-shaped: task -> str(depth) -> seconds.
    """
    from testbed.paths import cache_dir

    spec, training = scenario.backbone, scenario.training
    key_fields = {"backbone": [spec.name, spec.family, spec.pretrained, list(spec.exits or []),
                               spec.freeze_feature_encoder], "batch": training.batch_size, "loss": loss_mode,
                  "clip_s": scenario.data.clip_seconds, "torch": torch.__version__, "seed": scenario.seed,
                  "version": 3}  # of the way the table is measured: a new one is measured afresh
    table = {}
    backbone: list[Backbone] = []  # built once, on the first missing table, for every task's probe
    for task in tasks:
        fields = {**key_fields, "task": task, "classes": classes[task]}
        key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
        path = cache_dir() / "costs" / f"{key}.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".partial-{os.getpid()}")
            if not backbone:
                backbone.append(_probe_backbone(scenario))
            steps = _step_table(scenario, task, loss_mode, copy.deepcopy(backbone[0]))  # trained: a copy
            partial.write_text(json.dumps({"key": fields, "step_cpu_s": steps}))
            partial.rename(path)  # atomic: runs started together never read half a table
        table[task] = json.loads(path.read_text())["step_cpu_s"]
    return table


def _probe_backbone(scenario: Scenario) -> Backbone:
    from testbed.model.backbone import build_backbone

    spec = scenario.backbone
    return build_backbone(spec.name, spec.family, spec.pretrained, scenario.seed, progress=False)


def _step_table(scenario: Scenario, task: str, loss_mode: str, backbone: Backbone) -> dict[str, float]:
    """CPU seconds per training step by depth, on one thread: TABLE_STEPS real steps (as a round runs them: one
    batch, a fresh AdamW) at the shallowest and the deepest exit, the first of each left out (it pays the
    optimizer's allocations); the median step of each, the exits between on their line."""
    from testbed.data.source import task_data
    from testbed.model.early_exit import EarlyExitModel
    from testbed.model.train import train_steps

    spec, training = scenario.backbone, scenario.training
    data = task_data(scenario.data, task, scenario.seed)
    clips = np.arange(min(len(data.train_labels), training.batch_size))
    waveforms, labels = torch.from_numpy(data.train_clips(clips)), torch.from_numpy(data.train_labels[clips])
    model = EarlyExitModel(backbone, {task: len(data.classes)}, spec.exits, spec.freeze_feature_encoder)
    shallow, deep = model.exits[0], model.exits[-1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a device's throughput is per thread: bill one thread's CPU seconds
    try:
        measured = {}
        for depth in (shallow, deep):
            marks: list[float] = []  # CPU clock after each step

            def mark(step: int, loss: float, marks: list[float] = marks) -> None:
                marks.append(time.process_time())

            train_steps(model, make_optimizer(model, training.learning_rate), waveforms, labels, task=task,
                        depth=depth, steps=TABLE_STEPS, batch_size=len(clips), loss_mode=loss_mode,
                        generator=torch.Generator().manual_seed(0), on_step=mark)
            measured[depth] = statistics.median(b - a for a, b in itertools.pairwise(marks))  # steps 2..n
    finally:
        torch.set_num_threads(threads)
    line = {depth: measured[shallow] + ((depth - shallow) / (deep - shallow) if deep > shallow else 0.0)
            * (measured[deep] - measured[shallow]) for depth in model.exits}
    return {str(depth): round(seconds, 6) for depth, seconds in line.items()}
