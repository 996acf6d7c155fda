"""Backbone architectures: the families, the geometry of the built-in presets, random initialisation.

Torch and transformers are imported inside the functions: the config checks read the presets' geometry
without paying for those imports.
"""

from __future__ import annotations

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


def model_class(family: str):
    """The transformers model class of `family` (its config decides the geometry)."""
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
    return model_class(family)(config)
