"""Pretraining targets at the CNN's 20 ms frame rate: MFCC frames clustered by k-means (HuBERT-style), and each
frame's standardised log-mel spectrum (what a reconstruction loss keeps: see `SpectrumTargets`)."""

from __future__ import annotations

import torch

SAMPLE_RATE = 16000
HOP = 320  # samples: the CNN front end's total stride, so one target per backbone frame
WINDOW = 400  # samples: the CNN's receptive field (25 ms)
MEL_BANDS = 64  # log-mel bands of the spectrum targets: fine enough to resolve low harmonics (voice pitch)


def mfcc_frames(waveforms: torch.Tensor, n_mfcc: int = 13) -> torch.Tensor:
    """(batch, samples) -> (batch, frames, 3 * n_mfcc): MFCC with deltas and delta-deltas.

    Clips are first normalised as the backbone sees them (zero mean, unit variance), so targets
    carry no absolute level the model could not infer from its own input.
    """
    import torchaudio

    from testbed.model.early_exit import normalise

    waveforms = normalise(waveforms)
    transform = torchaudio.transforms.MFCC(
        sample_rate=SAMPLE_RATE, n_mfcc=n_mfcc,
        melkwargs=dict(n_fft=WINDOW, win_length=WINDOW, hop_length=HOP, n_mels=40, center=False))
    mfcc = transform(waveforms)  # (batch, n_mfcc, frames)
    delta = torchaudio.functional.compute_deltas(mfcc)
    delta2 = torchaudio.functional.compute_deltas(delta)
    return torch.cat([mfcc, delta, delta2], dim=1).transpose(1, 2)


def kmeans(points: torch.Tensor, k: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; points (n, dim) -> centroids (k, dim)."""
    generator = torch.Generator().manual_seed(seed)
    centroids = points[torch.randint(len(points), (1,), generator=generator)]
    for _ in range(1, k):  # k-means++: next centre drawn proportionally to squared distance
        distance = torch.cdist(points, centroids).min(dim=1).values ** 2
        pick = torch.multinomial(distance / distance.sum(), 1, generator=generator)
        centroids = torch.cat([centroids, points[pick]])
    for _ in range(iterations):
        assignment = torch.cdist(points, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k)
        filled = counts > 0  # an empty cluster keeps its centre
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


class FrameClusterer:
    """Maps waveforms to per-frame cluster ids, after standardising MFCC features."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, centroids: torch.Tensor):
        self.mean, self.std, self.centroids = mean, std, centroids  # (features,), (features,), (clusters, features)

    @classmethod
    def fit(cls, waveforms: torch.Tensor, clusters: int = 64, max_frames: int = 100_000, seed: int = 0) -> FrameClusterer:
        """k-means over the standardised frames of (clips, samples) audio, at most `max_frames` of them."""
        frames = torch.cat([mfcc_frames(chunk) for chunk in waveforms.split(256)]).flatten(0, 1)
        generator = torch.Generator().manual_seed(seed)
        frames = frames[torch.randperm(len(frames), generator=generator)[:max_frames]]
        mean, std = frames.mean(0), frames.std(0) + 1e-5
        return cls(mean, std, kmeans((frames - mean) / std, clusters, seed=seed))

    def state(self) -> dict[str, torch.Tensor]:
        """What `FrameClusterer(**state)` rebuilds it from."""
        return {"mean": self.mean, "std": self.std, "centroids": self.centroids}

    def __call__(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, frames) int64 cluster ids."""
        features = (mfcc_frames(waveforms) - self.mean) / self.std
        return torch.cdist(features, self.centroids[None].expand(len(features), -1, -1)).argmin(-1)


def log_mel_frames(waveforms: torch.Tensor) -> torch.Tensor:
    """(batch, samples) -> (batch, frames, MEL_BANDS): natural-log mel spectrum, frames aligned with `mfcc_frames`."""
    import torchaudio

    from testbed.model.early_exit import normalise

    transform = torchaudio.transforms.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=WINDOW, win_length=WINDOW,
                                                     hop_length=HOP, n_mels=MEL_BANDS, center=False)
    return torch.log(transform(normalise(waveforms)) + 1e-6).transpose(1, 2)


class SpectrumTargets:
    """Each frame's log-mel spectrum, standardised per band with statistics of the whole pretraining corpus.

    Why: 13 MFCCs (and clusters of them) keep the phonetic envelope and drop the fine spectral structure voices
    differ in. On the built-in corpus a linear probe on pooled frames identifies the speaker at 41 % from the
    cluster targets' MFCC features and at 82 % from these log-mel frames (docs/benchmarks.md, "Speaker
    information"). Per-band statistics of the corpus, not of each clip, keep each speaker's spectral envelope.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std  # (MEL_BANDS,), (MEL_BANDS,)

    @classmethod
    def fit(cls, waveforms: torch.Tensor) -> SpectrumTargets:
        frames = torch.cat([log_mel_frames(chunk) for chunk in waveforms.split(256)]).flatten(0, 1)
        return cls(frames.mean(0), frames.std(0) + 1e-5)

    def state(self) -> dict[str, torch.Tensor]:
        """What `SpectrumTargets(**state)` rebuilds it from."""
        return {"mean": self.mean, "std": self.std}

    def __call__(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, frames, MEL_BANDS) standardised log-mel frames."""
        return (log_mel_frames(waveforms) - self.mean) / self.std
