"""Transport throughput: a wav2vec2-base-sized state sent Router -> Dealer (another process) -> back.

Each timed round trip starts when the aggregator-side Router is handed the state and ends when the
state it got back is decoded and validated (one MODEL out, one UPDATE back, as in a real round).
Compared in the same run, interleaved, over the same socket pair:
  copy    np.copyto of the same arrays into preallocated ones (memory bandwidth, one process);
  fresh   np.copy of the same arrays (context: new memory pays a page fault per 4 KiB, as every
          received message does);
  ours    Router.send -> Dealer.recv -> Dealer.send(wait_s) -> Router.poll (msgpack + raw frames);
  raw     the same bytes as ONE raw ZeroMQ frame, socket.send(buffer, copy=False), echoed unchanged;
  pickle  what a naive implementation does: socket.send(pickle.dumps(state)), pickle.loads(socket.recv()).
Throughput counts the state's bytes once per direction: 2 x state bytes / round-trip seconds.

    python tools/bench_transport.py                                # 95 M parameters, ipc and tcp
    python tools/bench_transport.py --params 10e6 --repeats 3 --transport ipc
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_state, also in the spawned peer
from bench_state import make_state, nbytes  # noqa: E402

from testbed.transport.endpoint import Dealer, Router  # noqa: E402
from testbed.transport.messages import Message  # noqa: E402

PEER_ID = "bench"
TIMEOUT_S = 120.0  # one round trip of a few GB/s never takes this long; a dead peer fails the run
VARIANTS = ("copy", "fresh", "ours", "raw", "pickle")
UPDATE_BODY = {"depth": 12, "samples": 1, "loss": 0.0, "timings": {}}


# ---- the peer process (a client) ----------------------------------------------------------------

def echo_ours(dealer: Dealer) -> None:
    model, _ = dealer.recv(TIMEOUT_S)
    if model is None:
        raise TimeoutError("peer: no MODEL message")
    # as a client does: the update goes out zero-copy and we wait until libzmq has released it
    dealer.send(Message("UPDATE", PEER_ID, model.round, UPDATE_BODY, model.tensors), wait_s=60.0)


def echo_raw(dealer: Dealer) -> None:
    dealer.socket.send_multipart(dealer.socket.recv_multipart(copy=False), copy=False)


def echo_pickle(dealer: Dealer) -> None:
    state = pickle.loads(dealer.socket.recv())
    dealer.socket.send(pickle.dumps(state))


ECHOES: dict[str, Callable[[Dealer], None]] = {"ours": echo_ours, "raw": echo_raw, "pickle": echo_pickle}


def peer(address: str, max_bytes: int, control) -> None:
    """Join, then echo one message per variant named on `control` until told "stop"."""
    context = zmq.Context()
    dealer = Dealer(context, address, PEER_ID, max_bytes=max_bytes)
    try:
        dealer.send(Message("JOIN", PEER_ID, 0, {"profile": "bench", "task": "keyword", "pid": os.getpid()}))
        while (variant := control.recv()) != "stop":
            ECHOES[variant](dealer)
    finally:
        dealer.close()
        context.destroy(linger=0)


# ---- the aggregator side ------------------------------------------------------------------------

class Bench:
    """A Router, the peer process connected to it, and one timed round trip per variant."""

    def __init__(self, address: str, state: dict[str, np.ndarray]):
        self.state, self.size = state, nbytes(state)
        self.raw = np.frombuffer(np.random.default_rng(1).bytes(self.size), np.uint8)  # one frame's worth
        self.copies = {key: np.empty_like(array) for key, array in state.items()}
        max_bytes = self.size + (1 << 20)  # state + envelope (pickle's framing is far below 1 MiB)
        self.context = zmq.Context()
        self.router = Router(self.context, address, max_bytes=max_bytes)
        self.control, peer_control = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("spawn").Process(
            target=peer, args=(self.router.address, max_bytes, peer_control), daemon=True)
        self.process.start()
        joined = self.router.poll(TIMEOUT_S)
        if joined is None or joined.message is None or joined.message.type != "JOIN":
            self.close()
            raise RuntimeError(f"peer did not join: {joined}")
        self.identity = joined.identity

    def close(self) -> None:
        if self.process.is_alive():
            self.control.send("stop")
            self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.router.close()
        self.context.destroy(linger=0)

    def run(self, variant: str, round_index: int) -> tuple[float, object]:
        """(seconds, what came back) for one round trip (or one copy) of the state."""
        if variant in ECHOES:
            self.control.send(variant)  # before the clock starts
        started = time.perf_counter()
        result = getattr(self, f"_{variant}")(round_index)
        return time.perf_counter() - started, result

    def _copy(self, round_index: int) -> dict[str, np.ndarray]:
        for key, array in self.state.items():
            np.copyto(self.copies[key], array)
        return self.copies

    def _fresh(self, round_index: int) -> dict[str, np.ndarray]:
        return {key: array.copy() for key, array in self.state.items()}

    def _ours(self, round_index: int) -> dict[str, np.ndarray]:
        sent = self.router.send(self.identity, Message("MODEL", PEER_ID, round_index, {"depth": 12}, self.state))
        received = self.router.poll(TIMEOUT_S)
        if received is None or received.message is None:
            raise RuntimeError(f"no valid UPDATE came back: {received}")
        if sent < self.size or received.nbytes < self.size:
            raise RuntimeError(f"short transfer: {sent} bytes out, {received.nbytes} back, state {self.size}")
        return received.message.tensors

    def _raw(self, round_index: int) -> zmq.Frame:
        self.router.socket.send_multipart([self.identity, self.raw], copy=False)
        if not self.router.socket.poll(int(TIMEOUT_S * 1000)):
            raise TimeoutError("raw frame did not come back")
        _, frame = self.router.socket.recv_multipart(copy=False)
        return frame

    def _pickle(self, round_index: int) -> dict[str, np.ndarray]:
        self.router.socket.send_multipart([self.identity, pickle.dumps(self.state)])
        if not self.router.socket.poll(int(TIMEOUT_S * 1000)):
            raise TimeoutError("pickled state did not come back")
        _, blob = self.router.socket.recv_multipart()
        return pickle.loads(blob)

    def check(self) -> None:
        """Untimed warm-up of every variant that also checks that what came back is what was sent."""
        for variant in VARIANTS:
            _, result = self.run(variant, 0)
            if variant == "raw":
                same = np.array_equal(np.frombuffer(result.buffer, np.uint8), self.raw)
            else:
                same = result.keys() == self.state.keys() and all(
                    np.array_equal(result[key], array) for key, array in self.state.items())
            if not same:
                raise RuntimeError(f"{variant}: what came back differs from what was sent")


def measure(address: str, state: dict[str, np.ndarray], repeats: int) -> dict[str, list[float]]:
    """Seconds per variant per repeat; the variants' order rotates each repeat."""
    bench = Bench(address, state)
    seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    try:
        bench.check()
        for repeat in range(repeats):
            order = VARIANTS[repeat % len(VARIANTS):] + VARIANTS[:repeat % len(VARIANTS)]
            for variant in order:
                elapsed, result = bench.run(variant, repeat + 1)
                del result  # freed outside the clock, the same way for every variant
                seconds[variant].append(elapsed)
    finally:
        bench.close()
    return seconds


