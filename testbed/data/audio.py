"""Audio I/O: read fixed-length mono clips at 16 kHz and cache whole corpora as .npy arrays."""

import hashlib
import os
from pathlib import Path

import numpy as np
import soundfile

from testbed.errors import DataError
from testbed.paths import cache_dir

SAMPLE_RATE = 16000  # Hz, what the wav2vec2/HuBERT CNN front end expects


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling along the last axis (torchaudio's windowed sinc)."""
    if orig_rate == new_rate:
        return samples.astype(np.float32, copy=False)
    import torch  # lazily: only resampling needs torch
    import torchaudio.functional

    tensor = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    return torchaudio.functional.resample(tensor, orig_rate, new_rate).numpy()


def resample_single_threaded() -> None:
    """Make this process's resampling single-threaded: on a loaded machine torch's spinning
    intra-op threads made a batched resample ~40x slower (170 ms vs 4.6 ms, 2 shared cores)."""
    import torch  # lazily: only resampling needs torch

    torch.set_num_threads(1)


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Centre-crop or symmetrically zero-pad a 1-D signal to exactly `length` samples."""
    if len(samples) >= length:
        start = (len(samples) - length) // 2
        return samples[start:start + length]
    before = (length - len(samples)) // 2
    return np.pad(samples, (before, length - len(samples) - before))


def read_clip(path: Path | str, sample_rate: int = SAMPLE_RATE,
              clip_samples: int = SAMPLE_RATE) -> np.ndarray:
    """One utterance as float32 (clip_samples,): mono mix-down, resampled, centre crop / pad."""
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read audio ({error})") from None
    if len(samples) == 0:
        raise DataError(f"{path}: audio file holds no samples")
    mono = samples.mean(axis=1)  # (frames,)
    return fit_length(resample(mono, rate, sample_rate), clip_samples).astype(np.float32)


def load_waveforms(utterances, clip_seconds: float = 1.0,
                   sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """All utterances' clips as float32 (N, samples), cached under cache_dir()/waveforms keyed
    by the file list, sizes and mtimes. A cached array comes back memory-mapped read-only, so
    processes that need a few rows (a client's shard) read only those pages."""
    paths = [Path(u.path) for u in utterances]
    clip_samples = round(clip_seconds * sample_rate)
    cache_file = cache_dir() / "waveforms" / f"{_cache_key(paths, sample_rate, clip_samples)}.npy"
    if cache_file.exists():
        try:
            cached = np.load(cache_file, mmap_mode="r")
            if cached.shape == (len(paths), clip_samples):
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    waveforms = np.zeros((len(paths), clip_samples), np.float32)
    for row, path in enumerate(paths):
        waveforms[row] = read_clip(path, sample_rate, clip_samples)
    _save_atomically(cache_file, waveforms)
    return np.load(cache_file, mmap_mode="r")


def _cache_key(paths: list[Path], sample_rate: int, clip_samples: int) -> str:
    digest = hashlib.sha256(f"v1 {sample_rate} {clip_samples}\n".encode())
    for path in paths:
        try:
            stat = path.stat()
        except OSError as error:
            raise DataError(f"{path}: cannot read audio ({error.strerror})") from None
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _save_atomically(path: Path, array: np.ndarray) -> None:
    # write then rename, so a concurrent reader never sees a half-written file
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(partial, array)
    os.replace(partial, path)
