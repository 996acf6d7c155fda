"""`testbed pretrain`: HuBERT-style masked prediction of clustered MFCC frames for the tiny preset.

The objective (Hsu et al., 2021, first iteration): k-means (64 clusters) over standardised MFCC +
deltas at the CNN's 20 ms frame rate gives one discrete target per frame; spans of CNN features are
replaced by the learned mask embedding and the last transformer layer predicts the targets of the
masked frames (cross-entropy), plus, weighted by `unmasked_weight`, those of the unmasked frames. Only the training speakers of the built-in corpus are used, so
held-out speakers stay unseen. The result is cached: only the first run pays.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from testbed.model.architecture import build_random, model_class
from testbed.model.early_exit import EarlyExitModel
from testbed.model.settings import PretrainSettings
from testbed.model.targets import FrameClusterer
from testbed.paths import cache_dir


def span_mask(batch: int, frames: int, prob: float, length: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, frames) bool mask: random spans of `length` frames, ~prob*frames/length per row."""
    spans = max(1, round(prob * frames / length))
    starts = torch.rand(batch, frames - length + 1, generator=generator).argsort(-1)[:, :spans]
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    for offset in range(length):
        mask.scatter_(1, starts + offset, True)
    return mask


def learning_rate(step: int, settings: PretrainSettings) -> float:
    warm = max(1, int(settings.warmup * settings.steps))
    if step < warm:
        return settings.learning_rate * (step + 1) / warm
    progress = (step - warm) / max(1, settings.steps - warm)
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def prediction_loss(predictor: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                    unmasked_weight: float) -> tuple[torch.Tensor, float]:
    """Cross-entropy on the masked frames (+ weighted on the unmasked ones) and masked-frame accuracy."""
    logits = predictor(hidden[mask])  # (masked frames, clusters)
    loss = F.cross_entropy(logits, targets[mask])
    if unmasked_weight > 0:
        loss = loss + unmasked_weight * F.cross_entropy(predictor(hidden[~mask]), targets[~mask])
    return loss, (logits.argmax(-1) == targets[mask]).float().mean().item()


def pretrain(waveforms: torch.Tensor, settings: PretrainSettings, progress: bool = True):
    """Train a tiny backbone from scratch on unlabeled (clips, samples) audio; returns (backbone, metrics)."""
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    clusterer = FrameClusterer(waveforms, settings.clusters, seed=settings.seed)
    model = EarlyExitModel(build_random("tiny", settings.family, settings.seed), tasks={},
                           freeze_feature_encoder=False).train()
    predictor = torch.nn.Linear(model.backbone.config.hidden_size, settings.clusters)
    parameters = list(model.parameters()) + list(predictor.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.01)
    generator = torch.Generator().manual_seed(settings.seed)
    losses, accuracies = [], []
    with _progress_bar(progress, settings.steps) as advance:
        for step in range(settings.steps):
            batch = waveforms[torch.randint(len(waveforms), (settings.batch_size,), generator=generator)]
            targets = clusterer(batch)  # (batch, frames)
            clips, frames = targets.shape
            mask = span_mask(clips, frames, settings.mask_prob, settings.mask_length, generator)
            *_, (_, hidden) = model.hidden_states(batch, model.num_layers, mask=mask)  # last layer
            loss, accuracy = prediction_loss(predictor, hidden, targets, mask, settings.unmasked_weight)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, settings)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 5.0)
            optimizer.step()
            losses.append(loss.item())
            accuracies.append(accuracy)
            advance(loss=sum(losses[-20:]) / len(losses[-20:]))
    window = max(1, settings.steps // 10)
    metrics = dict(seconds=round(time.perf_counter() - started, 1), clips=len(waveforms),
                   first_loss=round(sum(losses[:window]) / window, 4),
                   final_loss=round(sum(losses[-window:]) / window, 4),
                   final_masked_accuracy=round(sum(accuracies[-window:]) / window, 4))
    return model.backbone, metrics


class _progress_bar:
    """Context manager yielding `advance(**fields)`; silent when progress is off."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda **_: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("pretraining tiny backbone"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
                                 TimeElapsedColumn(), TimeRemainingColumn())
        self.progress.start()
        task = self.progress.add_task("pretrain", total=self.total, loss=float("nan"))
        return lambda **fields: self.progress.update(task, advance=1, **fields)

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()


def corpus_waveforms(corpus_seed: int, **corpus_params) -> torch.Tensor:
    """Unlabeled 1 s clips of the built-in corpus's training speakers (test speakers stay unseen)."""
    from testbed.data.audio import load_waveforms
    from testbed.data.layouts import load_speech_commands
    from testbed.data.synth import builtin_corpus

    utterances = [u for u in load_speech_commands(builtin_corpus(seed=corpus_seed, **corpus_params))
                  if u.split == "train"]
    return torch.from_numpy(np.array(load_waveforms(utterances, clip_seconds=1.0)))  # in memory: read every step


def pretrained_tiny(settings: PretrainSettings | None = None, progress: bool = True, force: bool = False):
    """The SSL-pretrained tiny backbone from the cache, pretraining it first if absent.

    Cached per settings and per corpus: a different built-in corpus means a different backbone.
    """
    from testbed.data.synth import corpus_cache_path

    settings = settings or PretrainSettings()
    corpus_params = settings.corpus_params()
    corpus = corpus_cache_path(settings.corpus_seed, **corpus_params).name
    target = cache_dir() / "backbones" / f"{settings.key()}-corpus-{corpus}"
    if force and target.exists():
        shutil.rmtree(target)
    if not target.exists():
        backbone, metrics = pretrain(corpus_waveforms(settings.corpus_seed, **corpus_params), settings, progress)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        backbone.save_pretrained(partial)
        (partial / "pretrain.json").write_text(json.dumps(dict(settings=asdict(settings), **metrics), indent=2))
        partial.rename(target)  # atomic: an interrupted pretraining never leaves a half checkpoint
    return model_class(settings.family).from_pretrained(target), target


def pretrain_record(path: Path) -> dict:
    return json.loads((path / "pretrain.json").read_text())
