"""CURVE keys for multi-host runs: one server key pair, one key pair per client; unknown keys cannot join.

Layout of a key directory (made by `testbed keys DIR --clients c00,c01,...`):
    server.key, server.key_secret          the aggregator's pair
    clients/<id>.key, clients/<id>.key_secret   each client's pair (hand <id>.key_secret to that host only)
    authorized/<id>.key                    public keys the aggregator accepts, each for that client id only
Secret keys are readable by their owner alone (0600) and so is every folder of it (0700).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from testbed.errors import UserError

PRIVATE_DIR = 0o700  # key folders: their owner alone may list or enter them
PRIVATE_FILE = 0o600  # secret keys: their owner alone may read them


def generate_keys(directory: Path, client_ids: list[str]) -> None:
    """Create (or extend) a key directory; existing keys are kept, and made private if they were not."""
    for folder in (directory, directory / "clients", directory / "authorized"):
        folder.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        folder.chmod(PRIVATE_DIR)  # before any secret is written in it (mkdir's mode is cut by the umask)
    if not (directory / "server.key_secret").exists():
        zmq.auth.create_certificates(directory, "server")
    for client_id in client_ids:
        if not (directory / "clients" / f"{client_id}.key_secret").exists():
            zmq.auth.create_certificates(directory / "clients", client_id)
        shutil.copy(directory / "clients" / f"{client_id}.key", directory / "authorized" / f"{client_id}.key")
    for secret in (directory / "server.key_secret", *(directory / "clients").glob("*.key_secret")):
        secret.chmod(PRIVATE_FILE)  # pyzmq writes them as the umask allows (0644 by default)


def _load(path: Path):
    if not path.exists():
        raise UserError(f"CURVE key file {path} does not exist (make keys with: testbed keys DIR --clients ...)")
    try:
        return zmq.auth.load_certificate(path)
    except Exception as error:  # malformed certificate files raise ValueError or OSError
        raise UserError(f"CURVE key file {path} is not a valid certificate ({error})") from None


def start_authenticator(context: zmq.Context, socket: zmq.Socket, directory: Path) -> ThreadAuthenticator:
    """Make `socket` a CURVE server accepting only the public keys in `directory`/authorized."""
    public, secret = _load(directory / "server.key_secret")
    authorized = directory / "authorized"
    if not authorized.is_dir():
        raise UserError(f"{authorized} does not exist (make keys with: testbed keys DIR --clients ...)")
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(authorized))
    socket.curve_secretkey, socket.curve_publickey, socket.curve_server = secret, public, True
    return authenticator


def authorized_keys(directory: Path) -> dict[str, str]:
    """Client id -> the z85 public key authorized for it (authorized/<id>.key): what binds an id to its key."""
    return {path.stem: _load(path)[0].decode("ascii") for path in sorted((directory / "authorized").glob("*.key"))}


def configure_client(socket: zmq.Socket, directory: Path, client_id: str) -> None:
    """Make `socket` a CURVE client with its own pair, trusting the server's public key."""
    server_public, _ = _load(directory / "server.key")
    public, secret = _load(directory / "clients" / f"{client_id}.key_secret")
    socket.curve_secretkey, socket.curve_publickey, socket.curve_serverkey = secret, public, server_public
