"""Where the tiny backbone loses the built-in corpus's speaker information, and what fine-tuning gets back.

Speaker id on held-out utterances of the corpus's 96 speakers (the `speaker` task's split), four measures:
  - `logmel`: a model-free reference, a linear probe on each clip's log-mel frames pooled (mean || std), raw and
    with each band's mean over time removed (what a per-channel normalisation over time leaves);
  - `targets`: the same probe on what pretraining asks the backbone to predict, pooled: the MFCC + delta frames
    the cluster targets are made of, and the standardised log-mel frames of the spectrum loss (model/targets.py);
  - `stages`: the same frozen linear probe (model/train.py `linear_probe`) on statistics-pooled features at each
    stage of the backbone: the CNN front end's output, the feature projection, L0 (after the positional
    convolution and the layer norm) and every transformer layer, pretrained and random init;
  - `finetune`: centralized early-exit fine-tuning to `--depth`, accuracy per exit every `--every` steps, the
    CNN front end frozen (as in runs) or, with `--trainable-cnn`, trained too; `--bare-head` takes the layer
    norm out of the exit heads (pooled statistics straight into the linear layer, as the heads were before).

    python tools/speaker_information.py logmel targets stages    # ~6 min here
    python tools/speaker_information.py finetune --steps 2400      # ~15 min here, one thread
    python tools/speaker_information.py finetune --steps 1200 --trainable-cnn --threads 2
    python tools/speaker_information.py finetune --steps 600 --every 200 [--bare-head]
    python tools/speaker_information.py finetune --steps 2400 --every 200 --takes 9   # 3x the speaker's clips
"""

from __future__ import annotations

import argparse
import time

import torch

from testbed.config.schema import BUILTIN_TAKES
from testbed.data.layouts import load_speech_commands
from testbed.data.synth import builtin_corpus
from testbed.data.tasks import TaskData, prepare_task
from testbed.model.backbone import build_backbone
from testbed.model.early_exit import EarlyExitModel, normalise, statistics_pool
from testbed.model.targets import SpectrumTargets, mfcc_frames
from testbed.model.train import evaluate, linear_probe, make_optimizer, train_steps

TASK = "speaker"
MEL_BANDS = 64  # log-mel reference: 25 ms windows, 10 ms hop, 16 kHz


def logmel(data: TaskData) -> None:
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=MEL_BANDS)

    def pooled(waveforms, remove_band_means: bool) -> torch.Tensor:
        frames = torch.log(mel(torch.from_numpy(waveforms)) + 1e-6)  # (clips, bands, frames)
        if remove_band_means:
            frames = frames - frames.mean(-1, keepdim=True)
        return torch.cat([frames.mean(-1), frames.std(-1)], 1)

    for remove in (False, True):
        accuracy = linear_probe(pooled(data.train_waveforms, remove), torch.from_numpy(data.train_labels),
                                pooled(data.test_waveforms, remove), torch.from_numpy(data.test_labels),
                                len(data.classes))
        print(f"logmel   {'band means removed' if remove else 'raw':18s} probe {accuracy:6.1%}", flush=True)


def targets(data: TaskData) -> None:
    train, test = torch.from_numpy(data.train_waveforms), torch.from_numpy(data.test_waveforms)
    spectrum = SpectrumTargets.fit(train)
    def pooled(frames, waveforms: torch.Tensor) -> torch.Tensor:
        return statistics_pool(torch.cat([frames(chunk) for chunk in waveforms.split(256)]))

    for name, frames in (("MFCC + deltas (clusters)", mfcc_frames), ("log-mel (spectrum loss)", spectrum)):
        accuracy = linear_probe(pooled(frames, train), torch.from_numpy(data.train_labels), pooled(frames, test),
                                torch.from_numpy(data.test_labels), len(data.classes))
        print(f"targets  {name:26s} probe {accuracy:6.1%}", flush=True)


