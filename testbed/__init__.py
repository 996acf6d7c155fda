"""testbed: edge emulation of federated early-exit fine-tuning of SSL speech models."""

__version__ = "0.1.0"
