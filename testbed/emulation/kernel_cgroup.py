"""Kernel backend, compute and memory: a cgroup per client with a CPU quota and a memory limit (v1 or v2).

Layout: a run group `testbed-<launcher pid>-<run tag>` holds one group per client. With cgroup v1
the run group sits in the launcher's own cgroup of each hierarchy (cpu, memory), so limits already
imposed on the launcher still apply to its clients. With cgroup v2 it sits in the nearest cgroup,
from the launcher's own upwards, whose cgroup.subtree_control enables the controllers (v2 forbids
enabling controllers below a cgroup that holds processes, so the launcher's own cgroup rarely can).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from testbed.emulation.kernel_common import (
    OWNER_PREFIX,
    KernelBackendError,
    check_name,
    not_root_hint,
)
from testbed.errors import UserError
from testbed.procfs import running

log = logging.getLogger("testbed.emulation")

CONTROLLERS = ("cpu", "memory")
CPU_PERIOD_US = 100_000  # CFS period, microseconds; the quota is cores x period
MIN_CPU_CORES = 0.01  # the kernel's smallest quota is 1 ms per 100 ms period
MIB = 1024 * 1024
PROBE_MEMORY_MB = 64  # limit written to the probe group (which holds no process)
RMDIR_PATIENCE_S = 1.0  # a task that just left may keep a cgroup busy for a moment
RUN_GROUP_NAME = re.compile(rf"{OWNER_PREFIX}-(\d+)-.+")


@dataclass(frozen=True)
class CgroupMount:
    """One mounted cgroup hierarchy, as /proc/self/mountinfo describes it."""

    mount_point: Path
    root: str  # the part of the hierarchy this mount shows ("/" unless a sub-tree is bind-mounted)
    version: int  # 1 or 2
    controllers: frozenset[str]  # v1: cpu and/or memory when attached here; v2: empty (see cgroup.controllers)


@dataclass(frozen=True)
class CgroupLayout:
    """Where run groups go on this host, per controller, and why a controller cannot be used."""

    version: int | None  # cgroup version in use for cpu/memory; None: no cgroup filesystem found
    bases: Mapping[str, Path]  # controller -> directory that holds the run groups
    homes: Mapping[str, Path]  # controller -> this process's own cgroup (tasks go back there)
    problems: Mapping[str, str]  # controller -> one-line reason it cannot be used


def _unescape(field: str) -> str:
    """mountinfo writes spaces and the like as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), field)


def parse_mounts(mountinfo: str) -> list[CgroupMount]:
    """The cgroup mounts listed in a /proc/<pid>/mountinfo text."""
    mounts = []
    for line in mountinfo.splitlines():
        if " - " not in line:
            continue
        before, after = line.split(" - ", 1)
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        version = 2 if tail[0] == "cgroup2" else 1
        controllers = frozenset(tail[2].split(",")) & set(CONTROLLERS) if version == 1 else frozenset()
        mounts.append(CgroupMount(Path(_unescape(fields[4])), _unescape(fields[3]), version, controllers))
    return mounts


def parse_membership(proc_cgroup: str) -> dict[str, str]:
    """Controller -> cgroup path from a /proc/<pid>/cgroup text; the v2 hierarchy is under ""."""
    membership = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                membership[controller] = parts[2]
    return membership


