"""Helpers for tests that start real `testbed` processes and read their run directories."""

import json
import subprocess
import sys
import time
from pathlib import Path


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


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def parent(pid: int) -> int:
    """The pid of a process's parent (Linux /proc); 0 once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0
