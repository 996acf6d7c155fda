"""Child processes of a run: forked fast from a pre-imported server, and never left behind."""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from testbed.launch.fork_server import receive, send
from testbed.procfs import ENDED, GROUP, STATE, stat_fields

PR_SET_PDEATHSIG = 1  # linux/prctl.h
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h, for mallopt()
# What a run's fork server imports once, here and on each Ray node: the process entry points (entry.py) and the
# heavy modules they need (torch, transformers, the roles)
PRELOAD = ["testbed.launch.entry"]
# The entry points, named: a launcher or node host that forks them never imports torch itself (~5 s of CPU)
AGGREGATOR_ENTRY, CLIENT_ENTRY = "testbed.launch.entry:aggregator_main", "testbed.launch.entry:client_main"
KILLED_END_S = 10.0  # how long stop() waits for SIGKILLed children to be gone (host seconds)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent goes (Linux; no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def keep_freed_blocks(mib: int = 32) -> None:
    """Let this process reuse freed blocks below `mib` MiB (at most 32 on 64-bit glibc) instead of mapping
    each anew: undoes, for a process that evaluates, the 1 MiB mmap threshold every forked child inherits
    (`ProcessGroup`). Evaluation at batch 64 frees and allocates every layer's activations; with a fresh
    mapping each time, `paper_fleet`'s evaluation (1032 test clips, 2 threads) faulted in 10.9 M pages and
    took 20 s, against 10 s with this (docs/benchmarks.md, "Event clock"). Training steps, which keep their
    activations until the backward pass, measured the same either way. Linux glibc; a no-op elsewhere."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, mib << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * mib << 20)  # hand memory back only above twice that


def log_to(path: Path) -> None:
    """Send this process's logging and stderr to its own file in the run directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a", buffering=1, encoding="utf-8")
    os.dup2(handle.fileno(), 2)
    sys.stderr = handle
    logging.basicConfig(level=logging.INFO, stream=handle, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class Child:
    """A process the fork server forked: its name and pid, and its exit code once the server reported it.

    The launcher is not its parent (the fork server is), so its state comes from the server's reports, read by
    `ProcessGroup.poll`."""

    def __init__(self, group: ProcessGroup, name: str, pid: int):
        self.group, self.name, self.pid = group, name, pid
        self.exitcode: int | None = None  # -N: killed by signal N

    def is_alive(self) -> bool:
        self.group.poll()
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        """Wait until it has ended, at most `timeout` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.exitcode is None and self.group.serving:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            self.group.poll(left)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.exitcode is None:  # not reported ended: the pid is still its own (the server has not reaped it)
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass


class ProcessGroup:
    """All processes a run starts, forked by one fork server (fork_server.py) in a process group of their own;
    `stop()` guarantees none survives it. Should the launcher die without stopping them, the server sees its
    end of their socket close and kills the group."""

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
        self.preload = preload  # modules the fork server imports once (torch etc.), shared by every fork
        self.server: subprocess.Popen | None = None
        self.channel: socket.socket | None = None
        self.processes: dict[str, Child] = {}  # name -> its latest process (a rebooted client: the new one)
        self._running: dict[int, Child] = {}   # pid -> process not yet reported ended
        self._crashed_at: dict[str, float] = {}  # name -> when its crash was noticed (monotonic s)

    @property
    def serving(self) -> bool:
        return self.channel is not None

    def warm_up(self) -> None:
        """Start the fork server now, without waiting: its imports (~5 s of torch and model code) then overlap the
        launcher's own work before the first `start`."""
        if self.server is None:
            self._start_server()

    def start(self, name: str, target, *args) -> Child:
        """Fork `target(*args)` (a module-level function of a preloaded module, or its "module:function") from the
        fork server; the first call starts the server and waits for its imports (seconds), later ones take
        milliseconds."""
        if self.server is None:
            self._start_server()
        if self.channel is None:  # not serving (spelled out, as below: the type checker then narrows the channel)
            raise RuntimeError(f"cannot start {name}: the fork server has ended")
        send(self.channel, (name, target, args))
        while self.channel is not None:
            started = self._handle(receive(self.channel))
            if started is not None:
                self.processes[name] = started
                return started
        raise RuntimeError(f"cannot start {name}: the fork server has ended")

    def _start_server(self) -> None:
        launcher_end, server_end = socket.socketpair()  # both ends close on exec: only the one passed is inherited
        package_root = str(Path(__file__).resolve().parents[2])  # the server imports this very testbed
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self.server = subprocess.Popen(
            [sys.executable, "-m", "testbed.launch.fork_server", str(server_end.fileno()), *self.preload],
            pass_fds=[server_end.fileno()], stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": path},
            start_new_session=True)  # its own session and process group (id: its pid), inherited by every fork
        server_end.close()
        self.channel = launcher_end

    def poll(self, timeout: float | None = 0.0) -> None:
        """Read the server's reports of ended children: those already there, else wait up to `timeout` s for one."""
        while self.channel is not None and select.select([self.channel], [], [], timeout)[0]:
            self._handle(receive(self.channel))
            timeout = 0.0

    def _handle(self, message: tuple | None) -> Child | None:
        """Apply one report of the server; the child it started, for a "started" one."""
        if message is None:  # the server ended: it takes the group with it (see fork_server.py)
            self._close_channel()
            for child in self._running.values():
                child.exitcode = -signal.SIGKILL
            self._running.clear()
            return None
        if message[0] == "started":
            _, name, pid = message
            child = self._running[pid] = Child(self, name, pid)
            return child
        _, pid, code = message
        if (ended := self._running.pop(pid, None)) is not None:
            ended.exitcode = code
        return None

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def pids(self) -> dict[str, int]:
        """Every process started, by name, plus the fork server they were forked from."""
        pids = {name: p.pid for name, p in self.processes.items()}
        return {**pids, "forkserver": self.server.pid} if self.server else pids

    def reboot_crashed(self, reboot_s: float = 2.0) -> list[str]:
        """Names of processes that exited with an injected crash at least `reboot_s` ago (to start again)."""
        from testbed.emulation.availability import CRASH_EXIT_CODE

        self.poll()
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
        self.poll()
        return [name for name, p in self.processes.items() if p.exitcode is None]

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM the group, wait up to `grace_s` for every child to end, then SIGKILL the group (the fork
        server included) and reap the server. Safe to call again."""
        server = self.server
        if server is None:
            return
        _signal_group(server, signal.SIGTERM)  # the children end; the server ignores it and reports them
        deadline = time.monotonic() + grace_s
        while self._running and self.serving and (left := deadline - time.monotonic()) > 0:
            self.poll(left)
        _signal_group(server, signal.SIGKILL)
        # a killed child frees its memory before it ends (a torch process: up to a second on a busy host);
        # until then it still shows, and "no process survives stop()" must hold when stop() returns
        deadline = time.monotonic() + KILLED_END_S
        while group_members(server.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        server.wait()  # only now: while the server is unreaped, its pid (the group's id) cannot be reused
        self._close_channel()
        for child in self._running.values():
            child.exitcode = -signal.SIGKILL
        self._running.clear()
        self.server = None


def group_members(group_id: int) -> list[int]:
    """The processes of a process group that have not ended (zombies excluded), read from /proc; [] without it."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        fields = stat_fields(entry.name)
        if fields is not None and fields[STATE] not in ENDED and int(fields[GROUP]) == group_id:
            found.append(int(entry.name))
    return found


def _signal_group(server: subprocess.Popen, signum: int) -> None:
    # The server is our child and not yet reaped (wait() comes after), so its pid, the group's id, cannot
    # have been reused by another group.
    try:
        os.killpg(server.pid, signum)
    except ProcessLookupError:  # no process left in the group
        pass
