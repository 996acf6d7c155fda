"""`testbed calibrate`: how faithfully this host emulates each profile (requested versus achieved).

Compute: a fixed workload (forward + backward of a small MLP, the dense algebra training is made
of) runs in a fresh child process that applied the profile (affinity, threads, duty cycle at the
dilation this profile alone needs). Its "work" is the CPU seconds the same workload takes on one
unthrottled host thread, measured first; achieved speed = work / emulated seconds it took. What
matters for a federated round is the ratio between devices, so the table also gives the worst
pairwise ratio error.
Link: in a child process whose socket is shaped like the link, ping-pong small messages (round
trip) and move a payload of about one second's worth each way (bandwidth = bytes / (time - the
round trip of the same exchange)). Achieved figures are compared with the link model's expected
values (latency, bandwidth with loss's retransmissions included; see link.py), which is what a
run imposes.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np

from testbed.config.schema import EmulationSpec, LinkSpec, Profile
from testbed.emulation.dilation import choose_dilation, demand_cores

WORK_STEPS = 48  # MLP steps per measurement: ~1 s of one host core


def workload(steps: int = WORK_STEPS, after_step=None) -> float:
    """Run the fixed workload; returns the CPU seconds it took (process clock, all threads)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    layers = [torch.randn(512, 512, generator=generator, requires_grad=True) for _ in range(4)]
    batch = torch.randn(256, 512, generator=generator)
    started = time.process_time()
    for _ in range(steps):
        hidden = batch
        for weight in layers:
            hidden = torch.relu(hidden @ weight)
        hidden.square().mean().backward()
        if after_step is not None:
            after_step()
    return time.process_time() - started


def _compute_child(profile: Profile, dilation: float, slot: int, queue, start=None, kernel: bool = False) -> None:
    """The workload under `profile`; with `start` (a multiprocessing Barrier) all children begin together.

    `kernel`: a cgroup CPU quota paces this process (the launcher put it there before `start`), so the
    duty cycle only measures.
    """
    from testbed.emulation.clock import RealClock
    from testbed.emulation.device import apply_cpu
    from testbed.emulation.throttle import ComputeThrottle

    cpu = apply_cpu(profile, slot)
    workload(2)  # warm-up: first-call allocations are not the device's speed
    if start is not None:
        start.wait()
    throttle = ComputeThrottle(demand_cores(profile), RealClock(dilation), paced=not kernel)
    throttle.start()
    workload(WORK_STEPS, after_step=throttle.step)
    report = throttle.finish()
    queue.put({"cpus": list(cpu.cpus), "threads": cpu.threads, "cpu_s": report.cpu_s, "wall_s": report.wall_s})


def _reference_child(queue) -> None:
    import torch

    torch.set_num_threads(1)
    workload(2)
    queue.put(workload())


def _in_child(target, *args, timeout_s: float = 600.0):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as in a run (see launch/processes.py)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue), daemon=True)
    process.start()
    try:
        return queue.get(timeout=timeout_s)
    finally:
        process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join()


@dataclass(frozen=True)
class ComputeResult:
    profile: str
    requested: float  # host cores the device is worth (speed x threads)
    achieved: float  # work / emulated seconds
    dilation: float
    cpus: int
    threads: int

    @property
    def error(self) -> float:
        return self.achieved / self.requested - 1.0


def _in_cgroup(profile: Profile, dilation: float) -> dict:
    """The workload in a child placed in a cgroup whose CPU quota is the profile's speed (kernel backend)."""
    from testbed.emulation.kernel_cgroup import ClientCgroup

    context = multiprocessing.get_context("spawn")
    queue, start = context.Queue(), context.Barrier(2)
    cgroup = ClientCgroup("calibrate", demand_cores(profile) / dilation, None, run_tag="calibrate")
    cgroup.create()
    process = context.Process(target=_compute_child, args=(profile, dilation, 0, queue, start, True), daemon=True)
    process.start()
    try:
        assert process.pid is not None  # start() set it
        cgroup.add(process.pid)
        start.wait(timeout=300)
        return queue.get(timeout=600)
    finally:
        process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join()
        cgroup.remove()


