"""A client process: join, then every round choose a depth, fetch layers <= depth, train, upload."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import zmq

from testbed.client.heartbeat import Heartbeat
from testbed.client.policies import make_policy
from testbed.transport.endpoint import Dealer
from testbed.transport.messages import Message, Rejected

log = logging.getLogger("testbed.client")

MAX_MESSAGE_BYTES = 2 << 30  # 2 GiB: a wav2vec2-large state fits
JOIN_RETRY_S = 2.0  # seconds between JOIN attempts while the aggregator is not up yet


class Stop(Exception):
    """The aggregator said BYE, or went silent for too long."""


class ClientWorker:
    def __init__(self, connect: str, client_id: str, *, curve_dir: Path | None = None,
                 join_timeout_s: float = 120.0):
        self.client_id, self.join_timeout_s = client_id, join_timeout_s
        self.context = zmq.Context()
        self.dealer = Dealer(self.context, connect, client_id, max_bytes=MAX_MESSAGE_BYTES, curve_dir=curve_dir)
        self.heartbeat: Heartbeat | None = None  # started once joined
        self.connect, self.curve_dir = connect, curve_dir
        self.session = None  # LocalSession, built from WELCOME
        self.policy = None
        self.idle_timeout_s = join_timeout_s  # until WELCOME says the round deadline

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
        finally:
            if self.heartbeat is not None:
                self.heartbeat.stop()
            self.dealer.close()
            self.context.term()

    def _join(self) -> None:
        """JOIN until WELCOME arrives, then build the local session it describes."""
        from testbed.client.local import LocalSession

        deadline = time.monotonic() + self.join_timeout_s
        body = {"profile": "", "task": "", "pid": os.getpid()}  # both come from the scenario's fleet
        while time.monotonic() < deadline:
            self.dealer.send(Message("JOIN", self.client_id, 0, body))
            try:
                welcome = self._receive(JOIN_RETRY_S, wanted="WELCOME")
            except TimeoutError:
                continue
            self.heartbeat = Heartbeat(self.context, self.connect, self.client_id, self.curve_dir)
            self.heartbeat.state = "loading"
            self.session = LocalSession(welcome.body["run"], welcome.tensors)
            policy = self.session.scenario.exit_policy
            self.policy = make_policy(policy.name, self.session.exits, self.session.spec.profile.max_exit)
            self.idle_timeout_s = max(60.0, 10 * self.session.scenario.deadline_s)
            self.dealer.send(Message("HEARTBEAT", self.client_id, 0, {"state": "ready"}))
            self.heartbeat.state = "idle"
            return
        raise Stop(f"no WELCOME from the aggregator within {self.join_timeout_s:.0f} s")

    def _receive(self, timeout_s: float, wanted: str | None = None, round_index: int | None = None) -> Message:
        """Next message (of type `wanted` for `round_index`, others are skipped); BYE raises Stop."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                message, _ = self.dealer.recv(left)
            except Rejected as error:  # a malformed message from the aggregator: drop it, go on
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

    def _round(self, start: Message) -> None:
        """One round: depth -> FETCH -> MODEL -> train -> UPDATE, timing each phase."""
        received = time.monotonic()
        round_index, self.heartbeat.round = start.round, start.round
        depth = start.body["depth"] or self.policy.choose()  # the strategy may impose a depth
        self.heartbeat.state = "downloading"
        self.dealer.send(Message("FETCH", self.client_id, round_index, {"depth": depth}))
        try:
            model = self._receive(start.body["deadline_s"], wanted="MODEL", round_index=round_index)
        except TimeoutError:
            self.heartbeat.state = "idle"
            return  # the round closed before our layers came
        download_s = time.monotonic() - received
        self.heartbeat.state = "training"

        def progress(step: int, loss: float) -> None:
            self.dealer.send(Message("PROGRESS", self.client_id, round_index,
                                     {"step": step + 1, "steps": steps, "layer": depth}))

        steps = self.session.scenario.training.local_steps
        result = self.session.train_round(round_index, model.tensors, depth, progress)
        self.heartbeat.state = "uploading"
        timings = {"download_s": download_s, "compute_s": result.compute_s,
                   "elapsed_s": time.monotonic() - received}  # since ROUND arrived: lets the aggregator derive upload time
        body = {"depth": depth, "samples": result.samples, "loss": result.loss, "timings": timings,
                "peak_mb": result.peak_mb}
        # wait until libzmq is done with the buffers: they are the model's own parameters
        self.dealer.send(Message("UPDATE", self.client_id, round_index, body, result.tensors), wait_s=60.0)
        self.policy.observe(depth, timings)
        self.heartbeat.state = "idle"


def run_client(connect: str, client_id: str, **options) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return ClientWorker(connect, client_id, **options).run()
