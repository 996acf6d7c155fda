"""Shared fixtures: a private cache (corpus synthesised once per session) and real `testbed` runs."""

import os
import signal
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """A private TESTBED_CACHE for the session; tests never touch the user's cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["TESTBED_CACHE"] = str(path)
    return path


@pytest.fixture
def write_scenario(tmp_path, cache):
    """Write a small scenario (debug backbone, 3 words) and return its path; kwargs override YAML text."""
    def write(name: str = "t", **sections) -> Path:
        text = {
            "name": name, "rounds": 2, "deadline_s": 20, "eval_every": 1,
            "data": "{words: [stop, spot, no]}", "backbone": "{name: debug}",
            "training": "{local_steps: 3, batch_size: 8}",
            "fleet": "[{profile: laptop, count: 2}, {profile: rpi4, task: speaker}]",
            # real time: these tests are about the runtime, not the fidelity of emulated speeds
            "emulation": "{clock: real, dilation: 1}",
        }
        text.update({k: str(v) for k, v in sections.items()})
        path = tmp_path / f"{name}.yaml"
        path.write_text("".join(f"{key}: {value}\n" for key, value in text.items()))
        return path
    return write


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_as_on_a_terminal():
    """Ctrl-C raises KeyboardInterrupt here and ends the processes the tests start, as it does for a user: the
    workers of `pytest -n` (pytest-xdist) ignore SIGINT, and every process they start would inherit that."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def signal_dispositions_restored():
    """An aggregator finished in-process ignores SIGTERM and SIGINT from then on: not the test process's after it."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
