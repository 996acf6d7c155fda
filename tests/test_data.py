"""Tests for testbed.data: eSpeak corpus synthesis, layouts, audio cache, partitions and tasks."""

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from testbed.data import commands, synth
from testbed.data.audio import load_waveforms, read_clip
from testbed.data.augment import augment, colour
from testbed.data.espeak import Synthesizer
from testbed.data.layouts import (Utterance, load_corpus, load_fsdd, load_manifest,
                                   load_speech_commands)
from testbed.data.partition import (partition_by_speaker, partition_dirichlet, partition_iid,
                                    split_test_speakers)
from testbed.data.tasks import TASKS, prepare_task
from testbed.errors import DataError, UserError

TINY = {"words": ("yes", "no", "up"), "n_speakers": 4, "takes": 1}  # 12 utterances


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    return synth.synthesize_corpus(out, seed=3, workers=1, progress=False, **TINY)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))


def _wav_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# --- synthesis ---------------------------------------------------------------------------------

def test_espeak_synthesizes_a_word():
    samples = Synthesizer.shared().synthesize("stop", "en-us+f2", pitch=60, rate=160)
    assert Synthesizer.shared().sample_rate == 22050
    assert samples.dtype == np.float32 and 0.1 < len(samples) / 22050 < 1.5
    assert 0.05 < np.abs(samples).max() <= 1.0


def test_tiny_corpus_layout_and_metadata(tiny_corpus):
    wavs = sorted(tiny_corpus.rglob("*.wav"))
    assert len(wavs) == 12 and {p.parent.name for p in wavs} == set(TINY["words"])
    info = soundfile.info(str(wavs[0]))
    assert (info.samplerate, info.frames, info.channels) == (16000, 16000, 1)
    assert info.subtype == "PCM_16"
    speakers = json.loads((tiny_corpus / "speakers.json").read_text())
    assert len(speakers) == 4 and all(s["voice"] in synth.VOICES for s in speakers.values())
    corpus = json.loads((tiny_corpus / "corpus.json").read_text())
    assert corpus["seed"] == 3 and corpus["counts"]["utterances"] == 12
    peaks = [np.abs(soundfile.read(str(p))[0]).max() for p in wavs]
    assert 10 ** (-20 / 20) * 0.99 <= min(peaks) and max(peaks) <= 1.0  # -20..0 dBFS


def test_same_seed_same_bytes_regardless_of_workers(tiny_corpus, tmp_path):
    again = synth.synthesize_corpus(tmp_path / "again", seed=3, workers=2, progress=False, **TINY)
    assert _wav_files(again) == _wav_files(tiny_corpus)


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_augment_mixes_noise_at_the_drawn_snr_and_peaks_at_the_drawn_level(snr_db):
    speech = np.sin(2 * np.pi * 440 * np.arange(4000) / 16000)  # 0.25 s tone
    offset = int(np.random.default_rng(7).integers(0, 16000 - 4000 + 1))  # augment's first draw
    clip = augment(speech, np.random.default_rng(7), clip_samples=16000, sample_rate=16000,
                   snr_db=(snr_db, snr_db), level_dbfs=(-6.0, -6.0))
    assert clip.dtype == np.float32 and clip.shape == (16000,)
    clip = clip.astype(np.float64)
    assert np.abs(clip).max() == pytest.approx(10 ** (-6 / 20), rel=1e-3)
    placed = np.zeros(16000)
    placed[offset:offset + 4000] = speech
    scale = clip @ placed / (placed @ placed)  # the level's gain; the noise barely correlates with the tone
    noise = clip / scale - placed
    assert 20 * np.log10(np.sqrt(np.mean(speech ** 2) / np.mean(noise ** 2))) == pytest.approx(snr_db, abs=0.3)


def test_colour_applies_the_gain_curve_at_its_bands():
    rate, tone_hz = 16000, 1000.0  # a band centre: the tone passes at exactly that band's gain
    tone = np.sin(2 * np.pi * tone_hz * np.arange(rate) / rate)
    gains = (0.0, 0.0, -6.0, 0.0, 0.0)
    out = colour(tone, synth.CHANNEL_BANDS_HZ, gains, rate)
    middle = slice(2000, -2000)  # away from the ends, where the filter's response is cut
    ratio_db = 20 * np.log10(np.std(out[middle]) / np.std(tone[middle]))
    assert out.shape == tone.shape and ratio_db == pytest.approx(-6.0, abs=0.2)


