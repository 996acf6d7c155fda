"""The pretrained tiny backbone shipped inside the package: a first run starts at once instead of pretraining.

What ships is the cache entry that `testbed pretrain` writes with the default settings (config.json,
model.safetensors, pretrain.json), unchanged, under testbed/model/shipped/<entry name>/, with SHIPPED_RECORD
beside its files: the digest of its parameters (model/state.state_digest), the corpus it was pretrained on and
its frozen keyword probe per exit. An entry's name holds the hashes of its settings and of its corpus, so the
shipped backbone stands in only for exactly the settings and corpus it was made with; any other pretrains as
before. It ships in fp32 (27.6 MB; fp16 would be half): it is then the very file pretraining writes, so a run
on it and a run on a backbone pretrained here start from the same parameters wherever pretraining reproduces,
and `testbed pretrain` can tell whether its own result matches it bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

SHIPPED_DIR = Path(__file__).with_name("shipped")
SHIPPED_RECORD = "shipped.json"  # in the shipped entry, hence also in a cache entry installed from it


def shipped_entry(name: str) -> Path | None:
    """The shipped backbone for the cache entry `name`, or None when none ships for it."""
    entry = SHIPPED_DIR / name
    return entry if (entry / SHIPPED_RECORD).is_file() else None


def shipped_record(entry: Path) -> dict:
    """What the shipped entry (or a cache entry installed from it) says of itself."""
    return json.loads((entry / SHIPPED_RECORD).read_text())


def installed_from_package(target: Path) -> bool:
    """Whether the cache entry `target` is the shipped backbone rather than one pretrained on this host."""
    return (target / SHIPPED_RECORD).is_file()


def install_shipped(target: Path) -> bool:
    """Copy the shipped backbone for the cache entry `target` into the cache, atomically (a half copy is never
    seen: runs started together may race, the first rename wins); False when none ships for it."""
    entry = shipped_entry(target.name)
    if entry is None:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.shipped-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        shutil.copytree(entry, partial)
        try:
            partial.rename(target)
        except OSError:
            if not target.exists():  # not another run that installed it first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return True


def ship(entry: Path, record: dict) -> Path:
    """Copy the cache entry `entry` (pretrained here) into the package with `record` beside it, replacing any
    backbone shipped before: one ships at a time. Returns the shipped entry."""
    for old in SHIPPED_DIR.glob("tiny-*"):
        shutil.rmtree(old)
    shipped = SHIPPED_DIR / entry.name
    shutil.copytree(entry, shipped, ignore=shutil.ignore_patterns(SHIPPED_RECORD))
    (shipped / SHIPPED_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return shipped


def keyword_probe(backbone, settings) -> dict[int, float]:
    """A backbone's frozen linear probe per exit on the keyword task of the corpus `settings` pretrain on (held-out
    speakers; what tools/exit_accuracy.py prints as `probe`): {exit layer: accuracy 0..1}. About a minute here."""
    import torch

    from testbed.data.layouts import load_speech_commands
    from testbed.data.synth import builtin_corpus
    from testbed.data.tasks import prepare_task
    from testbed.model.early_exit import EarlyExitModel
    from testbed.model.train import probe_per_exit

    utterances = load_speech_commands(builtin_corpus(seed=settings.corpus_seed, progress=False,
                                                     **settings.corpus_params()))
    data = prepare_task(utterances, "keyword", test_speaker_fraction=0.2, seed=0)
    torch.manual_seed(0)
    model = EarlyExitModel(backbone, {"keyword": len(data.classes)})
    return probe_per_exit(model, (torch.from_numpy(data.train_waveforms), torch.from_numpy(data.train_labels)),
                          (torch.from_numpy(data.test_waveforms), torch.from_numpy(data.test_labels)),
                          len(data.classes))