def _own_dir(mount: CgroupMount, path: str | None) -> Path:
    """The directory of cgroup `path` under `mount`; the mount point when the mount does not show it."""
    if path is None:
        return mount.mount_point
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return mount.mount_point
    return mount.mount_point / path[len(root):].lstrip("/")


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _v2_layout(mount: Path, home: Path) -> CgroupLayout:
    available = set(_words(mount / "cgroup.controllers"))
    chain = [home, *(parent for parent in home.parents if parent == mount or mount in parent.parents)]
    enabled = {d: set(_words(d / "cgroup.subtree_control")) & set(CONTROLLERS) for d in chain}
    wanted = set(CONTROLLERS) & available
    base = (next((d for d in chain if enabled[d] and enabled[d] >= wanted), None)
            or next((d for d in chain if enabled[d]), None))
    problems = {}
    for controller in CONTROLLERS:
        if controller not in available:
            listed = " ".join(sorted(available)) or "none"
            problems[controller] = f"no {controller} controller in cgroup v2 (available: {listed})"
        elif base is None or controller not in enabled[base]:
            problems[controller] = (f"no {controller} controller in cgroup v2 subtree_control of {home} or its "
                                    f"parents (enable it: echo +{controller} > <parent>/cgroup.subtree_control)")
    # without a base every controller has its problem: no bases then
    bases = {} if base is None else {controller: base for controller in CONTROLLERS if controller not in problems}
    return CgroupLayout(2, bases, {controller: home for controller in CONTROLLERS}, problems)


def discover_layout(mountinfo: str, proc_cgroup: str) -> CgroupLayout:
    """The layout from a process's mountinfo and cgroup texts (v1 wherever a v1 hierarchy has cpu or memory)."""
    mounts, membership = parse_mounts(mountinfo), parse_membership(proc_cgroup)
    v1 = {}
    for controller in CONTROLLERS:
        mount = next((m for m in mounts if m.version == 1 and controller in m.controllers), None)
        if mount is not None:
            v1[controller] = _own_dir(mount, membership.get(controller))
    if v1:
        problems = {c: f"no cgroup v1 hierarchy with the {c} controller is mounted" for c in CONTROLLERS if c not in v1}
        return CgroupLayout(1, v1, v1, problems)
    unified = next((m for m in mounts if m.version == 2), None)
    if unified is None:
        return CgroupLayout(None, {}, {}, {c: "no cgroup filesystem is mounted" for c in CONTROLLERS})
    return _v2_layout(unified.mount_point, _own_dir(unified, membership.get("")))


def current_layout() -> CgroupLayout:
    """The layout seen by this process."""
    return discover_layout(Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text())


def _write(path: Path, value: str) -> None:
    """One write() of `value`, as cgroup control files expect."""
    try:
        descriptor = os.open(path, os.O_WRONLY)
        try:
            os.write(descriptor, value.encode())
        finally:
            os.close(descriptor)
    except OSError as error:
        raise KernelBackendError(f"cannot write {value!r} to {path}: {error.strerror}") from None


def _make_dir(path: Path) -> None:
    try:
        path.mkdir()
    except FileExistsError:
        pass
    except OSError as error:
        raise KernelBackendError(f"cannot create {path}: {error.strerror}") from None


def _remove_if_empty(path: Path) -> None:
    """rmdir a run group, unless another client's group is still in it (or it is gone already)."""
    try:
        path.rmdir()
    except OSError as error:
        if error.errno not in (errno.EBUSY, errno.ENOTEMPTY, errno.ENOENT):
            raise KernelBackendError(f"cannot remove {path}: {error.strerror}") from None


def _evacuate_and_remove(directory: Path, home: Path) -> bool:
    """Move every task of `directory` to `home`, then rmdir it (retrying while the kernel still counts a leaver).

    False when the directory was gone already (another cleaner took it).
    """
    deadline = time.monotonic() + RMDIR_PATIENCE_S
    while True:
        for pid in _words(directory / "cgroup.procs"):
            try:
                _write(home / "cgroup.procs", pid)
            except KernelBackendError:
                if Path(f"/proc/{pid}").exists():  # it did not just exit: a real refusal
                    raise
        try:
            directory.rmdir()
            return True
        except FileNotFoundError:
            return False
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                raise KernelBackendError(f"cannot remove {directory}: {error.strerror}") from None
            time.sleep(0.01)


def _keyed(path: Path) -> dict[str, int]:
    """A `key value` per line control file (memory.events, memory.oom_control)."""
    words = _words(path)
    return {key: int(value) for key, value in zip(words[::2], words[1::2])}


