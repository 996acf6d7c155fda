"""`testbed pretrain`: HuBERT-style masked prediction of clustered MFCC frames for the tiny preset.

The objective (Hsu et al., 2021, first iteration): k-means (64 clusters) over standardised MFCC +
deltas at the CNN's 20 ms frame rate gives one discrete target per frame; spans of CNN features are
replaced by the learned mask embedding and the last transformer layer predicts the targets of the
masked frames (cross-entropy), plus, weighted by `unmasked_weight`, those of the unmasked frames. Beside it,
weighted by `spectrum_weight`, the last layer reconstructs every frame's standardised log-mel spectrum (L1, as
in TERA, Liu et al., 2021), which keeps the voice information the clusters discard. Only the training speakers
of the built-in corpus are used, so held-out speakers stay unseen. The result is cached: only the first run pays. Until it is written, progress
is saved beside the cache entry every SAVE_EVERY_STEPS steps and on Ctrl-C, and an interrupted run continues
from it along exactly the trajectory it would have followed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from testbed.model.architecture import build_random, model_class
from testbed.model.early_exit import EarlyExitModel
from testbed.model.settings import PretrainSettings, backbone_entry
from testbed.model.targets import MEL_BANDS, FrameClusterer, SpectrumTargets


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


class Predictor(torch.nn.Module):
    """What the last layer's frames predict: their cluster (logits) and, when `spectrum`, their log-mel spectrum.

    Without the spectrum the predictor is exactly the single linear layer it was before that loss existed (same
    parameters, same draws from the seeded generator), so `spectrum_weight: 0` pretrains what it did then."""

    def __init__(self, hidden_size: int, clusters: int, spectrum: bool):
        super().__init__()
        self.clusters = torch.nn.Linear(hidden_size, clusters)
        self.spectrum = torch.nn.Linear(hidden_size, MEL_BANDS) if spectrum else None


def prediction_loss(predictor: Predictor, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                    unmasked_weight: float) -> tuple[torch.Tensor, float]:
    """Cross-entropy on the masked frames (+ weighted on the unmasked ones) and masked-frame accuracy."""
    logits = predictor.clusters(hidden[mask])  # (masked frames, clusters)
    loss = F.cross_entropy(logits, targets[mask])
    if unmasked_weight > 0:
        loss = loss + unmasked_weight * F.cross_entropy(predictor.clusters(hidden[~mask]), targets[~mask])
    return loss, (logits.argmax(-1) == targets[mask]).float().mean().item()


def spectrum_loss(predictor: Predictor, hidden: torch.Tensor, spectra: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of every frame's reconstructed standardised log-mel spectrum."""
    assert predictor.spectrum is not None, "a predictor built without the spectrum"
    return F.l1_loss(predictor.spectrum(hidden), spectra)


# Optimizer steps between two saves of pretraining progress. A step takes ~1 s on 2 cores, so an interruption
# that cannot save (a crash, a second Ctrl-C) loses at most ~40 s; a save writes 83 MB (model and AdamW's
# two moments) in 0.1-0.3 s (measured), so the 13 saves of the default 560 steps add under 1 % to the run.
SAVE_EVERY_STEPS = 40
PROGRESS_FORMAT = 2  # bumped when the progress file's content changes; other formats are ignored


@dataclass(frozen=True)
class ProgressFile:
    """Where pretraining saves its progress, for which result, and how often."""

    path: Path
    key: str  # what determines the result (the cache entry's name: settings and corpus); another key is ignored
    every: int = SAVE_EVERY_STEPS  # optimizer steps


class PretrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during pretraining; the message tells where it stopped and what was saved."""


@dataclass
class _Run:
    """Everything a pretraining step reads or changes, so that a saved run continues exactly where it was."""

    model: EarlyExitModel
    predictor: Predictor
    optimizer: torch.optim.AdamW
    clusterer: FrameClusterer
    spectrum: SpectrumTargets | None  # None when `spectrum_weight` is 0
    draws: torch.Generator  # each step's clips and mask spans; dropout draws from torch's global generator
    step: int = 0  # optimizer steps completed
    losses: list[float] = field(default_factory=list)  # one per completed step
    accuracies: list[float] = field(default_factory=list)  # masked-frame accuracy, one per completed step
    earlier_seconds: float = 0.0  # spent in the sessions before this one
    session_started: float = field(default_factory=time.perf_counter)  # time.perf_counter() seconds
    saved_step: int = 0  # the step the progress file holds (0: none)
    in_step: bool = False  # True from a step's first change to its last: the state is then half updated

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters()) + list(self.predictor.parameters())

    def seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.session_started


def pretrain(waveforms: torch.Tensor, settings: PretrainSettings, progress: bool = True,
             saves: ProgressFile | None = None, after_step: Callable[[int, float], None] | None = None):
    """Train a tiny backbone from scratch on unlabeled (clips, samples) audio; returns (backbone, metrics).

    With `saves`, progress is saved every `saves.every` steps and on Ctrl-C (then PretrainingInterrupted is
    raised), and a run saved there for the same key continues where it stopped, along the same trajectory.
    `after_step(steps completed, that step's loss)` is called after every step.
    """
    started = time.perf_counter()
    run = _starting_run(waveforms, settings, saves)
    run.session_started = started  # this session's seconds include fitting the clusterer
    with _progress_bar(progress, settings.steps, run.step) as advance, _StopAtStepEnd() as stop:
        try:
            _run_steps(run, waveforms, settings, saves, advance, stop, after_step)
        except KeyboardInterrupt:
            if saves is None:
                raise
            raise _interrupted(run, settings, saves) from None
    return run.model.backbone, _metrics(run, settings, len(waveforms))


def _run_steps(run: _Run, waveforms: torch.Tensor, settings: PretrainSettings, saves: ProgressFile | None,
               advance: Callable[..., None], stop: _StopAtStepEnd,
               after_step: Callable[[int, float], None] | None) -> None:
    for step in range(run.step, settings.steps):
        run.in_step = True
        loss, accuracy = _train_step(run, waveforms, settings, step)
        run.losses.append(loss)
        run.accuracies.append(accuracy)
        run.step = step + 1
        run.in_step = False
        advance(loss=sum(run.losses[-20:]) / len(run.losses[-20:]))
        if saves is not None and run.step % saves.every == 0 and run.step < settings.steps:
            _save_progress(run, settings, saves)
        if after_step is not None:
            after_step(run.step, loss)
        if stop.requested:
            raise KeyboardInterrupt


def _train_step(run: _Run, waveforms: torch.Tensor, settings: PretrainSettings, step: int) -> tuple[float, float]:
    """One optimizer step on a fresh batch; returns (loss, masked-frame accuracy)."""
    batch = waveforms[torch.randint(len(waveforms), (settings.batch_size,), generator=run.draws)]
    targets = run.clusterer(batch)  # (batch, frames)
    clips, frames = targets.shape
    mask = span_mask(clips, frames, settings.mask_prob, settings.mask_length, run.draws)
    *_, (_, hidden) = run.model.hidden_states(batch, run.model.num_layers, mask=mask)  # last layer
    loss, accuracy = prediction_loss(run.predictor, hidden, targets, mask, settings.unmasked_weight)
    if run.spectrum is not None:
        loss = loss + settings.spectrum_weight * spectrum_loss(run.predictor, hidden, run.spectrum(batch))
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(step, settings)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.parameters(), 5.0)
    run.optimizer.step()
    return loss.item(), accuracy


def _metrics(run: _Run, settings: PretrainSettings, clips: int) -> dict:
    window = max(1, settings.steps // 10)
    return dict(seconds=round(run.seconds(), 1), clips=clips,
                first_loss=round(sum(run.losses[:window]) / window, 4),
                final_loss=round(sum(run.losses[-window:]) / window, 4),
                final_masked_accuracy=round(sum(run.accuracies[-window:]) / window, 4))


def _built_model(settings: PretrainSettings) -> tuple[EarlyExitModel, Predictor, torch.optim.AdamW]:
    """The randomly initialised model, predictor and their optimizer (seeded by `settings.seed`)."""
    model = EarlyExitModel(build_random("tiny", settings.family, settings.seed), tasks={},
                           freeze_feature_encoder=False).train()
    predictor = Predictor(model.backbone.config.hidden_size, settings.clusters, settings.spectrum_weight > 0)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(predictor.parameters()),
                                  lr=settings.learning_rate, weight_decay=0.01)
    return model, predictor, optimizer


def _new_run(waveforms: torch.Tensor, settings: PretrainSettings) -> _Run:
    torch.manual_seed(settings.seed)
    clusterer = FrameClusterer.fit(waveforms, settings.clusters, seed=settings.seed)
    spectrum = SpectrumTargets.fit(waveforms) if settings.spectrum_weight > 0 else None
    model, predictor, optimizer = _built_model(settings)
    return _Run(model, predictor, optimizer, clusterer, spectrum, torch.Generator().manual_seed(settings.seed))


def _continued_run(settings: PretrainSettings, saved: dict) -> _Run:
    """The run as it was when `saved` was written (loading errors propagate: the caller starts afresh)."""
    model, predictor, optimizer = _built_model(settings)
    model.load_state_dict(saved["model"])
    predictor.load_state_dict(saved["predictor"])
    optimizer.load_state_dict(saved["optimizer"])
    draws = torch.Generator()
    draws.set_state(saved["rng"]["draws"])
    run = _Run(model, predictor, optimizer, FrameClusterer(**saved["clusterer"]),
               SpectrumTargets(**saved["spectrum"]) if saved["spectrum"] else None, draws, step=saved["step"],
               losses=list(saved["losses"]), accuracies=list(saved["accuracies"]),
               earlier_seconds=saved["seconds"], saved_step=saved["step"])
    torch.set_rng_state(saved["rng"]["global"])  # last: building the model above draws from it
    return run


def _starting_run(waveforms: torch.Tensor, settings: PretrainSettings, saves: ProgressFile | None) -> _Run:
    """The saved run of `saves` when there is a usable one (saying so), else a new one."""
    saved = _load_progress(saves, settings) if saves is not None else None
    if saves is None or saved is None:
        return _new_run(waveforms, settings)
    try:
        run = _continued_run(settings, saved)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # load_state_dict raises RuntimeError
        _report_ignored(saves.path, f"its state does not fit this model ({_first_line(error)})")
        return _new_run(waveforms, settings)
    print(f"continuing pretraining from step {run.step} of {settings.steps} (saved {saved['saved_at']})")
    return run


def _progress_state(run: _Run, settings: PretrainSettings, saves: ProgressFile) -> dict:
    """What a progress file holds: the whole run (model, predictor, optimizer, targets, RNGs) and its metrics.

    NumPy's and Python's RNGs are not saved: nothing in a step draws from them."""
    return {"format": PROGRESS_FORMAT, "key": saves.key, "settings": asdict(settings), "step": run.step,
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": run.seconds(),
            "model": run.model.state_dict(), "predictor": run.predictor.state_dict(),
            "optimizer": run.optimizer.state_dict(), "clusterer": run.clusterer.state(),
            "spectrum": run.spectrum.state() if run.spectrum is not None else None,
            "rng": {"draws": run.draws.get_state(), "global": torch.get_rng_state()},
            "losses": run.losses, "accuracies": run.accuracies}


def _save_progress(run: _Run, settings: PretrainSettings, saves: ProgressFile) -> None:
    _write_atomically(saves.path, lambda file: torch.save(_progress_state(run, settings, saves), file))
    run.saved_step = run.step


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file in the same directory, then rename it over `path`: a reader (or a
    later run after a crash) sees the old file or the new one, never a part of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:  # Ctrl-C while writing included: no temporary file is left behind
        Path(temporary).unlink(missing_ok=True)
        raise


def _load_progress(saves: ProgressFile, settings: PretrainSettings) -> dict | None:
    """The saved run of `saves.path` when it exists and is for this key; None otherwise (reported when unusable)."""
    if not saves.path.exists():
        return None
    try:
        saved = torch.load(saves.path, weights_only=True)  # tensors and plain values only: nothing is executed
    except Exception as error:  # a damaged file raises anything from EOFError to zipfile and unpickling errors
        _report_ignored(saves.path, f"unreadable ({type(error).__name__}: {_first_line(error)})")
        return None
    problem = _progress_problem(saved, saves.key, settings)
    if problem is not None:
        _report_ignored(saves.path, problem)
        return None
    return saved


def _progress_problem(saved: object, key: str, settings: PretrainSettings) -> str | None:
    """Why `saved` cannot continue this run; None when it can."""
    if not isinstance(saved, dict) or saved.get("format") != PROGRESS_FORMAT:
        found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        return f"format {found}, expected {PROGRESS_FORMAT}"
    if saved.get("key") != key:
        return f"saved for {saved.get('key')}, not {key}"
    step = saved.get("step")
    if not isinstance(step, int) or not 1 <= step <= settings.steps:
        return f"step {step!r}, expected 1..{settings.steps}"
    if len(saved.get("losses", ())) != step or len(saved.get("accuracies", ())) != step:
        return f"its loss and accuracy histories do not have {step} entries"
    return None


def _report_ignored(path: Path, problem: str) -> None:
    print(f"ignoring pretraining progress {path}: {problem}; starting from step 0", file=sys.stderr)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _interrupted(run: _Run, settings: PretrainSettings, saves: ProgressFile) -> PretrainingInterrupted:
    """Save the run if it stopped between two steps and is newer than its last save; say where it stopped."""
    again = "run the same command again to continue"
    if not run.in_step:
        if run.saved_step < run.step:
            _save_progress(run, settings, saves)
        return PretrainingInterrupted(f"pretraining interrupted at step {run.step} of {settings.steps}; "
                                      f"progress saved, {again}")
    stopped = f"pretraining interrupted during step {run.step + 1} of {settings.steps}"
    if run.saved_step == 0:
        return PretrainingInterrupted(f"{stopped}; no progress saved yet (it is saved every {saves.every} steps)")
    return PretrainingInterrupted(f"{stopped}; progress of step {run.saved_step} saved, {again} from there")


class _StopAtStepEnd:
    """Context manager: a Ctrl-C during a step ends pretraining when that step ends, where model, optimizer
    and RNGs agree (a step cut midway would leave parameters half updated); a second Ctrl-C interrupts at once.

    Only where Ctrl-C raises KeyboardInterrupt now (the main thread, the default handler)."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: Callable | int | None = None

    def __enter__(self) -> _StopAtStepEnd:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self._request)
        return self

    def _request(self, signum: int, frame: object) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class _progress_bar:
    """Context manager yielding `advance(**fields)`; silent when progress is off."""

    def __init__(self, enabled: bool, total: int, done: int = 0):
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self):
        if not self.enabled:
            return lambda **_: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("pretraining tiny backbone"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
                                 TimeElapsedColumn(), TimeRemainingColumn())
        self.progress.start()
        task = self.progress.add_task("pretrain", total=self.total, completed=self.done, loss=float("nan"))
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


