"""Compute slots: under the event clock, at most N clients of a run on this host compute at once.

Emulated time no longer depends on host time there, so a client may wait for a slot without it
costing emulated time; what it gains is a cleaner CPU-time measurement: with more busy threads than
cores, the processes time-slice and their spinning thread pools and shared caches inflate the CPU
seconds each step is billed (docs/benchmarks.md, "Event clock"). A slot is an exclusive `flock` on
one of N files in the run directory: the kernel releases it when its process dies, so a crashed
client never holds one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from testbed.emulation.dilation import host_cores

if TYPE_CHECKING:
    from testbed.config.schema import EmulationSpec

POLL_S = 0.01  # host seconds between sweeps over the slots while all are taken


class ComputeSlots:
    """`with slots:` holds one of `count` slots under `directory` for the block (waiting for one if need be)."""

    def __init__(self, directory: Path, count: int):
        if count < 1:
            raise ValueError(f"compute slots must be >= 1 (got {count})")
        directory.mkdir(parents=True, exist_ok=True)
        self.paths = [directory / f"slot-{index}" for index in range(count)]
        self._held: int | None = None  # file descriptor of the slot held

    def __enter__(self) -> ComputeSlots:
        while True:
            for path in self.paths:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._held = fd
                return self
            time.sleep(POLL_S)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._held is not None:
            os.close(self._held)  # closing the descriptor releases its lock
            self._held = None


def compute_slots(spec: EmulationSpec, run_dir: Path | None) -> AbstractContextManager:
    """The slots a client computes in: none under the real clock, or for a client without the run directory
    (`testbed client` on another host)."""
    if spec.clock != "events" or run_dir is None:
        return contextlib.nullcontext()
    return ComputeSlots(run_dir / "slots", spec.max_computing or host_cores(spec))