def throughputs(size: int, seconds: dict[str, list[float]]) -> dict[str, list[float]]:
    """GB/s per repeat: a round trip moves the state twice, a copy once."""
    return {variant: [(2 * size if variant in ECHOES else size) / s / 1e9 for s in times]
            for variant, times in seconds.items()}


def report(transport: str, state: dict[str, np.ndarray], seconds: dict[str, list[float]]) -> None:
    size = nbytes(state)
    rates = throughputs(size, seconds)
    params = sum(array.size for array in state.values())
    print(f"\n{transport}: {params / 1e6:.1f} M float32 parameters, {size / 1e6:.1f} MB in {len(state)} tensors, "
          f"{len(seconds['ours'])} repeats (medians)")
    print(f"  {'variant':<34}{'seconds':>9}{'GB/s':>8}")
    labels = {"copy": "copy    np.copyto (one way)", "fresh": "fresh   np.copy (one way)",
              "ours": "ours    Router/Dealer round trip",
              "raw": "raw     one ZeroMQ frame round trip", "pickle": "pickle  naive round trip"}
    for variant in VARIANTS:
        print(f"  {labels[variant]:<34}{statistics.median(seconds[variant]):>9.3f}"
              f"{statistics.median(rates[variant]):>8.2f}")

    def ratio(numerator: list[float], denominator: list[float]) -> float:  # median of per-repeat ratios
        return statistics.median(a / b for a, b in zip(numerator, denominator))

    to_copy = ratio(rates["ours"], rates["copy"])
    speedup = ratio(seconds["pickle"], seconds["ours"])
    target_copy = "  (target >= 0.15 over ipc)" if transport == "ipc" else ""
    print(f"  ours / copy throughput      {to_copy:6.2f}{target_copy}")
    print(f"  ours / fresh throughput     {ratio(rates['ours'], rates['fresh']):6.2f}")
    print(f"  ours / raw frame throughput {ratio(rates['ours'], rates['raw']):6.2f}")
    print(f"  pickle time / ours time     {speedup:6.2f}  (target >= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=95e6, help="float32 parameters in the state (95e6)")
    parser.add_argument("--repeats", type=int, default=5, help="timed round trips per variant (5)")
    parser.add_argument("--transport", default="ipc,tcp", help="comma-separated: ipc, tcp (both)")
    args = parser.parse_args()
    transports = [name.strip() for name in args.transport.split(",") if name.strip()]
    if not transports or any(name not in ("ipc", "tcp") for name in transports):
        parser.error(f"--transport {args.transport!r}: allowed are ipc, tcp (comma-separated)")
    if args.repeats < 1 or args.params < 1:
        parser.error("--repeats and --params must be >= 1")
    state = make_state(int(args.params))
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as scratch:
        for transport in transports:
            address = f"ipc://{scratch}/router" if transport == "ipc" else "tcp://127.0.0.1:*"
            report(transport, state, measure(address, state, args.repeats))


if __name__ == "__main__":
    main()
