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

import time
from dataclasses import dataclass

import torch

from testbed.emulation.memory import peak_mb, reset_peak, resident_mb
from testbed.model.early_exit import exit_loss
from testbed.model.state import load_partial_state, partial_state, state_bytes
from testbed.model.train import make_optimizer

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
