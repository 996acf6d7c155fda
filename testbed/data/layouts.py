"""Corpus layouts on disk (Speech Commands v2, CSV/JSONL manifest, FSDD) read as Utterances."""

import csv
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import DataError, UserError

SPLITS = ("train", "validation", "test")
# spellings accepted in manifests for the three splits
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                  "valid": "validation", "val": "validation", "dev": "validation",
                  "test": "test", "testing": "test"}
_FSDD_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[^_]+)_(?P<take>\d+)\.wav$")


@dataclass(frozen=True)
class Utterance:
    """One labelled recording; `word` is its label (a digit for FSDD)."""

    path: Path
    word: str
    speaker: str
    split: str  # "train" | "validation" | "test"


def assign_speaker_splits(speakers: Iterable[str], validation: float = 0.1,
                          test: float = 0.1) -> dict[str, str]:
    """Speaker -> split, stable under adding files: speakers are ordered by a hash of their name
    (like Speech Commands) and the first `test` fraction (at least one when there are two or
    more speakers) is test, the next `validation` fraction validation, the rest train."""
    ordered = sorted(set(speakers), key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    n = len(ordered)
    n_test = max(1, round(test * n)) if n >= 2 and test > 0 else 0
    n_validation = min(round(validation * n), max(0, n - n_test - 1))  # keep one train speaker
    return {speaker: ("test" if rank < n_test else
                      "validation" if rank < n_test + n_validation else "train")
            for rank, speaker in enumerate(ordered)}


def load_speech_commands(root: Path | str) -> list[Utterance]:
    """Speech Commands v2: `<word>/<speaker>_nohash_<n>.wav`, splits from validation_list.txt and
    testing_list.txt (everything else is train); `_background_noise_` is not an utterance."""
    root = _existing_dir(root, "Speech Commands directory")
    listed = {split: _read_list(root / name) for split, name in
              (("validation", "validation_list.txt"), ("test", "testing_list.txt"))}
    utterances = []
    for word_dir in sorted(p for p in root.iterdir()
                           if p.is_dir() and not p.name.startswith(("_", "."))):
        for wav in sorted(word_dir.glob("*.wav")):
            if "_nohash_" not in wav.name:
                raise DataError(f"{wav}: not named <speaker>_nohash_<n>.wav")
            relative = f"{word_dir.name}/{wav.name}"
            split = next((s for s, names in listed.items() if relative in names), "train")
            utterances.append(Utterance(wav, word_dir.name, wav.name.split("_nohash_")[0], split))
    return _non_empty(utterances, root, "<word>/<speaker>_nohash_<n>.wav files")


def load_manifest(path: Path | str) -> list[Utterance]:
    """A CSV (with header) or JSONL manifest with fields path, label, speaker and optional split;
    relative paths are relative to the manifest. Rows without a split are train."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    rows = _jsonl_rows(path) if path.suffix.lower() in (".jsonl", ".ndjson", ".json") \
        else _csv_rows(path)
    utterances = [_manifest_utterance(path, line, row) for line, row in rows]
    return _non_empty(utterances, path, "rows")


def load_fsdd(root: Path | str) -> list[Utterance]:
    """Free Spoken Digit Dataset: `<digit>_<speaker>_<n>.wav` (8 kHz) in root or root/recordings;
    the label is the digit and speakers are split with `assign_speaker_splits`."""
    root = _existing_dir(root, "FSDD directory")
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    found = []
    for wav in sorted(folder.glob("*.wav")):
        match = _FSDD_NAME.match(wav.name)
        if match is None:
            raise DataError(f"{wav}: not named <digit>_<speaker>_<n>.wav")
        found.append((wav, match["digit"], match["speaker"]))
    splits = assign_speaker_splits(speaker for _, _, speaker in found)
    utterances = [Utterance(wav, digit, speaker, splits[speaker]) for wav, digit, speaker in found]
    return _non_empty(utterances, folder, "<digit>_<speaker>_<n>.wav files")


#: layout name -> loader; `testbed data info --layout` and scenario files use these names.
LAYOUTS = {"speech_commands": load_speech_commands, "manifest": load_manifest, "fsdd": load_fsdd}


def detect_layout(path: Path | str) -> str:
    """Guess a corpus's layout: a file is a manifest, a folder of `d_name_n.wav` is FSDD."""
    path = Path(path)
    if path.is_file():
        return "manifest"
    folder = path / "recordings" if (path / "recordings").is_dir() else path
    if folder.is_dir() and any(_FSDD_NAME.match(p.name) for p in folder.glob("*.wav")):
        return "fsdd"
    return "speech_commands"


def load_corpus(path: Path | str, layout: str | None = None) -> list[Utterance]:
    """Load a corpus in `layout` (detected when None); unknown layouts list the valid ones."""
    layout = layout or detect_layout(path)
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r} (valid: {', '.join(LAYOUTS)})")
    return LAYOUTS[layout](path)


def _existing_dir(root: Path | str, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: {what} not found")
    return root


def _non_empty(utterances: list[Utterance], where: Path, expected: str) -> list[Utterance]:
    if not utterances:
        raise DataError(f"{where}: empty corpus (no {expected})")
    return utterances


def _read_list(path: Path) -> set[str]:
    # Speech Commands list files hold one `<word>/<file>.wav` per line
    if not path.exists():
        return set()
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _csv_rows(path: Path):
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label", "speaker"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: line 1: header lacks column(s) {', '.join(sorted(missing))} "
                            "(expected path,label,speaker[,split])")
        for row in reader:
            yield reader.line_num, row


def _jsonl_rows(path: Path):
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {line_number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {line_number}: expected a JSON object")
        yield line_number, row


def _manifest_utterance(manifest: Path, line: int, row: dict) -> Utterance:
    where = f"{manifest}: line {line}"
    fields = {}
    for key in ("path", "label", "speaker"):
        value = row.get(key)
        if value is None or str(value).strip() == "":
            raise DataError(f"{where}: missing {key!r}")
        fields[key] = str(value).strip()
    split_text = str(row.get("split") or "train").strip().lower()
    if split_text not in _SPLIT_ALIASES:
        raise DataError(f"{where}: unknown split {split_text!r} (valid: {', '.join(SPLITS)})")
    audio = Path(fields["path"])
    audio = audio if audio.is_absolute() else manifest.parent / audio
    if not audio.is_file():
        raise DataError(f"{where}: audio file {audio} not found")
    return Utterance(audio, fields["label"], fields["speaker"], _SPLIT_ALIASES[split_text])