def test_speakers_have_their_own_timbre_within_the_ranges():
    speakers = synth.draw_speakers(96, seed=0)
    assert all(synth.PITCH_RANGE[0] <= s.pitch_range <= synth.PITCH_RANGE[1] for s in speakers)
    assert all(synth.RENDER_RATES[0] <= s.render_rate <= synth.RENDER_RATES[1]
               and s.render_rate % 50 == 0 for s in speakers)
    assert all(len(s.channel_db) == len(synth.CHANNEL_BANDS_HZ)
               and max(map(abs, s.channel_db)) <= synth.CHANNEL_DB for s in speakers)
    assert len({s.render_rate for s in speakers}) > 30  # speakers differ, not one shared value


def test_speakers_are_distinct_and_seeded():
    speakers = synth.draw_speakers(96, seed=0)
    assert len({s.id for s in speakers}) == 96
    assert len({(s.voice, s.variant) for s in speakers}) == 96  # pairs used once before repeating
    assert speakers == synth.draw_speakers(96, seed=0) != synth.draw_speakers(96, seed=1)
    with pytest.raises(UserError, match="speakers must be"):
        synth.draw_speakers(0, seed=0)


def test_bad_parameters_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="words"):
        synth.synthesize_corpus(tmp_path / "x", words=("yes", "../etc"), progress=False)
    with pytest.raises(UserError, match="unknown corpus parameter"):
        synth.builtin_corpus(speakers=3)


def _fake_synthesize(out_dir, **params):
    (Path(out_dir) / "yes").mkdir(parents=True)
    (Path(out_dir) / "corpus.json").write_text(json.dumps(params, default=list))
    return Path(out_dir)


def test_builtin_corpus_is_cached_by_parameters(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(synth, "synthesize_corpus",
                        lambda out, **p: calls.append(p) or _fake_synthesize(out, **p))
    first = synth.builtin_corpus(seed=1, n_speakers=5, progress=False)
    assert synth.builtin_corpus(seed=1, n_speakers=5) == first and len(calls) == 1
    assert first.parent == tmp_path / "cache" / "corpus"
    assert synth.builtin_corpus(seed=2, n_speakers=5, progress=False) != first
    assert [p.name for p in first.parent.iterdir() if p.name.startswith(".")] == []


def test_interrupted_builtin_corpus_leaves_nothing(monkeypatch, tmp_path):
    def crash(out_dir, **params):
        _fake_synthesize(out_dir, **params)
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "synthesize_corpus", crash)
    with pytest.raises(KeyboardInterrupt):
        synth.builtin_corpus(progress=False)
    assert list((tmp_path / "cache" / "corpus").iterdir()) == []


def test_a_scenario_sets_the_takes_of_the_builtin_corpus():
    from testbed.config.schema import BUILTIN_TAKES, DataSpec
    from testbed.data.source import corpus_utterances

    assert synth.CORPUS_DEFAULTS["takes"] == DataSpec().takes == BUILTIN_TAKES
    utterances = corpus_utterances(DataSpec(takes=1, words=("stop", "spot")))  # synthesised here (cache in tmp)
    per_speaker_word = Counter((u.speaker, u.word) for u in utterances)
    assert len(per_speaker_word) == synth.CORPUS_DEFAULTS["n_speakers"] * 2 and set(per_speaker_word.values()) == {1}


# --- layouts -----------------------------------------------------------------------------------

def test_speech_commands_loader_reads_splits(tiny_corpus):
    utterances = load_speech_commands(tiny_corpus)
    assert len(utterances) == 12 and {u.word for u in utterances} == set(TINY["words"])
    test_lines = (tiny_corpus / "testing_list.txt").read_text().split()
    test = {f"{u.word}/{u.path.name}" for u in utterances if u.split == "test"}
    assert test == set(test_lines) and len(test) == 3  # 1 of 4 speakers, 3 words
    speakers = json.loads((tiny_corpus / "speakers.json").read_text())
    assert {u.speaker for u in utterances} == set(speakers)


def test_speech_commands_errors_name_the_path(tmp_path, tiny_corpus):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        load_speech_commands(tmp_path / "nope")
    (tmp_path / "empty" / "_background_noise_").mkdir(parents=True)
    with pytest.raises(DataError, match="empty corpus"):
        load_speech_commands(tmp_path / "empty")
    (tmp_path / "bad" / "yes").mkdir(parents=True)
    (tmp_path / "bad" / "yes" / "oops.wav").write_bytes(b"")
    with pytest.raises(DataError, match="oops.wav"):
        load_speech_commands(tmp_path / "bad")


def _write_manifests(tiny_corpus: Path, folder: Path) -> tuple[Path, Path]:
    rows = [{"path": str(Path("..") / tiny_corpus.name / u.word / u.path.name), "label": u.word,
             "speaker": u.speaker, "split": u.split} for u in load_speech_commands(tiny_corpus)]
    folder.mkdir()
    csv_path, jsonl_path = folder / "m.csv", folder / "m.jsonl"
    csv_path.write_text("path,label,speaker,split\n" + "".join(
        f"{r['path']},{r['label']},{r['speaker']},{r['split']}\n" for r in rows))
    jsonl_path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "split"}) + "\n"
                                  for r in rows))
    return csv_path, jsonl_path