def pretrained_tiny(settings: PretrainSettings | None = None, progress: bool = True, force: bool = False,
                    after_step: Callable[[int, float], None] | None = None, shipped: bool = True):
    """The SSL-pretrained tiny backbone from the cache; if absent, the one shipped with the package for these
    settings and corpus (model/shipped.py) when `shipped`, else pretrained here first.

    Pretraining saves its progress beside the cache entry (`progress_file`) and continues from it after an
    interruption; `force` pretrains again even when cached (still continuing an interrupted pretraining: same
    result).
    """
    from testbed.model.shipped import install_shipped

    settings = settings or PretrainSettings()
    corpus_params = settings.corpus_params()
    target = backbone_entry(settings)
    saves = ProgressFile(progress_file(target), key=target.name, every=SAVE_EVERY_STEPS)
    if force and target.exists():
        shutil.rmtree(target)
    if not target.exists() and not force and shipped and install_shipped(target) and progress:
        print(f"tiny backbone: the one shipped with testbed, copied to {target}", file=sys.stderr)
    if not target.exists():
        backbone, metrics = pretrain(corpus_waveforms(settings.corpus_seed, **corpus_params), settings, progress,
                                     saves, after_step)
        _write_backbone(target, backbone, settings, metrics)
    saves.path.unlink(missing_ok=True)  # all in the backbone now (also a leftover of a crash right after writing it)
    return model_class(settings.family).from_pretrained(target), target


def progress_file(target: Path) -> Path:
    """Where the pretraining of the cache entry `target` saves its progress until the backbone is written."""
    return target.with_name(target.name + ".progress.pt")


def _write_backbone(target: Path, backbone, settings: PretrainSettings, metrics: dict) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    backbone.save_pretrained(partial)
    (partial / "pretrain.json").write_text(json.dumps(dict(settings=asdict(settings), **metrics), indent=2))
    partial.rename(target)  # atomic: an interrupted pretraining never leaves a half checkpoint


def pretrain_record(path: Path) -> dict:
    return json.loads((path / "pretrain.json").read_text())
