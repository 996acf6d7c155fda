"""The speech model: SSL backbones, early-exit heads, per-layer state, pretraining and local training."""
