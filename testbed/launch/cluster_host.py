"""What runs on a Ray node for one client: a host that starts the client as a process of its own and ends it.

`testbed run --cluster` places one `ClientHost` per client with Ray (cluster.py wraps this class as a Ray
actor; it imports nothing of Ray itself, so that it runs and is tested as a plain object too). The host starts
`python -m testbed client` (the entry point of `testbed client`) as its child, in a process group of its own,
with the CURVE keys it was handed written to a private folder; the client applies its profile inside itself, as
every client does. The host reports the child's node, pid, CPU affinity and exit code, hands its log back piece
by piece, and ends it with the group: SIGTERM, then SIGKILL. Should the host's own process die (the actor
killed, its node lost), the kernel SIGKILLs the child (PR_SET_PDEATHSIG), so no client outlives its host.

On the node, the run's files live in `<tmp>/testbed-cluster-<uid>/<run key>/`: `logs/<id>.log` (the client's stdout
and stderr), `keys/<id>/` (its key pair and the aggregator's public key, readable by the owner alone), and
`slots/`, shared by the run's clients on that node (event clock: at most as many compute at once as it has cores).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from testbed.launch.processes import PR_SET_PDEATHSIG

PRIVATE_DIR = 0o700  # key folders: their owner alone may enter them
PRIVATE_FILE = 0o600  # secret keys: their owner alone may read them
LOG_CHUNK_BYTES = 1 << 20  # the most of a log one `poll` hands back (the rest comes with the next)
EXIT_WAIT_S = 1.0  # host seconds a client told BYE by the aggregator gets to exit by itself before its SIGTERM
STOP_GRACE_S = 2.0  # host seconds between the group's SIGTERM and its SIGKILL


def node_root(run_key: str) -> Path:
    """Where a run's clients on this node keep their files (one folder per run, shared by its clients here)."""
    return Path(tempfile.gettempdir()) / f"testbed-cluster-{os.getuid()}" / run_key  # private to its user


class ClientHost:
    """One client process on this node, started, watched and ended on the launcher's behalf."""

    def __init__(self, run_key: str, client_id: str):
        self.client_id = client_id
        self.root = node_root(run_key)
        self.log_path = self.root / "logs" / f"{client_id}.log"
        self.keys = self.root / "keys" / client_id
        self.process: subprocess.Popen | None = None
        self.command: list[str] = []
        self.python_path = ""  # the child's PYTHONPATH: this testbed first

    def start(self, connect: str, keys: dict[str, str], join_timeout_s: float) -> dict:
        """Write the client's keys, start its process and return the facts of its placement.

        `keys`: the text of `server.key` (the aggregator's public key) and `<id>.key_secret` (this client's pair),
        made by the launcher for this run."""
        from testbed import __version__

        self._write_keys(keys)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        package_root = str(Path(__file__).resolve().parents[2])  # the child imports this very testbed
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self.command = [sys.executable, "-m", "testbed", "client", "--connect", connect, "--id", self.client_id,
                        "--keys", str(self.keys), "--work-dir", str(self.root), "--join-timeout", f"{join_timeout_s:g}"]
        self.python_path = path
        self._spawn()
        assert self.process is not None
        node_id, node_ip = _ray_node()
        return {"pid": self.process.pid, "node_id": node_id, "node_ip": node_ip, "hostname": socket.gethostname(),
                "node_cpus": os.cpu_count(), "testbed": __version__, "python": sys.version.split()[0]}

    def restart(self) -> dict:
        """Start the client again after an emulated crash (a power loss: the device reboots): its new pid."""
        self._spawn()
        assert self.process is not None
        return {"pid": self.process.pid}

    def _spawn(self) -> None:
        env = {**os.environ, "PYTHONPATH": self.python_path}
        # the group's id is the client's pid: `stop` ends the client and anything it started with one signal
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True, preexec_fn=_die_with_parent)

    def _write_keys(self, keys: dict[str, str]) -> None:
        clients = self.keys / "clients"
        for folder in (self.root.parent, self.root, self.keys, clients):
            folder.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        for folder in (self.keys, clients):
            folder.chmod(PRIVATE_DIR)  # before any secret is written in it (mkdir's mode is cut by the umask)
        for path, text in ((self.keys / "server.key", keys["server.key"]),
                           (clients / f"{self.client_id}.key_secret", keys["client.key_secret"])):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(text)

    def poll(self, log_offset: int) -> dict:
        """The client's state: exit code (None while it runs), CPU affinity (the cores its profile pinned it to),
        and its log from byte `log_offset` on (at most LOG_CHUNK_BYTES)."""
        code = self.process.poll() if self.process is not None else None
        affinity: list[int] | None = None
        if self.process is not None and code is None:
            try:
                affinity = sorted(os.sched_getaffinity(self.process.pid))
            except OSError:  # it ended between the two calls
                pass
        return {"exitcode": code, "affinity": affinity, "log": self._read_log(log_offset)}

    def _read_log(self, offset: int) -> bytes:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read(LOG_CHUNK_BYTES)
        except FileNotFoundError:
            return b""

    def stop(self, log_offset: int) -> dict:
        """End the client (its whole process group: SIGTERM after EXIT_WAIT_S, then SIGKILL after STOP_GRACE_S),
        remove its keys and hand back the rest of its log; its exit code and the log from `log_offset` on. Safe to
        call again."""
        code = None
        if self.process is not None:
            try:
                code = self.process.wait(EXIT_WAIT_S)  # the run's end or Ctrl-C: the aggregator said BYE to it
            except subprocess.TimeoutExpired:
                pass
            if code is None:
                _signal_group(self.process.pid, signal.SIGTERM)
                try:
                    code = self.process.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
            _signal_group(self.process.pid, signal.SIGKILL)  # anything of its group still there
            if code is None:
                code = self.process.wait()
        shutil.rmtree(self.keys, ignore_errors=True)
        rest = b""
        while chunk := self._read_log(log_offset + len(rest)):
            rest += chunk
        self.log_path.unlink(missing_ok=True)
        self._remove_run_folder_when_unused()
        return {"exitcode": code, "log": rest}

    def _remove_run_folder_when_unused(self) -> None:
        """The run's folder on this node goes with its last client (what is left then: the compute slots)."""
        keys = self.root / "keys"
        if not any((self.root / "logs").glob("*.log")) and not (keys.is_dir() and any(keys.iterdir())):
            shutil.rmtree(self.root, ignore_errors=True)


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):  # the group is gone (PermissionError: macOS, for a zombie leader)
        pass


# libc's prctl, looked up here: in the forked child, before exec, only async-signal-safe calls belong (no dlopen)
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: the kernel SIGKILLs it when the host process dies (Linux; no-op elsewhere)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)


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

