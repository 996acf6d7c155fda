"""Kernel backend entry points: what this host supports, cleanup after a crash, the record of what was applied."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from testbed.emulation.kernel_cgroup import (
    ClientCgroup,
    cgroup_problems,
    current_layout,
    remove_stale_cgroups,
)
from testbed.emulation.kernel_net import ClientNetwork, network_problem, remove_stale_networks


@dataclass(frozen=True)
class KernelSupport:
    """Which kernel mechanisms this host lets the launcher use, and a one-line reason per missing one."""

    cpu: bool  # cgroup CPU quota
    memory: bool  # cgroup memory limit
    network: bool  # per-client network namespace, veth pair and tc netem
    cgroup_version: int | None  # 1 or 2; None: no cgroup filesystem
    reasons: tuple[str, ...]  # "cpu: ...", "memory: ...", "network: ..." for each one missing

    def describe(self) -> str:
        """One line for the launcher's log, e.g. the fallback message."""
        flags = ", ".join(f"{what} {'yes' if ok else 'no'}" for what, ok in
                          (("cpu quota", self.cpu), ("memory limit", self.memory), ("network shaping", self.network)))
        version = f"cgroup v{self.cgroup_version}" if self.cgroup_version else "no cgroups"
        return f"kernel backend: {flags} ({version})" + "".join(f"; {reason}" for reason in self.reasons)


def probe_kernel_backend() -> KernelSupport:
    """Try each mechanism on a throw-away cgroup and namespace (removed again); takes milliseconds."""
    layout = current_layout()
    problems = cgroup_problems(layout)
    network = network_problem()
    reasons = tuple(f"{controller}: {problem}" for controller, problem in problems.items())
    return KernelSupport(cpu="cpu" not in problems, memory="memory" not in problems, network=network is None,
                         cgroup_version=layout.version,
                         reasons=reasons + ((f"network: {network}",) if network else ()))


def cleanup_stale() -> list[str]:
    """Remove namespaces, veth pairs and cgroups left by launchers that are no longer alive; what went.

    Call at launcher start and after a crash. Objects of live launchers (this one included) stay.
    """
    return remove_stale_networks() + [f"cgroup {path}" for path in remove_stale_cgroups()]


def shape_commands(cgroup: ClientCgroup | None, network: ClientNetwork | None) -> list[str]:
    """The settings applied to one client as shell lines, for the run directory's record.

    Cgroup limits are the values create() wrote (call it after create()); the network lines are
    the ip/tc commands create() runs.
    """
    settings = cgroup.settings() if cgroup else {}
    lines = [f"echo {shlex.quote(value)} > {shlex.quote(path)}" for path, value in settings.items()]
    return lines + [shlex.join(command) for command in (network.commands() if network else [])]
