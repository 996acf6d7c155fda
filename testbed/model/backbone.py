"""SSL speech backbones: the built-in `tiny` and `debug` presets and real checkpoints via transformers."""

from __future__ import annotations

import os
from pathlib import Path

from testbed.errors import UserError

FAMILIES = ("wav2vec2", "hubert", "wavlm")
PRESETS = ("tiny", "debug")

# Geometry of the presets. The CNN front end keeps wav2vec 2.0's kernels and strides (320 samples
# = 20 ms per frame at 16 kHz) so MFCC targets and real checkpoints line up frame for frame.
PRESET_GEOMETRY = {
    # ~7 M parameters: 8 post-LN layers x 256 wide (wav2vec2/HuBERT Base shape, scaled down);
    # a 128-channel CNN keeps the frozen front end cheap next to the layers a client chooses to run.
    "tiny": dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4,
                 intermediate_size=1024, conv_dim=(128,) * 7,
                 num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16),
    # Random-init smoke-test flavour: 2 layers x 64 wide, builds in well under a second.
    "debug": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128, conv_dim=(32,) * 7,
                  num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
}

# Settings shared by every backbone we build or load: our own forward applies no layer drop
# (it would make "depth d" ambiguous) and masking only when pretraining asks for it.
COMMON_OVERRIDES = dict(layerdrop=0.0, mask_time_prob=0.05, mask_feature_prob=0.0)


def _config_class(family: str):
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    return {"wav2vec2": Wav2Vec2Config, "hubert": HubertConfig, "wavlm": WavLMConfig}[family]


def _model_class(family: str):
    from transformers import HubertModel, Wav2Vec2Model, WavLMModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no "Loading weights" bars in logs and dashboards
    transformers_logging.set_verbosity_error()

    return {"wav2vec2": Wav2Vec2Model, "hubert": HubertModel, "wavlm": WavLMModel}[family]


def preset_config(preset: str, family: str = "wav2vec2"):
    """The transformers config of a built-in preset (random weights until pretrained)."""
    if preset not in PRESET_GEOMETRY:
        raise UserError(f"unknown backbone preset '{preset}' (allowed: {', '.join(PRESETS)})")
    if family not in FAMILIES:
        raise UserError(f"unknown backbone family '{family}' (allowed: {', '.join(FAMILIES)})")
    return _config_class(family)(**PRESET_GEOMETRY[preset], **COMMON_OVERRIDES,
                                 hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                                 feat_proj_dropout=0.0)


def build_random(preset: str, family: str = "wav2vec2", seed: int = 0):
    """A randomly initialised preset backbone, deterministic from `seed`."""
    import torch

    config = preset_config(preset, family)
    torch.manual_seed(seed)
    return _model_class(family)(config)


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
    return _model_class(family).from_pretrained(source, config=config, local_files_only=offline)


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
        from testbed.model.pretrain import pretrained_tiny
        from testbed.model.settings import PretrainSettings

        return pretrained_tiny(PretrainSettings(family=family), progress=progress)[0]
    backbone = load_pretrained(name)
    if not pretrained:
        import torch

        torch.manual_seed(seed)
        backbone = type(backbone)(backbone.config)
    return backbone
