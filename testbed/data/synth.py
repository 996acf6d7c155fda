"""The built-in spoken-command corpus: eSpeak speakers, noise/level augmentation, SC v2 layout."""

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from testbed.config.schema import BUILTIN_TAKES
from testbed.data.audio import SAMPLE_RATE, resample, resample_single_threaded
from testbed.data.augment import augment, colour, trim_silence
from testbed.data.layouts import assign_speaker_splits
from testbed.errors import UserError
from testbed.paths import cache_dir

# Measured on 2 shared cores: the default corpus (12 words x 96 speakers x 3 takes = 3456 clips,
# 109 MB) takes about 6 s. eSpeak's output depends on the process's synthesis history (wavegen.c
# keeps a pitch-flutter index and gain state in function statics that nothing resets), so for
# "same seed -> same bytes" every eSpeak call of a corpus runs, in a fixed order, in one freshly
# spawned process; noise mixing and wav writing run in a pool of `workers` other processes. As
# with any "spawn" pool, a script calling this keeps its top level under `if __name__ ==
# "__main__":`.

# Anagram groups: the words of a group share their sounds and differ only in their order, so a
# bag of frame features (what a shallow exit pools) cannot tell them apart and depth matters.
# Measured here after centralized early-exit fine-tuning (`tools/exit_accuracy.py`): shallowest exit
# 16.1 points below the best (68.9 % vs 85.0 %); with the Speech Commands words yes/no/up/.../bed/bird
# the gap was 3.9 points (in the corpus's first version, with babble).
DEFAULT_WORDS = ("stop", "spot", "pots", "tops", "left", "felt", "dog", "god", "no", "on", "net",
                 "ten")
# eSpeak voices = accents; the non-English voices read the English words with their own rules.
VOICES = ("en", "en-us", "en-us-nyc", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
          "en-gb-x-gbcwmd", "de", "nl", "sv", "es", "it")
VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 6))
BASE_PITCHES = (25, 35, 45, 55, 65, 75)  # eSpeak base pitch, 0..100
BASE_RATES = (130, 150, 170, 190, 210)  # words per minute
PITCH_RANGE = (30, 80)  # per speaker, eSpeak intonation range 0..100
# A speaker's vocal tract: eSpeak's output is resampled to this rate (Hz, a multiple of 50 so the
# resampling kernel stays as small as 22050 -> 16000 Hz) and played at 16 kHz, which scales its
# formants and pitch by 16000 / rate (0.89..1.10, a vocal tract ~10 % shorter or longer).
RENDER_RATES = (14500, 18000)
# A speaker's channel (voice quality, microphone): fixed gains, uniform in +-CHANNEL_DB dB, at
# these band centres (Hz), joined linearly in log frequency.
CHANNEL_BANDS_HZ = (200.0, 500.0, 1000.0, 2000.0, 4000.0)
CHANNEL_DB = 6.0
# Per take, around the speaker's own values. Version 2 drew the intonation range afresh per take
# (30..80) and jittered pitch by +-5: the takes of one speaker then differed about as much as two
# speakers did: a model-free speaker-id baseline (log-mel frames, mean+std pooled, logistic
# regression; speaker task split, seed 0) reached 69.8 % on held-out takes, 85.3 % with version 3.
PITCH_JITTER = 3  # +- eSpeak pitch units
RANGE_JITTER = 5  # +- eSpeak intonation range units
RATE_JITTER = (0.9, 1.12)  # factor on the speaker's rate
LEVEL_DBFS = (-20.0, 0.0)  # clip peak level
CLIP_SAMPLES = SAMPLE_RATE  # 1 s clips, as in Speech Commands
FORMAT_VERSION = 3  # bump when synthesis changes, so cached corpora are rebuilt (2: no babble;
# 3: per-speaker vocal tract, channel and intonation range, less per-take jitter)
CORPUS_DEFAULTS = {"words": DEFAULT_WORDS, "n_speakers": 96, "takes": BUILTIN_TAKES, "snr_db": (0.0, 15.0)}
# independent random streams: np.random.default_rng([seed, stream, ...])
_TAKE_STREAM, _MIX_STREAM = 2, 3  # (stream 1 drew the babble of format version 1)


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: an eSpeak voice (accent) x variant x base pitch x base rate, with its
    own intonation range, vocal tract (render rate) and channel colouring."""

    id: str
    voice: str
    variant: str
    pitch: int
    rate: int
    pitch_range: int  # eSpeak intonation range 0..100
    render_rate: int  # Hz; formants and pitch scale by SAMPLE_RATE / render_rate
    channel_db: tuple[float, ...]  # gain (dB) at each of CHANNEL_BANDS_HZ

    @property
    def espeak_voice(self) -> str:
        return f"{self.voice}+{self.variant}"


def draw_speakers(n_speakers: int, seed: int) -> list[Speaker]:
    """`n_speakers` distinct speakers; voice x variant pairs are used once each (in a seeded
    order) before any pair repeats with another pitch/rate."""
    pairs = [(v, w) for v in VOICES for w in VARIANTS]
    limit = len(pairs) * len(BASE_PITCHES) * len(BASE_RATES)
    if not 1 <= n_speakers <= limit:
        raise UserError(f"speakers must be between 1 and {limit}, got {n_speakers}")
    rng = np.random.default_rng(seed)
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    taken: set[tuple[str, str, int, int]] = set()
    speakers: list[Speaker] = []
    while len(speakers) < n_speakers:
        voice, variant = pairs[len(speakers) % len(pairs)]
        pitch, rate = int(rng.choice(BASE_PITCHES)), int(rng.choice(BASE_RATES))
        if (voice, variant, pitch, rate) in taken:
            continue
        taken.add((voice, variant, pitch, rate))
        name = hashlib.sha1(f"{voice}+{variant}:{pitch}:{rate}".encode()).hexdigest()[:8]
        speakers.append(Speaker(name, voice, variant, pitch, rate, *_draw_timbre(rng)))
    return speakers


def _draw_timbre(rng: np.random.Generator) -> tuple[int, int, tuple[float, ...]]:
    """A speaker's intonation range, render rate (Hz) and channel gains (dB, rounded to 0.1)."""
    pitch_range = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    render_rate = 50 * int(rng.integers(RENDER_RATES[0] // 50, RENDER_RATES[1] // 50 + 1))
    gains = rng.uniform(-CHANNEL_DB, CHANNEL_DB, len(CHANNEL_BANDS_HZ))
    return pitch_range, render_rate, tuple(round(float(g), 1) for g in gains)


def synthesize_corpus(out_dir: Path | str, *, seed: int = 0, words=DEFAULT_WORDS,
                      n_speakers: int = 96, takes: int = 3, snr_db=(0.0, 15.0), workers: int = 2,
                      progress: bool = True) -> Path:
    """Write the corpus into `out_dir` (absent or empty) in the Speech Commands v2 layout, plus
    speakers.json and corpus.json. The same arguments give byte-identical files."""
    words, snr_db = _check_params(words, takes, snr_db, workers)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: output directory is not empty")
    speakers = draw_speakers(n_speakers, seed)
    for word in words:
        (out_dir / word).mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited eSpeak state
    with ctx.Pool(1, initializer=resample_single_threaded) as speaking:
        espeak_rate = speaking.apply(_espeak_rate)
        with ctx.Pool(workers) as rendering:
            jobs = [(seed, index, speaker, words, takes) for index, speaker in enumerate(speakers)]
            _run_pipeline(speaking, rendering, jobs, (out_dir, snr_db), progress)
    splits = assign_speaker_splits(s.id for s in speakers)
    _write_metadata(out_dir, speakers, splits, words, takes, {
        "seed": seed, "words": list(words), "n_speakers": n_speakers, "takes": takes,
        "snr_db": list(snr_db), "espeak_sample_rate": espeak_rate})
    return out_dir


def builtin_corpus(seed: int = 0, *, workers: int = 2, progress: bool = True,
                   **params) -> Path:
    """The cached built-in corpus for these parameters (see CORPUS_DEFAULTS), under
    cache_dir()/corpus/<hash>; generated once into a temporary folder that is renamed into place,
    so an interrupted run never leaves a half corpus."""
    unknown = set(params) - set(CORPUS_DEFAULTS)
    if unknown:
        raise UserError(f"unknown corpus parameter(s) {', '.join(sorted(unknown))} "
                        f"(valid: seed, {', '.join(CORPUS_DEFAULTS)})")
    final = corpus_cache_path(seed, **params)
    if (final / "corpus.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(final.parent)
    partial = final.parent / f".partial-{final.name}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        synthesize_corpus(partial, seed=seed, workers=workers, progress=progress, **params)
        try:
            os.rename(partial, final)
        except OSError:
            if not (final / "corpus.json").is_file():  # not a concurrent run that finished first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


def corpus_cache_path(seed: int = 0, **params) -> Path:
    """Where `builtin_corpus(seed, **params)` lives (whether or not it exists yet)."""
    resolved = {**CORPUS_DEFAULTS, **params}
    key = json.dumps({"version": FORMAT_VERSION, "seed": int(seed),
                      "words": [str(w) for w in resolved["words"]],
                      "n_speakers": int(resolved["n_speakers"]), "takes": int(resolved["takes"]),
                      "snr_db": [float(x) for x in resolved["snr_db"]]}, sort_keys=True)
    return cache_dir() / "corpus" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _check_params(words, takes: int, snr_db, workers: int) -> tuple[tuple[str, ...], tuple]:
    words = tuple(str(w).strip().lower() for w in words)
    bad = [w for w in words if not re.fullmatch(r"[a-z]+(?:['-][a-z]+)*", w)]
    if not words or bad or len(set(words)) != len(words):
        raise UserError(f"words must be distinct plain words, got {list(words)}")
    if takes < 1 or workers < 1:
        raise UserError(f"takes and workers must be >= 1, got takes={takes} workers={workers}")
    low, high = (float(x) for x in snr_db)
    if low > high:
        raise UserError(f"snr_db must be (low, high) with low <= high, got {snr_db}")
    return words, (low, high)


def _run_pipeline(speaking, rendering, jobs: list, render_args: tuple, show: bool) -> None:
    # speaking.imap yields each speaker's clean clips in order; rendering mixes and writes them
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), disable=not show, transient=True) as bar:
        task = bar.add_task(f"synthesising {len(jobs)} speakers", total=len(jobs))
        pending = [rendering.apply_async(_render_speaker, (job, clips, *render_args),
                                         callback=lambda _: bar.advance(task))
                   for job, clips in zip(jobs, speaking.imap(_speak_speaker, jobs))]
        for result in pending:
            result.get()  # re-raises a worker's exception here


def _espeak_rate() -> int:
    """eSpeak's output sample rate (Hz), read in the speaking process, which loads eSpeak here."""
    from testbed.data.espeak import Synthesizer

    return Synthesizer.shared().sample_rate


def _speak_speaker(job: tuple) -> list[np.ndarray]:
    """Clean 16 kHz clips of one speaker, word-major then take, with per-take pitch, intonation
    and rate jitter around the speaker's own values."""
    seed, index, speaker, words, takes = job
    requests = []
    for word_index, word in enumerate(words):
        for take in range(takes):
            rng = np.random.default_rng([seed, _TAKE_STREAM, index, word_index, take])
            pitch = _jitter(rng, speaker.pitch, PITCH_JITTER)
            rate = int(np.clip(round(speaker.rate * rng.uniform(*RATE_JITTER)), 80, 450))
            requests.append((word, speaker.espeak_voice, pitch, rate,
                             _jitter(rng, speaker.pitch_range, RANGE_JITTER)))
    return _speak_many(requests, speaker.render_rate)


def _jitter(rng: np.random.Generator, value: int, spread: int) -> int:
    """`value` +- up to `spread`, kept within eSpeak's 0..100 parameter range."""
    return int(np.clip(value + rng.integers(-spread, spread + 1), 0, 100))


def _speak_many(requests: list[tuple], render_rate: int) -> list[np.ndarray]:
    # one batched resample per call: (clips, samples) zero-padded to the longest; resampling to
    # `render_rate` and playing at SAMPLE_RATE scales frequencies by SAMPLE_RATE / render_rate
    from testbed.data.espeak import Synthesizer

    synth = Synthesizer.shared()
    raw = [synth.synthesize(text, voice, pitch, rate, pitch_range)
           for text, voice, pitch, rate, pitch_range in requests]
    batch = np.zeros((len(raw), max(len(r) for r in raw)), np.float32)
    for row, samples in enumerate(raw):
        batch[row, :len(samples)] = samples
    batch = resample(batch, synth.sample_rate, render_rate)
    lengths = [-(-len(r) * render_rate // synth.sample_rate) for r in raw]  # ceil, samples
    return [trim_silence(batch[row, :n], SAMPLE_RATE) for row, n in enumerate(lengths)]


def _render_speaker(job: tuple, clips: list[np.ndarray], out_dir: Path, snr_db: tuple) -> int:
    """Augment and write one speaker's clips as 16-bit PCM wavs; returns the number written."""
    seed, index, speaker, words, takes = job
    for word_index, word in enumerate(words):
        for take in range(takes):
            rng = np.random.default_rng([seed, _MIX_STREAM, index, word_index, take])
            speech = colour(clips[word_index * takes + take], CHANNEL_BANDS_HZ,
                            speaker.channel_db, SAMPLE_RATE)
            clip = augment(speech, rng, clip_samples=CLIP_SAMPLES,
                           sample_rate=SAMPLE_RATE, snr_db=snr_db, level_dbfs=LEVEL_DBFS)
            _write_wav(out_dir / word / f"{speaker.id}_nohash_{take}.wav", clip)
    return len(words) * takes


def _write_wav(path: Path, clip: np.ndarray) -> None:
    # 16-bit PCM mono with the canonical 44-byte header; the stdlib writer, because libsndfile
    # fsyncs every file on close (3 ms each, most of the corpus's time)
    pcm = np.clip(np.round(clip * 32768), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)  # bytes per sample
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())


def _write_metadata(out_dir: Path, speakers: list[Speaker], splits: dict[str, str],
                    words: tuple, takes: int, params: dict) -> None:
    for split, list_name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        lines = [f"{word}/{s.id}_nohash_{take}.wav" for word in words
                 for s in speakers if splits[s.id] == split for take in range(takes)]
        (out_dir / list_name).write_text("".join(f"{line}\n" for line in sorted(lines)))
    table = {s.id: {**asdict(s), "espeak_voice": s.espeak_voice, "split": splits[s.id]}
             for s in speakers}
    for entry in table.values():
        del entry["id"]
    (out_dir / "speakers.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    per_split = {split: sum(1 for s in speakers if splits[s.id] == split)
                 for split in ("train", "validation", "test")}
    corpus = {"format": "testbed-synth", "version": FORMAT_VERSION, **params,
              "level_dbfs": list(LEVEL_DBFS), "sample_rate": SAMPLE_RATE,
              "clip_samples": CLIP_SAMPLES, "layout": "speech_commands",
              "counts": {"utterances": len(speakers) * len(words) * takes,
                         "words": len(words), "speakers": per_split}}
    (out_dir / "corpus.json").write_text(json.dumps(corpus, indent=1, sort_keys=True) + "\n")


def _remove_stale_partials(root: Path) -> None:
    # `.partial-<key>-<pid>` folders left by runs that were killed (their pid is gone)
    for partial in root.glob(".partial-*"):
        try:
            os.kill(int(partial.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            pass
