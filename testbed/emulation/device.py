"""Apply a profile's CPU side to this process: affinity (`cores`) and intra-op threads (`threads`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from testbed.config.schema import Profile


@dataclass(frozen=True)
class AppliedCpu:
    cpus: tuple[int, ...]  # host CPUs this process may run on
    threads: int  # torch intra-op threads

    def to_event(self) -> dict:
        return {"cpus": list(self.cpus), "threads": self.threads}


def pick_cpus(wanted: int, slot: int, available: list[int]) -> tuple[int, ...]:
    """`wanted` host CPUs, rotated by `slot` so that clients pinned to fewer CPUs than the host has spread out."""
    if wanted >= len(available):
        return tuple(available)
    start = (slot * wanted) % len(available)
    return tuple(sorted(available[(start + i) % len(available)] for i in range(wanted)))


def apply_cpu(profile: Profile, slot: int) -> AppliedCpu:
    """Pin to min(cores, host CPUs) CPUs and run min(threads, those CPUs) intra-op threads.

    A device with more cores than the host gets every host CPU; its extra speed is then the duty
    cycle's and the dilation's business (see dilation.py), not more threads than CPUs to share.
    """
    available = sorted(os.sched_getaffinity(0))
    cpus = pick_cpus(profile.cores, slot, available)
    os.sched_setaffinity(0, cpus)
    threads = min(profile.threads, len(cpus))
    torch.set_num_threads(threads)
    return AppliedCpu(cpus, threads)
