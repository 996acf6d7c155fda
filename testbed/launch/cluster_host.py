"""What runs on a Ray node for a run: one host that forks the run's clients on that node, follows and ends them.

`testbed run --cluster` places one `NodeHost` on each node that hosts clients (cluster.py wraps this class as a
Ray actor; it imports nothing of Ray itself, so that it runs and is tested as a plain object too). The host starts
a fork server (fork_server.py, as the local launcher does) that imports torch, transformers and the client's code
once; every client of the node is forked from it as a process of its own, running the same entry point as a local
client (`entry.client_main`, `testbed client`'s worker) with the CURVE keys it was handed written to a private
folder. The clients share the server's imported pages, so a node's clients cost what local ones do in memory and
start time (docs/benchmarks.md, "On a Ray cluster of two nodes on this host"), and the client applies its profile
inside itself, as every client does. The host reports each client's node, pid, CPU affinity and exit code, hands
its log back piece by piece, and ends it: SIGTERM, then SIGKILL. Should the host's process die (the actor killed,
its node lost), the fork server sees its channel close and kills its process group, clients included.

The host is a threaded actor: each client's calls may run at once (a stop waits seconds for its client to exit),
so the fork server's channel is used under one lock.

On the node, the run's files live in `<tmp>/testbed-cluster-<uid>/<run key>/`: `logs/<id>.log` (the client's log),
`keys/<id>/` (its key pair and the aggregator's public key, readable by the owner alone), and `slots/`, shared by
the run's clients on that node (event clock: at most as many compute at once as it has cores).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from testbed.launch.processes import CLIENT_ENTRY, PRELOAD, Child, ProcessGroup

PRIVATE_DIR = 0o700  # key folders: their owner alone may enter them
PRIVATE_FILE = 0o600  # secret keys: their owner alone may read them
LOG_CHUNK_BYTES = 1 << 20  # the most of a log one `poll` hands back (the rest comes with the next)
EXIT_WAIT_S = 1.0  # host seconds a client told BYE by the aggregator gets to exit by itself before its SIGTERM
STOP_GRACE_S = 2.0  # host seconds between a client's SIGTERM and its SIGKILL
WAIT_STEP_S = 0.05  # host seconds between two looks at a client that is being stopped


def node_root(run_key: str) -> Path:
    """Where a run's clients on this node keep their files (one folder per run, shared by its clients here)."""
    return Path(tempfile.gettempdir()) / f"testbed-cluster-{os.getuid()}" / run_key  # private to its user


