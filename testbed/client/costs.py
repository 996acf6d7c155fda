"""What each depth costs this client: measured once after joining, before the first round.

For every exit depth d (shallowest first) one real training step runs on a scratch copy of the
trainable state: host CPU seconds per step, the peak resident memory of a round at d (the step
allocates gradients and AdamW's moments, as a round does) and the bytes of layers <= d each way.
The exit policies turn these into predicted emulated seconds with the profile's speed and link.

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
    """One measured step per exit; the model's weights are restored afterwards."""
    batch = torch.arange(min(batch_size, len(waveforms), PROBE_BATCH))
    scale = min(batch_size, len(waveforms)) / len(batch)
    costs = {}
    baseline = resident_mb()
    for depth in (model.exits[0], *model.exits):  # the first exit twice: the first step pays one-off warm-up
        saved = {name: value.clone() for name, value in partial_state(model, depth, {task}).items()}
        optimizer = make_optimizer(model, 1e-4)
        reset_peak()
        started = time.process_time()
        model.train()
        loss = exit_loss(model(waveforms[batch], depth, task), labels[batch], loss_mode)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        cpu_s = time.process_time() - started
        peak = peak_mb()
        del optimizer
        model.zero_grad(set_to_none=True)
        load_partial_state(model, saved)
        costs[depth] = DepthCost(depth, cpu_s * scale, baseline + (peak - baseline) * scale, state_bytes(saved))
    return costs
