"""The backbone a scenario names: a built-in preset (`debug` random, `tiny` SSL-pretrained and cached) or a
real checkpoint via transformers. The architectures themselves: architecture.py."""

from __future__ import annotations

import os
from pathlib import Path

from testbed.errors import UserError
from testbed.model.architecture import COMMON_OVERRIDES, FAMILIES, build_random, model_class
from testbed.model.settings import PretrainSettings, backbone_entry


def load_pretrained(name: str):
    """A real checkpoint from a local directory or the Hugging Face cache (never downloads when offline)."""
    from transformers import AutoConfig

    local = Path(name).expanduser()
    source = str(local) if local.is_dir() else name
    offline = not local.is_dir() and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except Exception as error:  # transformers raises OSError/ValueError/HTTP errors alike
        raise UserError(
            f"backbone '{name}' could not be loaded ({type(error).__name__}): give a local directory "
            f"or a Hugging Face id already in the cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')})"
        ) from None
    family = {"wav2vec2": "wav2vec2", "hubert": "hubert", "wavlm": "wavlm"}.get(config.model_type)
    if family is None:
        raise UserError(f"backbone '{name}' is a '{config.model_type}' model (allowed families: "
                        f"{', '.join(FAMILIES)})")
    for key, value in COMMON_OVERRIDES.items():
        setattr(config, key, value)
    return model_class(family).from_pretrained(source, config=config, local_files_only=offline)


def buildable_anywhere(name: str, family: str = "wav2vec2", pretrained: bool = True) -> bool:
    """Whether every process can build the backbone a scenario names from what is already here, with nothing to
    make or check first: a preset with random weights (built from the seed), or the pretrained tiny backbone
    already in the cache. Otherwise (the tiny backbone's first use, a checkpoint) the launcher builds it once
    before any process starts, so that pretraining happens once and a missing checkpoint is one clear error."""
    if name == "debug" or (name == "tiny" and not pretrained):
        return True
    return name == "tiny" and backbone_entry(PretrainSettings(family=family)).is_dir()  # written atomically


def build_backbone(name: str = "tiny", family: str = "wav2vec2", pretrained: bool = True, seed: int = 0,
                   progress: bool = True):
    """The backbone a scenario names: `debug` (random), `tiny` (SSL-pretrained, cached), or a checkpoint.

    `pretrained=False` gives the same geometry with random weights (the ablation baseline).
    """
    if name == "debug":
        return build_random("debug", family, seed)
    if name == "tiny":
        if not pretrained:
            return build_random("tiny", family, seed)
        from testbed.model.pretrain import pretrained_tiny  # torch: imported only when a backbone is built

        return pretrained_tiny(PretrainSettings(family=family), progress=progress)[0]
    backbone = load_pretrained(name)
    if not pretrained:
        import torch

        torch.manual_seed(seed)
        backbone = type(backbone)(backbone.config)
    return backbone