def calibrate_compute(profiles: list[Profile], emulation: EmulationSpec, repeats: int = 3,
                      kernel: bool = False) -> list[ComputeResult]:
    """Each repeat measures the reference and then the profile, back to back, so that a change in the
    host's load between profiles affects both sides of the ratio; the median ratio counts.
    `kernel`: pace with a cgroup CPU quota instead of the duty cycle."""
    results = []
    for profile in profiles:
        dilation = choose_dilation(emulation, [profile]).factor  # alone on the host
        speeds: list[float] = []
        run: dict = {}  # the last repeat's measurement
        for _ in range(repeats):
            work_s = _in_child(_reference_child)
            run = _in_cgroup(profile, dilation) if kernel else _in_child(_compute_child, profile, dilation, 0)
            speeds.append(work_s / (run["wall_s"] / dilation))
        results.append(ComputeResult(profile.name, demand_cores(profile), statistics.median(speeds), dilation,
                                     len(run["cpus"]), run["threads"]))
    return results


def worst_ratio_error(results: list[ComputeResult]) -> float:
    """Largest |achieved ratio / requested ratio - 1| over all pairs of profiles."""
    worst = 0.0
    for a in results:
        for b in results:
            if a is not b:
                worst = max(worst, abs((a.achieved / b.achieved) / (a.requested / b.requested) - 1.0))
    return worst


# ---------------------------------------------------------------------------------------- links
def _link_child(link: LinkSpec, address: str, pings: int, down_bytes: int, up_bytes: int, queue) -> None:
    import zmq

    from testbed.emulation.clock import RealClock
    from testbed.emulation.link import LinkModel, LinkShaper
    from testbed.transport.endpoint import Dealer
    from testbed.transport.messages import Message

    context = zmq.Context()
    dealer = Dealer(context, address, "cal", max_bytes=max(down_bytes, up_bytes) + (1 << 20))
    dealer.shaper = LinkShaper(LinkModel(link, seed=1), RealClock())

    def exchange(send_bytes: int, want_bytes: int) -> float:
        """Send `send_bytes`, get `want_bytes` back (a FETCH whose "depth" carries the byte count)."""
        payload = {"x": np.zeros(send_bytes // 4, np.float32)} if send_bytes else {}
        started = time.perf_counter()
        dealer.send(Message("FETCH", "cal", 0, {"depth": want_bytes}, payload), wait_s=30.0)
        dealer.recv(120.0)
        return time.perf_counter() - started

    rtts = [exchange(0, 0) for _ in range(pings)]
    down = [exchange(0, down_bytes) for _ in range(3)]
    up = [exchange(up_bytes, 0) for _ in range(3)]
    dealer.send(Message("BYE", "cal", 0, {"reason": "done"}), shaped=False)
    dealer.close()
    context.term()
    queue.put({"rtt": rtts, "down": down, "up": up})


@dataclass(frozen=True)
class LinkResult:
    link: str
    rtt_ms: tuple[float, float]  # (expected, achieved median)
    down_mbps: tuple[float, float]  # (expected with loss, achieved)
    up_mbps: tuple[float, float]


def calibrate_link(link: LinkSpec, pings: int = 15) -> LinkResult:
    import zmq

    from testbed.emulation.link import LinkModel
    from testbed.transport.endpoint import Router
    from testbed.transport.messages import Message

    model = LinkModel(link, seed=0)
    down_bytes = max(1 << 16, int(link.downlink_mbps * 1e6 / 8))  # about one second's worth
    up_bytes = max(1 << 16, int(link.uplink_mbps * 1e6 / 8))
    context = zmq.Context()
    router = Router(context, "tcp://127.0.0.1:*", max_bytes=max(down_bytes, up_bytes) + (1 << 20))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_link_child, args=(link, router.address, pings, down_bytes, up_bytes, queue),
                        daemon=True)
    child.start()
    try:
        while True:  # serve: answer each request with the number of bytes it asks for
            received = router.poll(180.0)
            if received is None or received.message is None or received.message.type == "BYE":
                break
            wanted = int(received.message.body["depth"])
            tensors = {"x": np.zeros(wanted // 4, np.float32)} if wanted else {}
            router.send(received.identity, Message("MODEL", "cal", 0, {"depth": 0}, tensors))
        measured = queue.get(timeout=30.0)
    finally:
        child.join(5.0)
        if child.is_alive():
            child.kill()
            child.join()
        router.close()
        context.term()
    rtt = statistics.median(measured["rtt"])
    expected_rtt = link.latency_ms / 1000.0  # an empty message's serialisation time is negligible

    def rate(times: list[float], nbytes: int, direction: str) -> tuple[float, float]:
        expected_s = model.expected_s(nbytes, direction) - link.latency_ms / 2000.0
        achieved_s = statistics.median(times) - rtt
        return 8 * nbytes / expected_s / 1e6, 8 * nbytes / achieved_s / 1e6

    return LinkResult(link.name, (expected_rtt * 1000, rtt * 1000), rate(measured["down"], down_bytes, "down"),
                      rate(measured["up"], up_bytes, "up"))
