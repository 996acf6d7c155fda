"""Settings of `testbed pretrain` (kept free of torch so the CLI builds its parser instantly)."""

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from testbed.paths import cache_dir


@dataclass(frozen=True, kw_only=True)
class PretrainSettings:
    family: str = "wav2vec2"  # geometry/class of the tiny backbone
    steps: int = 560  # optimizer steps (7-10 minutes on 2 cores at batch 32: 420-585 s measured)
    batch_size: int = 32  # clips of 1 s
    learning_rate: float = 1e-3  # peak, after linear warm-up, cosine decay to 0 (2e-3 diverged here)
    warmup: float = 0.1  # fraction of steps
    clusters: int = 64  # k-means targets
    mask_prob: float = 0.8  # span starts per clip = mask_prob * frames / mask_length (~55 % masked)
    mask_length: int = 5  # frames (100 ms)
    # Weight of the loss on unmasked frames. HuBERT uses masked frames only (0); with minutes, not
    # days, of compute, also predicting the unmasked frames' clusters trains the CNN front end much
    # faster (measured here at 150 steps: keyword probe 37 % -> 49-51 % per exit).
    unmasked_weight: float = 1.0
    # Weight of an L1 loss reconstructing every frame's standardised log-mel spectrum from the last layer
    # (targets.py, SpectrumTargets): the cluster targets alone teach the backbone to discard who speaks
    # (speaker probe on its CNN output 41.5 %). 0 turns it off.
    spectrum_weight: float = 1.0
    corpus_seed: int = 0  # which built-in corpus
    words: tuple[str, ...] | None = None  # its vocabulary; None = the corpus default
    seed: int = 0

    def corpus_params(self) -> dict:
        """Keyword arguments of `builtin_corpus` beyond its seed."""
        return {} if self.words is None else {"words": self.words}

    def key(self) -> str:
        # `words` enters the key only when set and `spectrum_weight` only when not 0, so settings without them
        # keep the key they had before these fields existed
        unset = {"words": None, "spectrum_weight": 0}
        fields = {name: value for name, value in asdict(self).items() if name not in unset or value != unset[name]}
        text = json.dumps(fields, sort_keys=True)
        return f"tiny-{self.family}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def backbone_entry(settings: PretrainSettings) -> Path:
    """The cache entry of the tiny backbone these settings pretrain (whether or not it exists yet): keyed by the
    settings and by the corpus, so a different built-in corpus means a different backbone."""
    from testbed.data.synth import corpus_cache_path

    corpus = corpus_cache_path(settings.corpus_seed, **settings.corpus_params()).name
    return cache_dir() / "backbones" / f"{settings.key()}-corpus-{corpus}"
