"""Helpers for tests that start real `testbed` processes and read their run directories."""

import json
import subprocess
import sys
import time
from pathlib import Path

from testbed.procfs import PARENT, running, stat_fields


def testbed_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "testbed", *args]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(testbed_command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(testbed_command(*args), capture_output=True, text=True, timeout=timeout)


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_for_event(run_dir: Path, predicate, timeout: float = 120) -> dict:
    """Poll events.jsonl until an event satisfies `predicate`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(run_dir):
            if predicate(event):
                return event
        time.sleep(0.1)
    raise TimeoutError(f"no such event in {run_dir} within {timeout} s")


alive = running  # True while `pid` exists and is not a zombie


def parent(pid: int) -> int:
    """The pid of a process's parent (Linux /proc); 0 once it is gone."""
    fields = stat_fields(pid)
    return 0 if fields is None else int(fields[PARENT])
