"""A synthetic wav2vec2-base-sized state dict (NumPy, float32) for the transport and aggregation benchmarks.

Names and shapes follow transformers' `Wav2Vec2Model` (base: 7 CNN layers, 768 wide, 12 transformer
layers of ~7.1 M parameters) under the early-exit model's prefixes, plus one keyword head per exit:
94.4 M parameters in 227 tensors. Random values: timing does not depend on them, and nothing is downloaded.
"""

from __future__ import annotations

import math
import re

import numpy as np

HIDDEN, FFN, CNN, LAYERS, CLASSES = 768, 3072, 512, 12, 12
EXITS = (3, 6, 9, 12)
_LAYER = re.compile(r"^backbone\.encoder\.layers\.(\d+)\.")
_HEAD = re.compile(r"^heads\.\w+_(\d+)\.")


def base_geometry() -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of the wav2vec2-base early-exit model, in state-dict order."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("backbone.masked_spec_embed", (HIDDEN,))]
    for index, kernel in enumerate((10, 3, 3, 3, 3, 2, 2)):
        prefix = f"backbone.feature_extractor.conv_layers.{index}"
        shapes.append((f"{prefix}.conv.weight", (CNN, 1 if index == 0 else CNN, kernel)))
        if index == 0:  # base uses one group norm after the first convolution
            shapes += [(f"{prefix}.layer_norm.weight", (CNN,)), (f"{prefix}.layer_norm.bias", (CNN,))]
    shapes += [("backbone.feature_projection.layer_norm.weight", (CNN,)),
               ("backbone.feature_projection.layer_norm.bias", (CNN,)),
               ("backbone.feature_projection.projection.weight", (HIDDEN, CNN)),
               ("backbone.feature_projection.projection.bias", (HIDDEN,)),
               ("backbone.encoder.pos_conv_embed.conv.bias", (HIDDEN,)),
               ("backbone.encoder.pos_conv_embed.conv.weight_g", (1, 1, 128)),
               ("backbone.encoder.pos_conv_embed.conv.weight_v", (HIDDEN, HIDDEN // 16, 128)),
               ("backbone.encoder.layer_norm.weight", (HIDDEN,)),
               ("backbone.encoder.layer_norm.bias", (HIDDEN,))]
    for layer in range(LAYERS):
        prefix = f"backbone.encoder.layers.{layer}"
        for projection in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes += [(f"{prefix}.attention.{projection}.weight", (HIDDEN, HIDDEN)),
                       (f"{prefix}.attention.{projection}.bias", (HIDDEN,))]
        shapes += [(f"{prefix}.layer_norm.weight", (HIDDEN,)), (f"{prefix}.layer_norm.bias", (HIDDEN,)),
                   (f"{prefix}.feed_forward.intermediate_dense.weight", (FFN, HIDDEN)),
                   (f"{prefix}.feed_forward.intermediate_dense.bias", (FFN,)),
                   (f"{prefix}.feed_forward.output_dense.weight", (HIDDEN, FFN)),
                   (f"{prefix}.feed_forward.output_dense.bias", (HIDDEN,)),
                   (f"{prefix}.final_layer_norm.weight", (HIDDEN,)), (f"{prefix}.final_layer_norm.bias", (HIDDEN,))]
    for exit_layer in EXITS:  # statistics pooling (mean ‖ std) -> layer norm -> linear
        shapes += [(f"heads.keyword_{exit_layer}.norm.weight", (2 * HIDDEN,)),
                   (f"heads.keyword_{exit_layer}.norm.bias", (2 * HIDDEN,)),
                   (f"heads.keyword_{exit_layer}.linear.weight", (CLASSES, 2 * HIDDEN)),
                   (f"heads.keyword_{exit_layer}.linear.bias", (CLASSES,))]
    return shapes


BASE_PARAMS = sum(math.prod(shape) for _, shape in base_geometry())


def geometry(params: int) -> list[tuple[str, tuple[int, ...]]]:
    """The base geometry with every tensor's first axis scaled so the total is about `params`."""
    if params <= 0:
        raise ValueError(f"--params must be > 0 (got {params})")
    scale = params / BASE_PARAMS
    return [(key, (max(1, round(shape[0] * scale)), *shape[1:])) for key, shape in base_geometry()]


def make_state(params: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 tensors (standard normal) with the scaled base geometry."""
    rng = np.random.default_rng(seed)
    return {key: rng.standard_normal(shape, dtype=np.float32) for key, shape in geometry(params)}


def depth_of(key: str) -> int:
    """Layer (1-based) a key belongs to: 0 for CNN, projection and embeddings; the exit layer for heads."""
    if match := _LAYER.match(key):
        return int(match.group(1)) + 1
    if match := _HEAD.match(key):
        return int(match.group(1))
    return 0


def nbytes(state: dict[str, np.ndarray]) -> int:
    return sum(array.nbytes for array in state.values())
