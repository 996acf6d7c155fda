"""A scenario's data: the corpus its DataSpec names, its keyword subset, and each task's arrays."""

from __future__ import annotations

import functools

from testbed.config.schema import DataSpec
from testbed.data.layouts import Utterance, load_corpus, load_speech_commands
from testbed.data.tasks import TaskData, prepare_task
from testbed.errors import DataError

LAYOUTS = {"speech_commands": "speech_commands", "manifest": "manifest", "fsdd": "fsdd"}


@functools.lru_cache(maxsize=4)
def corpus_utterances(spec: DataSpec) -> tuple[Utterance, ...]:
    """Every utterance of the corpus (the built-in one is synthesised on first use), words filtered."""
    if spec.source == "builtin":
        from testbed.data.synth import builtin_corpus

        utterances = load_speech_commands(builtin_corpus(takes=spec.takes))
    else:
        assert spec.path is not None  # DataSpec.problems() requires a path unless the source is builtin
        utterances = load_corpus(spec.path, LAYOUTS[spec.source])
    if spec.words:
        present = {u.word for u in utterances}
        missing = sorted(set(spec.words) - present)
        if missing:
            raise DataError(f"data.words: {', '.join(missing)} not in the corpus (present: {', '.join(sorted(present))})")
        utterances = [u for u in utterances if u.word in spec.words]
    return tuple(utterances)


@functools.lru_cache(maxsize=4)
def task_data(spec: DataSpec, task: str, seed: int) -> TaskData:
    """Train/test arrays of one task, held out as the task defines (cached per process)."""
    return prepare_task(corpus_utterances(spec), task, test_speaker_fraction=spec.test_speaker_fraction,
                        seed=seed, clip_seconds=spec.clip_seconds)