@torch.no_grad()
def stage_features(model: EarlyExitModel, waveforms: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Statistics-pooled features at every stage of the backbone: {stage: (clips, 2 * width)}."""
    model.eval()
    backbone, chunks = model.backbone, {}
    for start in range(0, len(waveforms), batch_size):
        batch = waveforms[start:start + batch_size]
        cnn = backbone.feature_extractor(normalise(batch)).transpose(1, 2)
        projected = backbone.feature_projection(cnn)[0]
        stages = {"cnn": cnn, "projection": projected, "L0": model.embed(batch)}
        stages.update((f"L{layer}", hidden) for layer, hidden in model.hidden_states(batch, model.num_layers))
        for name, hidden in stages.items():
            chunks.setdefault(name, []).append(statistics_pool(hidden))
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def stages(data: TaskData, seed: int) -> None:
    for pretrained in (True, False):
        model = EarlyExitModel(build_backbone("tiny", "wav2vec2", pretrained, seed, progress=False),
                               {TASK: len(data.classes)})
        train = stage_features(model, torch.from_numpy(data.train_waveforms))
        test = stage_features(model, torch.from_numpy(data.test_waveforms))
        accuracy = {name: linear_probe(train[name], torch.from_numpy(data.train_labels), test[name],
                                       torch.from_numpy(data.test_labels), len(data.classes)) for name in train}
        cells = "  ".join(f"{name} {value:6.1%}" for name, value in accuracy.items())
        print(f"stages   {'pretrained' if pretrained else 'random init':18s} probe {cells}", flush=True)


def finetune(data: TaskData, args) -> None:
    torch.manual_seed(args.seed)
    model = EarlyExitModel(build_backbone("tiny", "wav2vec2", True, args.seed, progress=False),
                           {TASK: len(data.classes)}, freeze_feature_encoder=not args.trainable_cnn)
    if args.bare_head:
        for head in model.heads.values():
            head.norm = torch.nn.Identity()
    optimizer = make_optimizer(model, args.learning_rate, args.head_learning_rate)
    batches = torch.Generator().manual_seed(args.seed)
    train = torch.from_numpy(data.train_waveforms), torch.from_numpy(data.train_labels)
    test = torch.from_numpy(data.test_waveforms), torch.from_numpy(data.test_labels)
    cnn = ("trainable CNN" if args.trainable_cnn else "frozen CNN") + (", bare head" if args.bare_head else "")
    started = time.perf_counter()
    for done in range(args.every, args.steps + 1, args.every):
        train_steps(model, optimizer, *train, task=TASK, depth=args.depth, steps=args.every,
                    batch_size=args.batch_size, generator=batches)
        held_out = evaluate(model, *test, task=TASK, depth=args.depth)
        seen = evaluate(model, train[0][:512], train[1][:512], task=TASK, depth=args.depth)
        print(f"finetune {cnn:29s} step {done:5d}  held-out "
              + "  ".join(f"L{layer} {value:6.1%}" for layer, value in held_out.items())
              + "  | train " + "  ".join(f"L{layer} {value:6.1%}" for layer, value in seen.items())
              + f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measures", nargs="+", choices=("logmel", "targets", "stages", "finetune"))
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--every", type=int, default=600, help="steps between two evaluations")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="backbone")
    parser.add_argument("--head-learning-rate", type=float, default=1e-2, help="exit heads")
    parser.add_argument("--trainable-cnn", action="store_true", help="train the CNN front end too")
    parser.add_argument("--bare-head", action="store_true", help="exit heads without their layer norm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--takes", type=int, default=BUILTIN_TAKES,
                        help="takes of each word by each speaker in the built-in corpus (scenario data.takes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = prepare_task(load_speech_commands(builtin_corpus(seed=0, progress=False, takes=args.takes)), TASK,
                        test_speaker_fraction=0.2, seed=args.seed)
    print(f"{TASK}: {len(data.classes)} classes, {len(data.train_labels)} train / {len(data.test_labels)} "
          f"held-out clips, chance {1 / len(data.classes):.1%}", flush=True)
    for measure in args.measures:
        if measure == "logmel":
            logmel(data)
        elif measure == "targets":
            targets(data)
        elif measure == "stages":
            stages(data, args.seed)
        else:
            finetune(data, args)


if __name__ == "__main__":
    main()
