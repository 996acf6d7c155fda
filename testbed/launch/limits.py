"""The kernel backend seen from the launcher: one cgroup per client (CPU quota, memory limit).

Chosen by `emulation.backend` (`kernel`, or `auto` = kernel where this host permits it). What the
host does not permit falls back to the user backend with a one-line message, per mechanism:
without a CPU quota the client duty-cycles itself; without tc netem (per-client network
namespaces) the transport shapes the link. The quota is speed x threads / dilation cores, so the
kernel enforces the same pace the duty cycle would. Links are shaped in the transport with either
backend: per-client network namespaces with tc netem (emulation/kernel_net.py) are not wired into
runs yet.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from testbed.config.loader import ClientSpec
from testbed.config.schema import Scenario
from testbed.emulation.dilation import demand_cores

log = logging.getLogger("testbed.launch")


class KernelLimits:
    """Cgroups of one run's clients; `close()` removes them (also after a crash: see cleanup_stale)."""

    def __init__(self, scenario: Scenario, clients: list[ClientSpec], dilation: float, run_dir: Path,
                 say=print):
        from testbed.emulation.kernel import cleanup_stale, probe_kernel_backend

        self.cgroups = {}
        self.notes: list[str] = []
        backend = scenario.emulation.backend
        if backend == "user":
            return
        for leftover in cleanup_stale():
            log.info("removed a leftover of a crashed run: %s", leftover)
        support = probe_kernel_backend()
        self.cpu, self.memory = support.cpu, support.memory
        if scenario.emulation.clock == "events" and self.cpu:
            # a CPU quota paces real time; under the event clock compute is billed, not waited for
            self.cpu = False
            self.notes.append("clock: events: the kernel backend applies the memory limit alone "
                              "(a CPU quota only means something in real time)")
        self.notes.append(f"{support.describe()}; links shaped in the transport"
                          + ("" if support.cpu and support.memory else "; the user backend does the rest"))
        if self.cpu or self.memory:
            from testbed.emulation.kernel_cgroup import ClientCgroup

            tag = run_dir.name[-32:].replace(" ", "_")
            for spec in clients:
                cgroup = ClientCgroup(spec.client_id, demand_cores(spec.profile) / dilation if self.cpu else None,
                                      spec.profile.memory_mb if support.memory else None, run_tag=tag)
                cgroup.create()
                self.cgroups[spec.client_id] = cgroup
        for note in self.notes:
            say(note)
        self._record(run_dir, support)

    @property
    def cpu_quota(self) -> bool:
        """Whether the kernel paces the clients' compute (they must then not duty-cycle as well)."""
        return bool(self.cgroups) and self.cpu

    def attach(self, client_id: str, pid: int) -> None:
        if client_id in self.cgroups:
            self.cgroups[client_id].add(pid)

    def oom_killed(self, client_id: str) -> bool:
        return client_id in self.cgroups and self.cgroups[client_id].oom_killed()

    def _record(self, run_dir: Path, support) -> None:
        from testbed.emulation.kernel import shape_commands

        record = {"support": support.describe(), "notes": self.notes,
                  "clients": {cid: shape_commands(cgroup, None) for cid, cgroup in self.cgroups.items()}}
        (run_dir / "kernel_backend.json").write_text(json.dumps(record, indent=1))

    def close(self) -> None:
        for cgroup in self.cgroups.values():
            cgroup.remove()
