"""Client tasks (keyword spotting, speaker id): labels, held-out test split and waveform arrays.

Held-out evaluation differs per task:
- `keyword` (label = word) is tested on held-out *speakers* (`split_test_speakers`): the layout's
  own test speakers when it marks some, else a seeded fraction of them, so accuracy measures
  generalisation to unseen voices.
- `speaker` (closed-set speaker id) cannot be tested on unseen speakers, so its test set is a
  seeded fraction of *each speaker's* utterances (`split_per_speaker`, at least one per speaker
  with two or more); train and test hold the same speakers and the layout's splits are ignored.
The `test_speaker_fraction` argument is that fraction in both cases.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from testbed.data.audio import load_waveforms
from testbed.data.layouts import Utterance
from testbed.data.partition import split_per_speaker, split_test_speakers
from testbed.errors import DataError, UserError


@dataclass(frozen=True)
class Task:
    """How a task labels utterances and holds some out for testing."""

    label: Callable[[Utterance], str]
    split: Callable[[Sequence[Utterance], float, int], tuple[list, list]]
    description: str


@dataclass(frozen=True)
class TaskData:
    """A task's arrays; labels index `classes`. Waveforms are float32 (N, samples) at 16 kHz.

    The clips stay in the corpus-wide array (memory-mapped from the cache), addressed by row, so
    a client holding a shard of a few hundred clips copies only those: `train_clips(shard)`.
    """

    classes: tuple[str, ...]
    clips: np.ndarray  # float32 (corpus clips, samples): every utterance of the corpus
    train_rows: np.ndarray  # int64 (N,): rows of `clips`
    train_labels: np.ndarray  # int64 (N,)
    train_speakers: list[str]
    test_rows: np.ndarray  # int64 (M,)
    test_labels: np.ndarray  # int64 (M,)
    test_speakers: list[str]

    def train_clips(self, shard: np.ndarray | None = None) -> np.ndarray:
        """float32 (len(shard), samples), a copy of the training clips at positions `shard` (None = all)."""
        rows = self.train_rows if shard is None else self.train_rows[shard]
        return np.ascontiguousarray(self.clips[rows])

    @property
    def train_waveforms(self) -> np.ndarray:
        return self.train_clips()

    @property
    def test_waveforms(self) -> np.ndarray:
        return np.ascontiguousarray(self.clips[self.test_rows])


#: task name -> Task; a client has exactly one task.
TASKS = {
    "keyword": Task(attrgetter("word"), split_test_speakers,
                    "keyword spotting; tested on held-out speakers"),
    "speaker": Task(attrgetter("speaker"), split_per_speaker,
                    "closed-set speaker id; tested on held-out utterances of the same speakers"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r} (valid: {', '.join(TASKS)})")
    return TASKS[name]


def prepare_task(utterances: Sequence[Utterance], task: str, *,
                 test_speaker_fraction: float = 0.2, seed: int = 0,
                 clip_seconds: float = 1.0) -> TaskData:
    """Split, label and load one task's data. Waveforms of all `utterances` are loaded (and
    cached) as one array, so every task and seed over a corpus shares one cache entry."""
    spec = get_task(task)
    waveforms = load_waveforms(utterances, clip_seconds)
    row = {u: i for i, u in enumerate(utterances)}
    train, test = spec.split(utterances, test_speaker_fraction, seed)
    if not train or not test:
        raise DataError(f"task {task!r}: {len(train)} train and {len(test)} test utterances; "
                        "need some of each")
    classes = tuple(sorted({spec.label(u) for u in train} | {spec.label(u) for u in test}))
    index = {name: i for i, name in enumerate(classes)}
    return TaskData(
        classes=classes,
        clips=waveforms,
        train_rows=np.array([row[u] for u in train], np.int64),
        train_labels=np.array([index[spec.label(u)] for u in train], np.int64),
        train_speakers=[u.speaker for u in train],
        test_rows=np.array([row[u] for u in test], np.int64),
        test_labels=np.array([index[spec.label(u)] for u in test], np.int64),
        test_speakers=[u.speaker for u in test],
    )