def test_manifest_csv_and_jsonl(tiny_corpus):
    csv_path, jsonl_path = _write_manifests(tiny_corpus, tiny_corpus.parent / "manifests")
    from_csv, from_jsonl = load_manifest(csv_path), load_manifest(jsonl_path)
    reference = load_speech_commands(tiny_corpus)
    assert [u.path.resolve() for u in from_csv] == [u.path for u in reference]
    assert [u.split for u in from_csv] == [u.split for u in reference]
    assert {u.split for u in from_jsonl} == {"train"}  # no split column
    assert [(u.word, u.speaker) for u in from_jsonl] == [(u.word, u.speaker) for u in reference]
    assert load_corpus(csv_path) == from_csv


def test_manifest_errors_name_file_and_row(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    bad_row = tmp_path / "bad.csv"
    bad_row.write_text("path,label,speaker\na.wav,yes,s1\na.wav,yes,\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 3: missing 'speaker'"):
        load_manifest(bad_row)
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"path": "a.wav", "label": "yes", "speaker": "s"}\n'
                       '{"path": "gone.wav", "label": "no", "speaker": "s"}\n')
    with pytest.raises(DataError, match=r"missing\.jsonl: line 2: audio file .*gone\.wav"):
        load_manifest(missing)
    header = tmp_path / "header.csv"
    header.write_text("file,label\na.wav,yes\n")
    with pytest.raises(DataError, match=r"header\.csv: line 1: .*path, speaker"):
        load_manifest(header)
    junk = tmp_path / "junk.jsonl"
    junk.write_text("{not json\n")
    with pytest.raises(DataError, match=r"junk\.jsonl: line 1"):
        load_manifest(junk)
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label,speaker\n")
    with pytest.raises(DataError, match="empty corpus"):
        load_manifest(empty)


@pytest.fixture
def fsdd(tmp_path) -> Path:
    recordings = tmp_path / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    t = np.arange(4000) / 8000  # 0.5 s at 8 kHz
    for digit in range(3):
        for speaker in ("george", "jackson", "lucas", "theo"):
            for take in range(2):
                tone = 0.5 * np.sin(2 * np.pi * (300 + 100 * digit) * t)
                soundfile.write(str(recordings / f"{digit}_{speaker}_{take}.wav"), tone, 8000,
                                subtype="PCM_16")
    return tmp_path / "fsdd"


def test_fsdd_loader_and_resampling(fsdd):
    utterances = load_fsdd(fsdd)
    assert len(utterances) == 24 and {u.word for u in utterances} == {"0", "1", "2"}
    assert Counter(u.split for u in utterances)["test"] == 6  # one of four speakers, whole
    assert len({u.speaker for u in utterances if u.split == "test"}) == 1
    clip = read_clip(utterances[0].path)
    assert clip.shape == (16000,) and clip.dtype == np.float32
    voiced = np.flatnonzero(np.abs(clip) > 1e-3)
    assert abs(voiced[-1] + 1 - voiced[0] - 8000) < 20  # 0.5 s at 16 kHz...
    assert abs(voiced[0] - 4000) < 20  # ...centred in the 1 s clip
    assert load_corpus(fsdd) == utterances


def test_corrupt_and_missing_audio_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00garbage")
    with pytest.raises(DataError, match="corrupt.wav"):
        read_clip(corrupt)
    with pytest.raises(DataError, match="absent.wav"):
        read_clip(tmp_path / "absent.wav")
    bad_fsdd = tmp_path / "bad_fsdd"
    bad_fsdd.mkdir()
    (bad_fsdd / "0_george_0.wav").write_bytes(b"junk")
    with pytest.raises(DataError, match="0_george_0.wav"):
        load_waveforms(load_fsdd(bad_fsdd))


def test_waveform_cache_is_keyed_by_files(tiny_corpus, tmp_path):
    utterances = load_speech_commands(tiny_corpus)
    first = load_waveforms(utterances)
    cached = list((tmp_path / "cache" / "waveforms").glob("*.npy"))
    assert first.shape == (12, 16000) and first.dtype == np.float32 and len(cached) == 1
    np.testing.assert_array_equal(load_waveforms(utterances), first)
    assert len(list(cached[0].parent.glob("*.npy"))) == 1  # second call hit the cache
    np.testing.assert_array_equal(first[1], read_clip(utterances[1].path))
    load_waveforms(utterances[:5])
    assert len(list(cached[0].parent.glob("*.npy"))) == 2  # a different file list, a new entry


# --- partitions --------------------------------------------------------------------------------