class NodeHost:
    """The run's clients on this node, forked, watched and ended on the launcher's behalf."""

    def __init__(self, run_key: str):
        self.root = node_root(run_key)
        self.group = ProcessGroup(PRELOAD)
        self.group.warm_up()  # its imports (seconds) overlap the launcher's wait for the first start
        self.lock = threading.Lock()  # the fork server's channel, and `clients`
        self.clients: dict[str, Child] = {}  # client id -> its latest process (a rebooted client: the new one)
        self.arguments: dict[str, tuple] = {}  # client id -> what client_main is called with

    def start(self, client_id: str, connect: str, keys: dict[str, str], join_timeout_s: float) -> dict:
        """Write the client's keys, fork its process and return the facts of its placement.

        `keys`: the text of `server.key` (the aggregator's public key) and `<id>.key_secret` (this client's pair),
        made by the launcher for this run."""
        from testbed import __version__

        key_dir = self._write_keys(client_id, keys)
        self.arguments[client_id] = (connect, client_id, str(self.root), False, None, str(key_dir), join_timeout_s)
        pid = self._fork(client_id)
        node_id, node_ip = _ray_node()
        return {"pid": pid, "forkserver": self.group.server.pid if self.group.server else None, "node_id": node_id,
                "node_ip": node_ip, "hostname": socket.gethostname(), "node_cpus": os.cpu_count(),
                "testbed": __version__, "python": sys.version.split()[0]}

    def restart(self, client_id: str) -> dict:
        """Start the client again after an emulated crash (a power loss: the device reboots): its new pid."""
        return {"pid": self._fork(client_id)}

    def _fork(self, client_id: str) -> int:
        with self.lock:
            child = self.clients[client_id] = self.group.start(client_id, CLIENT_ENTRY, *self.arguments[client_id])
        return child.pid

    def _write_keys(self, client_id: str, keys: dict[str, str]) -> Path:
        key_dir = self.root / "keys" / client_id
        clients = key_dir / "clients"
        for folder in (self.root.parent, self.root, key_dir, clients):
            folder.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        for folder in (key_dir, clients):
            folder.chmod(PRIVATE_DIR)  # before any secret is written in it (mkdir's mode is cut by the umask)
        for path, text in ((key_dir / "server.key", keys["server.key"]),
                           (clients / f"{client_id}.key_secret", keys["client.key_secret"])):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(text)
        return key_dir

    def _exitcode(self, client_id: str) -> int | None:
        """The client's exit code, None while it runs (-N: killed by signal N; -9 as well when the server is gone)."""
        with self.lock:
            self.group.poll()
            return self.clients[client_id].exitcode

    def poll(self, client_id: str, log_offset: int) -> dict:
        """The client's state: exit code (None while it runs), CPU affinity (the cores its profile pinned it to),
        and its log from byte `log_offset` on (at most LOG_CHUNK_BYTES)."""
        code = self._exitcode(client_id)
        affinity: list[int] | None = None
        if code is None:
            try:
                affinity = sorted(os.sched_getaffinity(self.clients[client_id].pid))
            except OSError:  # it ended between the two calls
                pass
        return {"exitcode": code, "affinity": affinity, "log": self._read_log(client_id, log_offset)}

    def _log_path(self, client_id: str) -> Path:
        return self.root / "logs" / f"{client_id}.log"  # where client_main logs (its run_dir is `root`)

    def _read_log(self, client_id: str, offset: int) -> bytes:
        try:
            with open(self._log_path(client_id), "rb") as log:
                log.seek(offset)
                return log.read(LOG_CHUNK_BYTES)
        except FileNotFoundError:
            return b""

    def stop(self, client_id: str, log_offset: int) -> dict:
        """End the client (SIGTERM after EXIT_WAIT_S, then SIGKILL after STOP_GRACE_S), remove its keys and hand
        back the rest of its log: its exit code and the log from `log_offset` on. Safe to call again."""
        code = None
        if client_id in self.clients:
            code = self._wait(client_id, EXIT_WAIT_S)  # the run's end or Ctrl-C: the aggregator said BYE to it
            if code is None:
                self.clients[client_id].terminate()
                code = self._wait(client_id, STOP_GRACE_S)
            if code is None:
                self.clients[client_id].kill()
                code = self._wait(client_id, STOP_GRACE_S)
        shutil.rmtree(self.root / "keys" / client_id, ignore_errors=True)
        rest = b""
        while chunk := self._read_log(client_id, log_offset + len(rest)):
            rest += chunk
        self._log_path(client_id).unlink(missing_ok=True)
        return {"exitcode": code, "log": rest}

    def _wait(self, client_id: str, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        while (code := self._exitcode(client_id)) is None and time.monotonic() < deadline:
            time.sleep(WAIT_STEP_S)
        return code

    def close(self) -> None:
        """End the fork server and whatever it still runs, and remove the run's folder on this node (what is left
        there once the clients are stopped: the compute slots). Safe to call again."""
        with self.lock:
            self.group.stop(grace_s=0.0)  # the clients were stopped one by one; the group's SIGKILL takes the rest
        shutil.rmtree(self.root, ignore_errors=True)


def _ray_node() -> tuple[str, str]:
    """(Ray's id of this node, its IP address) inside a Ray worker; ("", the host's address) elsewhere. Ray is
    imported here alone: this module runs without it."""
    try:
        import ray
        import ray.util
    except ImportError:
        return "", socket.gethostbyname(socket.gethostname())
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    return node_id or "", str(ray.util.get_node_ip_address())