def _oom_kills(directory: Path, version: int) -> int:
    if version == 2:
        return _keyed(directory / "memory.events").get("oom_kill", 0)
    oom_control = _keyed(directory / "memory.oom_control")
    if "oom_kill" in oom_control:
        return oom_control["oom_kill"]
    # Kernels before 4.13 count no kills: the limit having been hit is the closest sign.
    return int((_words(directory / "memory.failcnt") or ["0"])[0])


class ClientCgroup:
    """One client's cgroup: a CPU quota (`cpu_cores`, None: none) and a memory limit (`memory_mb`, None: none).

    Lifecycle: create() in the launcher, add(pid) of the client process (or the client adds
    os.getpid() before its heavy work), remove() when it is done; oom_killed() says whether the
    kernel killed a task of the group for going beyond memory_mb.
    """

    def __init__(self, name: str, cpu_cores: float | None, memory_mb: int | None, *, run_tag: str = "run",
                 layout: CgroupLayout | None = None):
        check_name("client name", name)
        check_name("run tag", run_tag)
        if cpu_cores is not None and (isinstance(cpu_cores, bool) or not isinstance(cpu_cores, (int, float))
                                      or not math.isfinite(cpu_cores) or cpu_cores < MIN_CPU_CORES):
            raise UserError(f"cpu_cores: {cpu_cores!r} is not allowed (a number >= {MIN_CPU_CORES}, or None)")
        if memory_mb is not None and (isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 1):
            raise UserError(f"memory_mb: {memory_mb!r} is not allowed (a whole number of MiB >= 1, or None)")
        self.name, self.cpu_cores, self.memory_mb, self.run_tag = name, cpu_cores, memory_mb, run_tag
        self.owner_pid = os.getpid()
        self.layout = layout or current_layout()
        self._applied: dict[str, str] = {}
        self._oom_seen = False  # kept so that oom_killed() still answers after remove()

    @property
    def controllers(self) -> tuple[str, ...]:
        """The controllers this client is limited by."""
        return tuple(c for c, limit in (("cpu", self.cpu_cores), ("memory", self.memory_mb)) if limit is not None)

    @property
    def run_group(self) -> str:
        return f"{OWNER_PREFIX}-{self.owner_pid}-{self.run_tag}"

    @property
    def directories(self) -> dict[str, Path]:
        """Controller -> this client's cgroup directory (one directory for both with cgroup v2)."""
        bases = self.layout.bases
        return {c: bases[c] / self.run_group / self.name for c in self.controllers if c in bases}

    def _grouped(self) -> dict[Path, list[str]]:
        """Directory -> the controllers it serves (v1 hierarchies may be co-mounted; v2 has one)."""
        grouped: dict[Path, list[str]] = {}
        for controller, directory in self.directories.items():
            grouped.setdefault(directory, []).append(controller)
        return grouped

    def _limits(self) -> dict[str, str]:
        """Control file -> value, in the order they must be written (the directories exist)."""
        limits, directories, v2 = {}, self.directories, self.layout.version == 2
        if self.cpu_cores is not None:
            cpu, quota = directories["cpu"], round(self.cpu_cores * CPU_PERIOD_US)  # microseconds per period
            if v2:
                limits[str(cpu / "cpu.max")] = f"{quota} {CPU_PERIOD_US}"
            else:
                limits[str(cpu / "cpu.cfs_period_us")] = str(CPU_PERIOD_US)
                limits[str(cpu / "cpu.cfs_quota_us")] = str(quota)
        if self.memory_mb is not None:
            memory, limit = directories["memory"], str(self.memory_mb * MIB)
            limits[str(memory / ("memory.max" if v2 else "memory.limit_in_bytes"))] = limit
            # No swap beyond the limit, as on a device: v2 swap.max 0, v1 memory+swap limit = memory limit.
            swap = memory / ("memory.swap.max" if v2 else "memory.memsw.limit_in_bytes")
            if swap.exists():
                limits[str(swap)] = "0" if v2 else limit
        return limits

    def create(self) -> None:
        """Make the run group (if needed) and this client's group, and write its limits."""
        unusable = [c for c in self.controllers if c not in self.layout.bases]
        if unusable:
            raise KernelBackendError("; ".join(f"client {self.name}: cannot limit {c}: {self.layout.problems[c]}"
                                               for c in unusable))
        grouped = self._grouped()
        for directory in grouped:
            if directory.exists():
                raise KernelBackendError(f"client {self.name}: cgroup {directory} exists already (a duplicate name?)")
        try:
            for directory, controllers in grouped.items():
                _make_dir(directory.parent)
                if self.layout.version == 2:  # let the run group hand the controllers to its client groups
                    for controller in controllers:
                        _write(directory.parent / "cgroup.subtree_control", f"+{controller}")
                _make_dir(directory)
            limits = self._limits()
            for path, value in limits.items():
                _write(Path(path), value)
            self._applied = limits
        except BaseException:
            self.remove()
            raise

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into this client's group."""
        for directory in self._grouped():
            _write(directory / "cgroup.procs", str(pid))

    def settings(self) -> dict[str, str]:
        """Control file -> value as create() wrote them, in order (empty before create())."""
        return dict(self._applied)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a task of this group for exceeding memory_mb (remembered past remove())."""
        # a layout without a version (no cgroup filesystem) has no bases, so no directory either
        directory, version = self.directories.get("memory"), self.layout.version
        if directory is not None and version is not None and directory.is_dir():
            self._oom_seen = self._oom_seen or _oom_kills(directory, version) > 0
        return self._oom_seen

    def remove(self) -> None:
        """Move tasks left back to the launcher's cgroup, delete this group and the run group once empty.

        Idempotent; the kernel's out-of-memory count is read first, so oom_killed() still answers.
        """
        self.oom_killed()
        for directory, controllers in self._grouped().items():
            if directory.is_dir():
                _evacuate_and_remove(directory, self.layout.homes[controllers[0]])
            _remove_if_empty(directory.parent)


def cgroup_problems(layout: CgroupLayout) -> dict[str, str]:
    """Controller -> why it cannot be used here, found by creating and removing a probe group per controller."""
    problems = dict(layout.problems)
    for controller in CONTROLLERS:
        if controller in problems:
            continue
        probe = ClientCgroup(f"probe-{controller}", cpu_cores=1.0 if controller == "cpu" else None,
                             memory_mb=PROBE_MEMORY_MB if controller == "memory" else None,
                             run_tag="probe", layout=layout)
        try:
            probe.create()
            probe.remove()
        except KernelBackendError as error:
            problems[controller] = f"{error}{not_root_hint()}"
    return problems


def remove_stale_cgroups(layout: CgroupLayout | None = None) -> list[str]:
    """Delete run groups (and their client groups) whose launcher is gone; the directories removed.

    Looks where this process would create run groups; tasks still inside are moved to this
    process's own cgroup first. A group that cannot be removed is logged and skipped.
    """
    layout = layout or current_layout()
    removed, seen = [], set()
    for controller, base in layout.bases.items():
        if base in seen or not base.is_dir():
            continue
        seen.add(base)
        for run_dir in sorted(base.iterdir()):
            match = RUN_GROUP_NAME.fullmatch(run_dir.name)
            if match is None or not run_dir.is_dir() or running(int(match[1])):
                continue
            try:
                for client_dir in sorted(d for d in run_dir.iterdir() if d.is_dir()):
                    if _evacuate_and_remove(client_dir, layout.homes[controller]):
                        removed.append(str(client_dir))
                run_dir.rmdir()
                removed.append(str(run_dir))
            except FileNotFoundError:  # another cleaner took it meanwhile
                pass
            except (KernelBackendError, OSError) as error:
                log.warning("stale cgroup %s left in place: %s", run_dir, error)
    return removed
