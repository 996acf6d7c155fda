"""A client process: join, become the device of its profile, then every round choose a depth, fetch
layers <= depth, train at the device's pace, upload.

All durations it reports are emulated seconds, read on its clock (`emulation/clock.py`): every
passage of the device's time (compute pacing, link transfers, a freeze) goes through that clock.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from testbed.client.heartbeat import Heartbeat
from testbed.client.timing import RoundTiming
from testbed.emulation.availability import CRASH_EXIT_CODE
from testbed.emulation.clock import Clock, EventClock, RealClock
from testbed.emulation.injection import control_path
from testbed.emulation.link import LinkModel, LinkShaper
from testbed.emulation.memory import OOM_EXIT_CODE, OutOfMemory, release_free_memory
from testbed.emulation.throttle import ComputeThrottle
from testbed.errors import UserError
from testbed.transport.endpoint import Dealer
from testbed.transport.messages import Message, MessageRejected

if TYPE_CHECKING:
    from testbed.client.device import Device
    from testbed.client.local import RoundResult

log = logging.getLogger("testbed.client")

MAX_MESSAGE_BYTES = 2 << 30  # 2 GiB: a wav2vec2-large state fits
JOIN_RETRY_S = 2.0  # seconds between JOIN attempts while the aggregator is not up yet


class Stop(Exception):
    """The aggregator said BYE, or went silent for too long."""


class RoundClosed(Exception):
    """A later ROUND came while this device still worked on an earlier one: that round has closed, and whatever
    it would still send is a late update the aggregator drops. Raised after `steps_done` local steps."""

    def __init__(self, newer: Message, steps_done: int = 0):
        super().__init__(f"round {newer.round} was announced")
        self.newer, self.steps_done = newer, steps_done


class JoinFailed(UserError):
    """No WELCOME within the join timeout, or the aggregator refused the JOIN: one line says which and why."""


class ClientWorker:
    def __init__(self, connect: str, client_id: str, *, curve_dir: Path | None = None,
                 join_timeout_s: float = 120.0, kernel_cpu: bool = False, run_dir: Path | None = None,
                 token: str | None = None):
        self.client_id, self.join_timeout_s = client_id, join_timeout_s
        self.token = token  # this process's proof of identity, from `testbed run` (None: CURVE or none needed)
        self.kernel_cpu = kernel_cpu  # a cgroup CPU quota paces this process: measure, do not sleep
        # where stress tests inject changes (RUN_DIR/control/<id>.json); None = never
        self.control_file = control_path(run_dir, client_id) if run_dir else None
        self.run_dir = run_dir  # where compute slots are shared with the run's other clients (event clock)
        self.context = zmq.Context()
        self.dealer = Dealer(self.context, connect, client_id, max_bytes=MAX_MESSAGE_BYTES, curve_dir=curve_dir)
        self._heartbeat: Heartbeat | None = None  # started once joined
        self.connect, self.curve_dir = connect, curve_dir
        self.clock: Clock = RealClock()  # the device's time, from boot; WELCOME picks the run's clock, ROUND its dilation
        self._device: Device | None = None  # built from WELCOME
        self._link: LinkShaper | None = None  # the dealer's shaper, made with the device
        self.idle_timeout_s = join_timeout_s  # host seconds; until WELCOME says the round deadline
        self._announced: Message | None = None  # a ROUND that came while an earlier round's work was going on

    # Set by _join (WELCOME): all that reads them belongs to a round, and rounds come after it.
    @property
    def heartbeat(self) -> Heartbeat:
        assert self._heartbeat is not None, "not joined"
        return self._heartbeat

    @property
    def device(self) -> Device:
        assert self._device is not None, "not joined"
        return self._device

    @property
    def link(self) -> LinkShaper:
        assert self._link is not None, "not joined"
        return self._link

    def run(self) -> int:
        try:
            self._join()
            while True:
                message, self._announced = self._announced or self._receive(self.idle_timeout_s), None
                if message.type == "ROUND":
                    self._round(self._newest_round(message))
        except Stop as stop:
            log.info("%s: stopping (%s)", self.client_id, stop)
            return 0
        except OutOfMemory as error:  # the emulated device's OOM killer: say so, then go
            log.error("%s: %s", self.client_id, error)
            self.dealer.send(Message("BYE", self.client_id, 0, {"reason": f"out of memory: {error}"}), shaped=False)
            return OOM_EXIT_CODE
        finally:
            if self._heartbeat is not None:
                self._heartbeat.stop()
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
            self._heartbeat = Heartbeat(self.context, self.connect, self.client_id, self.curve_dir, self._join_body())
            self.heartbeat.state = "loading"
            self._device = self._become_device(welcome)
            self.dealer.send(Message("HEARTBEAT", self.client_id, 0, {"state": "ready", "device": self.device.info}),
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

    def _become_device(self, welcome: Message) -> Device:
        """The device WELCOME describes (`client/device.py`); its link shapes this client's messages."""
        from testbed.client.device import become_device

        run = welcome.body["run"]
        device = become_device(run, welcome.tensors, self.control_file, self.run_dir)
        if device.session.scenario.emulation.clock == "events":
            self.clock = EventClock()  # the real one counted from boot; this one reads the run's time from ROUND
        self.clock.set_dilation(float(run.get("dilation", 1.0)))
        # links are shaped here with either backend
        self.dealer.shaper = self._link = LinkShaper(device.link, self.clock)
        self.idle_timeout_s = max(60.0, self.clock.host_s(10 * device.session.scenario.deadline_s))
        return device

    # ------------------------------------------------------------------ messages
    def _receive(self, timeout_s: float, wanted: str | None = None, round_index: int | None = None) -> Message:
        """Next message (of type `wanted` for `round_index`, others are skipped); BYE raises Stop, and a ROUND later
        than `round_index` RoundClosed."""
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
            if round_index is not None and message.type == "ROUND" and message.round > round_index:
                self._announced = message  # taken up once this round's work is given up
                raise RoundClosed(message)
            if (wanted is None or message.type == wanted) and (round_index is None or message.round == round_index):
                return message
        if wanted is None:
            raise Stop(f"the aggregator was silent for {timeout_s:.0f} s")
        raise TimeoutError(wanted)

    def _check_open(self, round_index: int, steps_done: int) -> None:
        """Raise RoundClosed if a later round was announced (Stop on BYE); else return at once."""
        try:
            self._receive(0.0005, wanted="ROUND", round_index=round_index)  # only a later round: the current is in hand
        except TimeoutError:
            return
        except RoundClosed as closed:
            raise RoundClosed(closed.newer, steps_done) from None

    def _newest_round(self, start: Message) -> Message:
        """The newest ROUND already delivered: a device still busy when later rounds were announced takes up the
        last one, not the closed ones before it (each would cost it a deadline's wait for layers never sent)."""
        while True:
            try:
                start = self._receive(0.001, wanted="ROUND")
            except TimeoutError:
                return start

    # ------------------------------------------------------------------ one round
    def _round(self, start: Message) -> None:
        """One round: availability -> depth -> fetch -> train -> upload, each phase timed on the clock."""
        received = self._begin_round(start)
        if not self._available(start.round, received):
            return
        timing = RoundTiming(self._wake(received))
        depth = self._choose_depth(start)
        try:
            if not self._fetch(start.round, depth, start.body["deadline_s"], timing):
                self.heartbeat.state = "idle"
                return  # the round closed before our layers came
            result = self._train(start.round, depth, timing)
        except RoundClosed as closed:
            self._give_up(start.round, depth, timing, closed)
            return
        self._upload(start.round, depth, result, timing)
        self.device.policy.observe(depth, timing.observed())
        del result
        self._rest()

    def _give_up(self, round_index: int, depth: int, timing: RoundTiming, closed: RoundClosed) -> None:
        """A later round was announced mid-work: drop this one (its update would only be late, and the device's
        time is better spent on the round that is open). The steps done still tell the exit policy this
        depth's pace, scaled to the full round."""
        steps = self.device.session.scenario.training.local_steps
        log.info("%s: gave up round %d at depth %d after %d of %d steps: %s", self.client_id, round_index, depth,
                 closed.steps_done, steps, closed)
        if closed.steps_done:
            self.device.policy.observe(depth, {"download_s": timing.download_s,
                                               "compute_s": timing.compute_s * steps / closed.steps_done})
        self._rest()

    def _rest(self) -> None:
        """Between rounds: a lean client lets its data and model go; the device is idle."""
        if self.device.lean:
            self.device.session.release()
        release_free_memory()
        self.heartbeat.state = "idle"

    def _begin_round(self, start: Message) -> float:
        """Take up what changed since the last round; returns when ROUND arrived (emulated seconds: since boot on
        the real clock; the run's time, or later if this device is still busy, on the event clock)."""
        self.heartbeat.round = start.round
        self.clock.set_dilation(float(start.body.get("dilation", self.clock.dilation)))  # the aggregator may raise it
        self.clock.catch_up(float(start.body.get("started_t", 0.0)))
        received = self.clock.now()
        self._take_up_injection()
        # link draws (jitter, loss) from this round's own seed, as the batch order: a client restarted by a resume
        # draws in round r what the uninterrupted run's client drew there
        shaper = self.link
        shaper.model = LinkModel(shaper.model.link, [self.device.session.seed, start.round])
        return received

    def _available(self, round_index: int, now: float) -> bool:
        """Whether the device is online for this round (else it says SKIP)."""
        if self.device.schedule.online(round_index, now):
            return True
        self.heartbeat.state = "offline"
        self.dealer.send(Message("SKIP", self.client_id, round_index, {"reason": "offline"}), shaped=False)
        return False

    def _wake(self, received: float) -> float:
        """When the round's work starts (emulated seconds): as ROUND arrived, or once a lean client reloaded
        its data and model, which takes host time that is no phase of the device."""
        if self.device.session.loaded is not None:
            return received
        self.device.session.ensure_loaded()
        return self.clock.now()

    def _choose_depth(self, start: Message) -> int:
        """The strategy's imposed depth, else the exit policy's choice for this deadline."""
        preferred = start.body.get("preferred", {}).get(self.device.session.task)
        return start.body["depth"] or self.device.policy.choose(start.body["deadline_s"], preferred)

    def _fetch(self, round_index: int, depth: int, deadline_s: float, timing: RoundTiming) -> bool:
        """FETCH layers <= depth and load them into the model; False when the round closed first."""
        self.heartbeat.state = "downloading"
        self.dealer.send(Message("FETCH", self.client_id, round_index, {"depth": depth}))
        try:
            model = self._receive(self.clock.host_s(deadline_s), wanted="MODEL", round_index=round_index)
        except TimeoutError:
            return False
        timing.download_s = self.clock.now() - timing.started
        self.heartbeat.state = "training"
        self.device.session.load(model.tensors)
        self.device.injection.keep_fetched(model.tensors)
        return True  # the received frames (~27 MB for the tiny backbone) are let go before training

    def _train(self, round_index: int, depth: int, timing: RoundTiming) -> RoundResult:
        """Local training at the device's pace (a fault may strike after one of its steps)."""
        device = self.device
        self._take_up_injection()  # a slowdown set while the layers came paces the first step too
        throttle = ComputeThrottle(device.injection.slowed(device.throughput), self.clock, paced=not self.kernel_cpu,
                                   step_cpu_s=device.modeled[depth] if device.modeled is not None else None)
        try:
            with device.slots:  # waiting for one takes host time only: the throttle starts once it is held
                result = device.session.train_round(round_index, depth, self._on_step(round_index, depth, throttle),
                                                    throttle, device.memory)
        except RoundClosed:
            timing.compute_s = throttle.finish().elapsed_s  # the steps done, at the device's pace
            raise
        device.memory.observe(depth, result.peak_mb)
        timing.compute_s, timing.cpu_s = result.throttle.elapsed_s, result.throttle.cpu_s
        timing.overshoot = result.throttle.overshoot
        return result

    def _on_step(self, round_index: int, depth: int, throttle: ComputeThrottle):
        """After each local step: report progress, suffer this round's fault at its step, take up injections, give
        the round up if a later one was announced."""
        steps = self.device.session.scenario.training.local_steps
        fault = self.device.schedule.fault(round_index)
        fault_step = self.device.schedule.fault_step(round_index, steps)

        def progress(step: int, loss: float) -> None:
            self.dealer.send(Message("PROGRESS", self.client_id, round_index,
                                     {"step": step + 1, "steps": steps, "layer": depth}), shaped=False)
            if fault is not None and step == fault_step:
                self._suffer(fault)
            if self._take_up_injection():  # event clock: from when the change was scripted (see retune)
                since_t = self.device.injection.state.since_t if isinstance(self.clock, EventClock) else None
                throttle.retune(self.device.injection.slowed(self.device.throughput), since_t)
            self._check_open(round_index, step + 1)

        return progress

    def _upload(self, round_index: int, depth: int, result: RoundResult, timing: RoundTiming) -> None:
        """UPDATE with the trained layers (as a stress test may tamper with them) and the round's timings."""
        self.heartbeat.state = "uploading"
        timing.elapsed_s = self.clock.now() - timing.started
        injection = self.device.injection
        body = {"depth": depth, "samples": injection.samples(result.samples), "loss": result.loss,
                "timings": timing.reported(), "peak_mb": result.peak_mb}
        tensors = injection.tampered(result.tensors)
        sender = injection.sender(self.client_id)  # a stress test's impostor claims another's name
        if sender != self.client_id:
            self.dealer.send(Message("JOIN", sender, 0, self._join_body()), shaped=False)
        sent = self.clock.now()
        # wait until libzmq is done with the buffers: they may be the model's own parameters
        self.dealer.send(Message("UPDATE", sender, round_index, body, tensors), wait_s=60.0)
        timing.upload_s = self.clock.now() - sent

    def _take_up_injection(self) -> bool:
        """A changed control file (slowdown, link, lies) taken up; True when something changed."""
        return self.device.injection.take_up(self.link)

    def _suffer(self, fault: str) -> None:
        """An injected fault, mid-training: a crash (abrupt exit, no goodbye) or a freeze (total silence)."""
        log.warning("%s: injected %s", self.client_id, fault)
        if fault == "crash":
            os._exit(CRASH_EXIT_CODE)  # no cleanup, no BYE: as a power loss would leave things
        self.heartbeat.pause()
        self.clock.advance(self.device.session.spec.profile.failure.freeze_s)
        self.heartbeat.resume()


def run_client(connect: str, client_id: str, **options) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return ClientWorker(connect, client_id, **options).run()