def _covers_once(shards: list[list[int]], n_items: int) -> bool:
    return sorted(i for shard in shards for i in shard) == list(range(n_items))


def test_partition_iid_covers_every_index_once():
    shards = partition_iid(103, 7, seed=1)
    assert _covers_once(shards, 103) and {len(s) for s in shards} <= {14, 15}
    assert shards == partition_iid(103, 7, seed=1) != partition_iid(103, 7, seed=2)
    with pytest.raises(DataError, match="only 3 items"):
        partition_iid(3, 5, seed=0)


def test_partition_by_speaker_gives_whole_speakers():
    rng = np.random.default_rng(0)
    speakers = [f"s{rng.integers(20)}" for _ in range(500)]
    shards = partition_by_speaker(speakers, 6, seed=4)
    assert _covers_once(shards, 500) and all(shards)
    owners = [{speakers[i] for i in shard} for shard in shards]
    assert sum(map(len, owners)) == len(set(speakers))  # no speaker on two clients
    assert shards == partition_by_speaker(speakers, 6, seed=4)
    with pytest.raises(DataError, match="only 20 speakers"):
        partition_by_speaker(speakers, 21, seed=0)


def test_partition_dirichlet_is_skewed_and_never_empty():
    labels = np.repeat(np.arange(10), 60)
    skewed = partition_dirichlet(labels, 8, alpha=0.05, seed=0)
    even = partition_dirichlet(labels, 8, alpha=1000.0, seed=0)
    for shards in (skewed, even):
        assert _covers_once(shards, 600) and all(shards)

    def top_share(shards):  # mean share of each client's most common label
        return np.mean([Counter(labels[s]).most_common(1)[0][1] / len(s) for s in shards])

    assert top_share(skewed) > 0.6 > 0.2 > top_share(even)
    tiny = partition_dirichlet(labels[:12], 12, alpha=0.01, seed=3)
    assert _covers_once(tiny, 12) and all(tiny)
    assert skewed == partition_dirichlet(labels, 8, alpha=0.05, seed=0)


# --- tasks -------------------------------------------------------------------------------------

def test_split_test_speakers_honours_list_or_draws_fraction(tiny_corpus):
    utterances = load_speech_commands(tiny_corpus)
    train, test = split_test_speakers(utterances, 0.5, seed=0)
    assert {u.speaker for u in test} == {u.speaker for u in utterances if u.split == "test"}
    unsplit = [Utterance(u.path, u.word, u.speaker, "train") for u in utterances]
    train, test = split_test_speakers(unsplit, 0.5, seed=0)
    assert len({u.speaker for u in test}) == 2
    assert not {u.speaker for u in train} & {u.speaker for u in test}


def test_tasks_hold_out_speakers_or_utterances(tiny_corpus):
    utterances = load_speech_commands(tiny_corpus)
    keyword = prepare_task(utterances, "keyword", test_speaker_fraction=0.25, seed=0)
    assert keyword.classes == ("no", "up", "yes")
    assert not set(keyword.train_speakers) & set(keyword.test_speakers)
    assert keyword.train_waveforms.shape == (9, 16000) and keyword.test_labels.dtype == np.int64
    speaker = prepare_task(utterances, "speaker", test_speaker_fraction=0.34, seed=0)
    assert len(speaker.classes) == 4
    assert set(speaker.train_speakers) == set(speaker.test_speakers) == set(speaker.classes)
    assert len(speaker.test_labels) == 4 and len(speaker.train_labels) == 8  # 1 of 3 per speaker
    np.testing.assert_array_equal(speaker.test_labels,
                                  [speaker.classes.index(s) for s in speaker.test_speakers])
    with pytest.raises(UserError, match="valid: keyword, speaker"):
        prepare_task(utterances, "emotion", test_speaker_fraction=0.2, seed=0)
    assert set(TASKS) == {"keyword", "speaker"}


# --- command line ------------------------------------------------------------------------------

def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands.add_data_args(parser)
    return commands.data(parser.parse_args(argv))


def test_data_info_and_synth_commands(tiny_corpus, fsdd, monkeypatch, capsys):
    assert _run(["info", str(tiny_corpus)]) == 0
    out = capsys.readouterr().out
    assert "(speech_commands): 12 utterances, 3 labels, 4 speakers" in out and "test" in out
    assert _run(["info", str(fsdd)]) == 0 and "(fsdd): 24 utterances" in capsys.readouterr().out
    with pytest.raises(DataError):
        _run(["info", str(fsdd), "--layout", "speech_commands"])
    monkeypatch.setattr(commands, "builtin_corpus", lambda **p: tiny_corpus)
    assert _run(["synth", "--words", "yes,no", "--speakers", "4"]) == 0
    assert str(tiny_corpus) in capsys.readouterr().out
