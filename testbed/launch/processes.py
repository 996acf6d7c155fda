"""Child processes of a run: forked fast from a pre-imported server, and never left behind."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent goes (Linux; no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def log_to(path: Path) -> None:
    """Send this process's logging and stderr to its own file in the run directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a", buffering=1, encoding="utf-8")
    os.dup2(handle.fileno(), 2)
    sys.stderr = handle
    logging.basicConfig(level=logging.INFO, stream=handle, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class ProcessGroup:
    """All processes a run starts; `stop()` guarantees none survives it."""

    def __init__(self, preload: list[str]):
        # Idle OpenMP threads sleep instead of spinning: spinning burns CPU time that the duty cycle
        # would count as work (set before the fork server loads torch, which reads it once).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        # One malloc arena per process: with one per thread (torch, zmq, heartbeat), memory a
        # training step freed stays reserved in each thread's arena instead of being reused.
        os.environ.setdefault("MALLOC_ARENA_MAX", "1")
        # Blocks of 1 MiB and more get their own mapping, returned to the kernel when freed (glibc's
        # adaptive threshold drifts up to 32 MiB and then keeps a step's freed activations in the
        # heap). Measured: 8 MB less per training client at no CPU cost; at 128 KiB it saved 56 MB
        # but cost 55 % more CPU per step (every block faulted in anew), which would slow every device.
        os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(preload)  # torch etc. imported once, shared by every fork
        self.processes: dict[str, multiprocessing.Process] = {}
        self._crashed_at: dict[str, float] = {}  # name -> when its crash was noticed (monotonic s)

    def start(self, name: str, target, *args) -> multiprocessing.Process:
        process = self.context.Process(target=target, args=args, name=name, daemon=False)
        process.start()
        self.processes[name] = process
        return process

    def pids(self) -> dict[str, int]:
        """Every process started, by name, plus the fork server they were forked from."""
        from multiprocessing import forkserver

        pids = {name: p.pid for name, p in self.processes.items()}
        server = getattr(forkserver._forkserver, "_forkserver_pid", None)  # private, but the only handle
        return {**pids, "forkserver": server} if server else pids

    def reboot_crashed(self, reboot_s: float = 2.0) -> list[str]:
        """Names of processes that exited with an injected crash at least `reboot_s` ago (to start again)."""
        from testbed.emulation.availability import CRASH_EXIT_CODE

        now = time.monotonic()
        due = []
        for name, process in self.processes.items():
            if process.exitcode == CRASH_EXIT_CODE:
                crashed = self._crashed_at.setdefault(name, now)
                if now - crashed >= reboot_s:
                    due.append(name)
        for name in due:
            del self._crashed_at[name]
        return due

    def alive(self) -> list[str]:
        return [name for name, p in self.processes.items() if p.is_alive()]

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM everyone, wait up to `grace_s`, then SIGKILL whatever is left, and reap all."""
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + grace_s
        for process in self.processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes.values():
            if process.is_alive():
                process.kill()
                process.join(1.0)
        self._stop_fork_server()

    @staticmethod
    def _stop_fork_server() -> None:
        """The fork server would exit on its own once we do; stop it now so nothing outlives the run."""
        from multiprocessing import forkserver

        server = forkserver._forkserver  # private, but the only handle
        pid = getattr(server, "_forkserver_pid", None)
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                server._stop()  # reaps it and forgets it, so a later run in this process starts a new one
            except (OSError, ChildProcessError):
                server._forkserver_pid = server._forkserver_address = server._forkserver_alive_fd = None
