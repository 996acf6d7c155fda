"""Child processes for test_kernel_backend, each in its own interpreter: `python kernel_children.py ROLE ARGS...`.

Roles:
  allocate                   wait for a line on stdin, then allocate (and touch) memory: 512 MiB, unless
                             killed first (a bound, so that a limit that fails does not starve the host)
  interfaces NETNS HOST PORT enter NETNS, send the interface names it sees to HOST:PORT
  measure NETNS HOST PORT    enter NETNS, then against the server of `serve_measurements`: round-trip
                             pings, a downlink and an uplink transfer; prints a JSON result
  launcher INDEX CPU MEMORY  create a cgroup and a namespace with a process in both, print what it
                             made as JSON, then wait to be killed
"""

import json
import socket
import subprocess
import sys
import time

PINGS = 20
WARMUP_BYTES = 256 * 1024  # sent first so that TCP's window covers the link before the timing starts
DOWNLINK_BYTES = 2 * 1024 * 1024
UPLINK_BYTES = 1024 * 1024


def recv_exactly(connection: socket.socket, nbytes: int) -> None:
    buffer = memoryview(bytearray(min(nbytes, 1 << 20)))
    while nbytes > 0:
        received = connection.recv_into(buffer[:min(nbytes, len(buffer))])
        if received == 0:
            raise EOFError(f"connection closed with {nbytes} bytes to go")
        nbytes -= received


def serve_measurements(listener: socket.socket, result: dict) -> None:
    """The host side of `measure`: echo the pings, send the downlink bytes, time the uplink ones (seconds)."""
    connection, _ = listener.accept()
    with connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(PINGS):
            recv_exactly(connection, 1)
            connection.sendall(b"p")
        recv_exactly(connection, 1)  # the client is ready for the downlink
        connection.sendall(bytes(WARMUP_BYTES + DOWNLINK_BYTES))
        recv_exactly(connection, WARMUP_BYTES)
        start = time.perf_counter()
        recv_exactly(connection, UPLINK_BYTES)
        result["uplink_s"] = time.perf_counter() - start


def measure(netns: str, host: str, port: int) -> None:
    from testbed.emulation.kernel_net import enter_namespace

    enter_namespace(netns)
    with socket.create_connection((host, port), timeout=30) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(PINGS):
            start = time.perf_counter()
            connection.sendall(b"p")
            recv_exactly(connection, 1)
            rtts.append(time.perf_counter() - start)
        connection.sendall(b"d")
        recv_exactly(connection, WARMUP_BYTES)
        start = time.perf_counter()
        recv_exactly(connection, DOWNLINK_BYTES)
        downlink_s = time.perf_counter() - start
        connection.sendall(bytes(WARMUP_BYTES + UPLINK_BYTES))
    print(json.dumps({"rtts_s": rtts, "downlink_s": downlink_s}))


def interfaces(netns: str, host: str, port: int) -> None:
    from testbed.emulation.kernel_net import enter_namespace

    enter_namespace(netns)
    names = sorted(name for _, name in socket.if_nameindex())
    with socket.create_connection((host, port), timeout=30) as connection:
        connection.sendall(json.dumps(names).encode())


def allocate() -> None:
    sys.stdin.readline()
    held = [b"x" * (8 << 20) for _ in range(64)]  # 8 MiB each, every page written
    print(f"allocated {sum(map(len, held)) >> 20} MiB", flush=True)


def launcher(index: int, cpu: bool, memory: bool) -> None:
    from testbed.emulation.kernel_cgroup import ClientCgroup
    from testbed.emulation.kernel_net import ClientNetwork

    group = ClientCgroup("c00", cpu_cores=1.0 if cpu else None, memory_mb=256 if memory else None, run_tag="crash")
    group.create()
    network = ClientNetwork("c00", index, downlink_mbps=None, uplink_mbps=None)
    network.create()
    # A client still running in the namespace keeps it (and the veth pair) alive after `ip netns del`.
    sleeper = subprocess.Popen(["ip", "netns", "exec", network.netns, "sleep", "60"])
    group.add(sleeper.pid)
    print(json.dumps({"sleeper": sleeper.pid, "cgroups": [str(d) for d in group.directories.values()],
                      "netns": network.netns, "link": network.host_interface}), flush=True)
    time.sleep(60)


if __name__ == "__main__":
    role, arguments = sys.argv[1], sys.argv[2:]
    if role == "allocate":
        allocate()
    elif role in ("measure", "interfaces"):
        (measure if role == "measure" else interfaces)(arguments[0], arguments[1], int(arguments[2]))
    elif role == "launcher":
        launcher(int(arguments[0]), arguments[1] == "1", arguments[2] == "1")
    else:
        sys.exit(f"unknown role {role!r}")
