"""Local training and evaluation of an early-exit model: what a client (or the centralized baseline) runs."""

from __future__ import annotations

import numpy as np
import torch

from testbed.model.early_exit import EarlyExitModel, exit_loss, statistics_pool


def make_optimizer(model: torch.nn.Module, learning_rate: float, head_learning_rate: float | None = None
                   ) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, exit heads at their own rate (default: the same).

    Layers beyond a client's depth get no gradient, so AdamW leaves them exactly as they were.
    """
    heads = [p for name, p in model.named_parameters() if name.startswith("heads.") and p.requires_grad]
    body = [p for name, p in model.named_parameters() if not name.startswith("heads.") and p.requires_grad]
    groups = [{"params": body, "lr": learning_rate},
              {"params": heads, "lr": head_learning_rate or learning_rate}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.01)


def sample_batches(count: int, batch_size: int, generator: torch.Generator):
    """Endless index batches: shuffled epochs, each item once per epoch."""
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1 if count >= batch_size else 1, batch_size):
            yield order[start:start + batch_size]


def round_samples(steps: int, batch_size: int, clips: int) -> int:
    """Clips seen in `steps` local steps on a shard of `clips` clips: each step takes min(batch_size, clips).

    What `train_steps` counts and a client reports (a test holds the two together), so the aggregator
    takes it as the most that a client's claim of samples may be.
    """
    return steps * min(batch_size, clips)


def train_steps(model: EarlyExitModel, optimizer: torch.optim.Optimizer, waveforms: torch.Tensor,
                labels: torch.Tensor, *, task: str, depth: int, steps: int, batch_size: int,
                loss_mode: str = "all_exits", generator: torch.Generator, on_step=None) -> dict:
    """Run `steps` optimizer steps to `depth`; returns mean loss and samples seen.

    `on_step(step, loss)` is called after every step (progress events, duty-cycle throttling).
    """
    model.train()
    batches = sample_batches(len(waveforms), batch_size, generator)
    total, seen = 0.0, 0
    for step in range(steps):
        index = next(batches)
        # The last step's gradients go before this forward, not after it: they would otherwise sit
        # beside its saved activations at the step's peak (27 MB at depth 8 of the tiny backbone).
        optimizer.zero_grad(set_to_none=True)
        loss = exit_loss(model(waveforms[index], depth, task), labels[index], loss_mode)
        loss.backward()
        optimizer.step()
        total, seen = total + loss.item(), seen + len(index)
        if on_step is not None:
            on_step(step, loss.item())
    return {"loss": total / max(1, steps), "samples": seen}


@torch.no_grad()
def evaluate(model: EarlyExitModel, waveforms: torch.Tensor, labels: torch.Tensor, *, task: str,
             depth: int | None = None, batch_size: int = 64) -> dict[int, float]:
    """Accuracy (0..1) of every exit <= depth on the given clips: {exit layer: accuracy}."""
    model.eval()
    depth = depth or model.num_layers
    exits = model.exits_up_to(depth)
    correct = np.zeros(len(exits))
    for start in range(0, len(waveforms), batch_size):
        logits = model(waveforms[start:start + batch_size], depth, task)
        target = labels[start:start + batch_size]
        correct += [(out.argmax(-1) == target).sum().item() for out in logits]
    return {layer: float(c / len(waveforms)) for layer, c in zip(exits, correct)}


@torch.no_grad()
def pooled_features(model: EarlyExitModel, waveforms: torch.Tensor, batch_size: int = 64) -> dict[int, torch.Tensor]:
    """Frozen statistics-pooled features (mean || std over frames) at every exit: {exit: (clips, 2*hidden)}."""
    model.eval()
    chunks: dict[int, list[torch.Tensor]] = {layer: [] for layer in model.exits}
    for start in range(0, len(waveforms), batch_size):
        for layer, hidden in model.hidden_states(waveforms[start:start + batch_size], model.exits[-1]):
            if layer in chunks:
                chunks[layer].append(statistics_pool(hidden))
    return {layer: torch.cat(parts) for layer, parts in chunks.items()}


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 classes: int, epochs: int = 300, seed: int = 0) -> float:
    """Accuracy of a linear classifier trained (full batch, Adam) on frozen standardised features."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    probe = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(probe(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (probe(test_x).argmax(-1) == test_y).float().mean().item()


def probe_per_exit(model: EarlyExitModel, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                   classes: int, epochs: int = 300, seed: int = 0) -> dict[int, float]:
    """Frozen linear probe at every exit: {exit layer: held-out accuracy 0..1}. `train`, `test`: (waveforms, labels)."""
    train_x, test_x = pooled_features(model, train[0]), pooled_features(model, test[0])
    return {layer: linear_probe(train_x[layer], train[1], test_x[layer], test[1], classes, epochs, seed)
            for layer in model.exits}
