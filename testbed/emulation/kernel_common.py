"""What the kernel backend's cgroup and network parts share: owner-tagged names, liveness, commands.

Every kernel object the backend creates carries the pid of the process that created it (its
"owner", the launcher) in its name, so that leftovers of a crashed run can be told apart from the
objects of a run still going and removed (`kernel.cleanup_stale`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Sequence

from testbed.errors import UserError

OWNER_PREFIX = "testbed"  # cgroups and network namespaces are named testbed-<owner pid>-<...>
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
COMMAND_TIMEOUT_S = 10.0  # an ip/tc call answers in milliseconds; more means something is stuck


class KernelBackendError(UserError):
    """The kernel refused a kernel-backend setting; the message names the command or file and why."""


def check_name(what: str, value: str) -> None:
    """A client name or run tag must be usable as a directory and namespace name."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise UserError(f"{what}: {value!r} is not allowed (1-32 letters, digits, '_', '.' or '-', "
                        f"not starting with '.' or '-')")


def not_root_hint() -> str:
    """Appended to a permission problem so the user sees the likely cause."""
    return " (not root)" if os.geteuid() != 0 else ""


def run_command(argv: Sequence[str]) -> str:
    """Run one ip/tc command; its stdout, or KernelBackendError with the command and its first error line."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise KernelBackendError(f"{argv[0]} not found (install iproute2)") from None
    except subprocess.TimeoutExpired:
        raise KernelBackendError(f"`{shlex.join(argv)}` did not answer in {COMMAND_TIMEOUT_S:g} s") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        problem = lines[0] if lines else f"exit code {result.returncode}"
        raise KernelBackendError(f"`{shlex.join(argv)}` failed: {problem}")
    return result.stdout


def command_succeeds(argv: Sequence[str]) -> bool:
    """Whether a query command (e.g. `ip link show dev X`) exits 0."""
    try:
        return subprocess.run(list(argv), capture_output=True, timeout=COMMAND_TIMEOUT_S).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
