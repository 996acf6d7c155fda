"""A client process: join, become the device of its profile, then every round choose a depth, fetch
layers <= depth, train at the device's pace, upload.

All durations it reports are emulated seconds (wall seconds / dilation, see emulation/dilation.py).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import zmq

from testbed.client.heartbeat import Heartbeat
from testbed.client.policies import DeviceModel, make_policy
from testbed.emulation.availability import CRASH_EXIT_CODE, DeviceSchedule
from testbed.emulation.device import apply_cpu
from testbed.emulation.dilation import demand_cores
from testbed.emulation.injection import InjectedState, control_path
from testbed.emulation.link import LinkModel, LinkShaper
from testbed.emulation.memory import OOM_EXIT_CODE, MemoryBudget, OutOfMemory, release_free_memory
from testbed.emulation.throttle import ComputeThrottle
from testbed.errors import UserError
from testbed.model.early_exit import exit_depth
from testbed.transport.endpoint import Dealer
from testbed.transport.messages import Message, MessageRejected

log = logging.getLogger("testbed.client")

MAX_MESSAGE_BYTES = 2 << 30  # 2 GiB: a wav2vec2-large state fits
JOIN_RETRY_S = 2.0  # seconds between JOIN attempts while the aggregator is not up yet


class Stop(Exception):
    """The aggregator said BYE, or went silent for too long."""


class JoinFailed(UserError):
    """No WELCOME within the join timeout, or the aggregator refused the JOIN: one line says which and why."""


class ClientWorker:
    def __init__(self, connect: str, client_id: str, *, curve_dir: Path | None = None,
                 join_timeout_s: float = 120.0, kernel_cpu: bool = False, run_dir: Path | None = None,
                 token: str | None = None):
        self.client_id, self.join_timeout_s = client_id, join_timeout_s
        self.token = token  # this process's proof of identity, from `testbed run` (None: CURVE or none needed)
        self.kernel_cpu = kernel_cpu  # a cgroup CPU quota paces this process: measure, do not sleep
        self.run_dir = run_dir  # where stress tests inject changes (control/<id>.json); None = never
        self.context = zmq.Context()
        self.dealer = Dealer(self.context, connect, client_id, max_bytes=MAX_MESSAGE_BYTES, curve_dir=curve_dir)
        self.heartbeat: Heartbeat | None = None  # started once joined
        self.connect, self.curve_dir = connect, curve_dir
        self.session = None  # LocalSession, built from WELCOME
        self.policy = None
        self.idle_timeout_s = join_timeout_s  # until WELCOME says the round deadline
        self.dilation = 1.0
        self.booted = time.monotonic()

    def run(self) -> int:
        try:
            self._join()
            while True:
                message = self._receive(self.idle_timeout_s)
                if message.type == "ROUND":
                    self._round(message)
        except Stop as stop:
            log.info("%s: stopping (%s)", self.client_id, stop)
            return 0
        except OutOfMemory as error:  # the emulated device's OOM killer: say so, then go
            log.error("%s: %s", self.client_id, error)
            self.dealer.send(Message("BYE", self.client_id, 0, {"reason": f"out of memory: {error}"}), shaped=False)
            return OOM_EXIT_CODE
        finally:
            if self.heartbeat is not None:
                self.heartbeat.stop()
            self.dealer.close()
            self.context.term()

    # ------------------------------------------------------------------ joining
    def _join_body(self) -> dict:
        """A JOIN's body: this process, and its proof of identity when it has one (the token from `testbed run`)."""
        body = {"profile": "", "task": "", "pid": os.getpid()}  # profile and task come from the scenario's fleet
        return body if self.token is None else {**body, "token": self.token}

    def _join(self) -> None:
        """JOIN until WELCOME arrives, then become the device it describes; JoinFailed at the join timeout."""
        deadline = time.monotonic() + self.join_timeout_s
        self.dealer.hello = Message("JOIN", self.client_id, 0, self._join_body())  # sent again on a new connection
        while (left := deadline - time.monotonic()) > 0:
            # never block in send: with a refused handshake the socket has no connection to queue on
            if not self.dealer.writable(min(JOIN_RETRY_S, left)):
                continue
            self.dealer.send(self.dealer.hello)
            try:
                welcome = self._receive(min(JOIN_RETRY_S, max(0.0, deadline - time.monotonic())), wanted="WELCOME")
            except TimeoutError:
                continue
            except Stop as refused:  # a BYE before any WELCOME: the JOIN was refused, and we are told why
                raise JoinFailed(f"the aggregator at {self.connect} did not let {self.client_id} join: "
                                 f"{str(refused).removeprefix('JOIN refused: ')}") from None
            self.heartbeat = Heartbeat(self.context, self.connect, self.client_id, self.curve_dir, self._join_body())
            self.heartbeat.state = "loading"
            self._become_device(welcome)
            self.dealer.send(Message("HEARTBEAT", self.client_id, 0, {"state": "ready", "device": self.device_info}),
                             shaped=False)
            self.heartbeat.state = "idle"
            return
        raise JoinFailed(self._join_failure())

    def _join_failure(self) -> str:
        """Why no WELCOME came, as far as this side can tell (the socket monitor saw the handshakes)."""
        self.dealer.watch()
        waited = f"within {self.join_timeout_s:g} s"
        if self.dealer.key_refused:
            return (f"the aggregator at {self.connect} did not accept this client's CURVE key {waited} "
                    f"(handshake failed: {self.dealer.failure})")
        if self.dealer.failure is not None:
            return (f"no handshake with the aggregator at {self.connect} {waited} "
                    f"(handshake failed: {self.dealer.failure})")
        if not self.dealer.connected:
            return f"no aggregator answered at {self.connect} {waited}"
        return (f"the aggregator at {self.connect} did not welcome {self.client_id} {waited} "
                f"(its events tell whether it refused the JOIN)")

    def _become_device(self, welcome: Message) -> None:
        """Apply the profile (CPU first, before any work), load data and model, measure what depths cost."""
        from testbed.client.local import LocalSession
        from testbed.config.convert import from_data
        from testbed.config.loader import ClientSpec

        run = welcome.body["run"]
        spec = from_data(ClientSpec, run["client"], source="aggregator WELCOME")
        profile = spec.profile
        cpu = apply_cpu(profile, run.get("slot", 0))
        self.dilation = float(run.get("dilation", 1.0))
        self.session = LocalSession(run, welcome.tensors)
        scenario = self.session.scenario
        costs = self.session.measure_costs()
        # in a large fleet of which a few train per round, an idle client holds no data and no model
        self.lean = scenario.strategy.clients_per_round is not None
        if self.lean:
            self.session.release()
        release_free_memory()
        link = LinkModel(spec.link, self.session.seed)
        self.dealer.shaper = LinkShaper(link, self.dilation)  # links are shaped here with either backend
        self.injected = InjectedState(control_path(self.run_dir, self.client_id) if self.run_dir else None,
                                      spec.link)
        self.throughput = self.profile_throughput = demand_cores(profile)
        self.memory = MemoryBudget(profile.memory_mb, {d: c.peak_mb for d, c in costs.items()})
        device = DeviceModel(self.session.exits, costs, self.throughput, link, self.memory,
                             scenario.training.local_steps)
        preferred = scenario.exit_policy.preferred_exits.get(spec.task)  # an exit index, "auto" or None
        preferred_depth = exit_depth(self.session.exits, preferred) if isinstance(preferred, int) else None
        self.policy = make_policy(scenario.exit_policy.name, device, profile.max_exit, preferred_depth,
                                  scenario.exit_policy.ema)
        self.schedule = DeviceSchedule(profile.availability, profile.failure, self.session.seed)
        self.idle_timeout_s = max(60.0, 10 * scenario.deadline_s * self.dilation)
        self.device_info = {**cpu.to_event(), "throughput_cores": round(self.throughput, 4),
                            "costs": {str(d): {"step_cpu_s": round(c.step_cpu_s, 4), "peak_mb": round(c.peak_mb, 1),
                                          "state_bytes": c.state_bytes} for d, c in costs.items()}}

    # ------------------------------------------------------------------ messages
    def _receive(self, timeout_s: float, wanted: str | None = None, round_index: int | None = None) -> Message:
        """Next message (of type `wanted` for `round_index`, others are skipped); BYE raises Stop."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                message, _ = self.dealer.recv(left)
            except MessageRejected as error:  # a malformed message from the aggregator: drop it, go on
                log.warning("%s: dropped a message from the aggregator: %s", self.client_id, error)
                continue
            if message is None:
                break
            if message.type == "BYE":
                raise Stop(message.body["reason"])
            if (wanted is None or message.type == wanted) and (round_index is None or message.round == round_index):
                return message
        if wanted is None:
            raise Stop(f"the aggregator was silent for {timeout_s:.0f} s")
        raise TimeoutError(wanted)

    def _emulated(self, wall_s: float) -> float:
        return wall_s / self.dilation

    # ------------------------------------------------------------------ one round
    def _round(self, start: Message) -> None:
        """One round: availability -> depth -> FETCH -> MODEL -> train -> UPDATE, timing each phase."""
        received = time.monotonic()
        round_index, self.heartbeat.round = start.round, start.round
        self.dilation = float(start.body.get("dilation", self.dilation))  # the aggregator may raise it
        if self.dealer.shaper is not None:
            self.dealer.shaper.dilation = self.dilation
        self._apply_injection()
        # link draws (jitter, loss) from this round's own seed, as the batch order: a client restarted by a resume
        # draws in round r what the uninterrupted run's client drew there
        self.dealer.shaper.model = LinkModel(self.dealer.shaper.model.link, [self.session.seed, round_index])
        if not self.schedule.online(round_index, self._emulated(received - self.booted)):
            self.heartbeat.state = "offline"
            self.dealer.send(Message("SKIP", self.client_id, round_index, {"reason": "offline"}), shaped=False)
            return
        if self.session.model is None:  # lean: waking up takes host time that is no phase of the device
            self.session.ensure_loaded()
            received = time.monotonic()
        deadline_s = start.body["deadline_s"]
        preferred = start.body.get("preferred", {}).get(self.session.task)
        depth = start.body["depth"] or self.policy.choose(deadline_s, preferred)  # the strategy may impose one
        self.heartbeat.state = "downloading"
        self.dealer.send(Message("FETCH", self.client_id, round_index, {"depth": depth}))
        try:
            model = self._receive(deadline_s * self.dilation, wanted="MODEL", round_index=round_index)
        except TimeoutError:
            self.heartbeat.state = "idle"
            return  # the round closed before our layers came
        download_s = self._emulated(time.monotonic() - received)
        self.heartbeat.state = "training"
        steps = self.session.scenario.training.local_steps
        fault = self.schedule.fault(round_index)
        fault_step = self.schedule.fault_step(round_index, steps)

        def progress(step: int, loss: float) -> None:
            self.dealer.send(Message("PROGRESS", self.client_id, round_index,
                                     {"step": step + 1, "steps": steps, "layer": depth}), shaped=False)
            if fault is not None and step == fault_step:
                self._suffer(fault)
            if self._apply_injection():
                throttle.retune(self.throughput)

        throttle = ComputeThrottle(self.throughput, self.dilation,
                                   sleep=(lambda seconds: None) if self.kernel_cpu else time.sleep)
        self.session.load(model.tensors)
        # a stress test's lying client uploads a scaled step: it needs what it fetched (copies)
        fetched = {k: v.copy() for k, v in model.tensors.items()} if self.injected.lies_about_steps else None
        del model  # the received frames (~27 MB for the tiny backbone) are not needed while training
        result = self.session.train_round(round_index, depth, progress, throttle, self.memory)
        self.memory.observe(depth, result.peak_mb)
        self.heartbeat.state = "uploading"
        compute_s = self._emulated(result.throttle.wall_s)
        timings = {"download_s": download_s, "compute_s": compute_s,
                   # since ROUND arrived, before the upload: lets the aggregator derive the upload time
                   "elapsed_s": self._emulated(time.monotonic() - received),
                   "cpu_s": result.throttle.cpu_s, "overshoot": result.throttle.overshoot}
        body = {"depth": depth, "samples": self.injected.samples or result.samples, "loss": result.loss,
                "timings": timings, "peak_mb": result.peak_mb}
        tensors = self.injected.tampered(result.tensors, fetched)  # as uploaded: a stress test may corrupt it
        del fetched
        sender = self.injected.impersonate or self.client_id  # a stress test's impostor claims another's name
        if sender != self.client_id:
            self.dealer.send(Message("JOIN", sender, 0, self._join_body()), shaped=False)
        uploaded = time.monotonic()
        # wait until libzmq is done with the buffers: they may be the model's own parameters
        self.dealer.send(Message("UPDATE", sender, round_index, body, tensors), wait_s=60.0)
        self.policy.observe(depth, {**timings, "upload_s": self._emulated(time.monotonic() - uploaded)})
        del result
        if self.lean:
            self.session.release()
        release_free_memory()
        self.heartbeat.state = "idle"

    def _apply_injection(self) -> bool:
        """Take up a changed control file (slowdown, link, lies); True when something changed."""
        if not self.injected.changed():
            return False
        self.throughput = self.profile_throughput / self.injected.slowdown
        self.dealer.shaper.model = LinkModel(self.injected.link, self.session.seed)
        return True

    def _suffer(self, fault: str) -> None:
        """An injected fault, mid-training: a crash (abrupt exit, no goodbye) or a freeze (total silence)."""
        log.warning("%s: injected %s", self.client_id, fault)
        if fault == "crash":
            os._exit(CRASH_EXIT_CODE)  # no cleanup, no BYE: as a power loss would leave things
        self.heartbeat.pause()
        time.sleep(self.session.spec.profile.failure.freeze_s * self.dilation)
        self.heartbeat.resume()


def run_client(connect: str, client_id: str, **options) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return ClientWorker(connect, client_id, **options).run()
