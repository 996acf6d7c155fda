"""What a JOIN must prove before its connection is bound to a client id.

Three modes, one per way the aggregator is started:
  token  `testbed run`: the launcher gave each client process a secret of its own (never on a command line,
         in the environment or in a file) and the aggregator all of them; a JOIN carries its client's.
  curve  `testbed aggregator --keys DIR`: the connection authenticated with a CURVE key (ZAP), which must be
         the one in DIR/authorized/<client id>.key.
  none   `testbed aggregator` on loopback without keys: nothing to check; any local process may join as
         any client (said at start, and recorded as `auth: none` in run_started).
"""

from __future__ import annotations

import hmac
from pathlib import Path


class Credentials:
    def __init__(self, mode: str, secrets: dict[str, str] | None = None):
        self.mode = mode
        self._secrets = secrets or {}  # token: client id -> its token; curve: client id -> its z85 public key

    @classmethod
    def tokens(cls, tokens: dict[str, str]) -> Credentials:
        return cls("token", dict(tokens))

    @classmethod
    def curve(cls, directory: Path) -> Credentials:
        from testbed.transport.keys import authorized_keys

        return cls("curve", authorized_keys(Path(directory)))

    @classmethod
    def none(cls) -> Credentials:
        return cls("none")

    def refusal(self, client_id: str, body: dict, user_id: str | None) -> str | None:
        """Why a JOIN claiming `client_id` proves nothing (None: it proves it). `user_id`: its CURVE key, if any."""
        if self.mode == "none":
            return None
        expected = self._secrets.get(client_id)
        if self.mode == "token":
            token = body.get("token")
            if not isinstance(token, str):
                return "no token (`testbed run` gives each client process its own: one it did not start has none)"
            if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
                return "wrong token"
            return None
        if expected is None:
            return f"no CURVE key is authorized for {client_id!r} (authorized/{client_id}.key)"
        if user_id is None or not hmac.compare_digest(user_id.encode(), expected.encode()):
            holder = next((cid for cid, key in self._secrets.items() if key == user_id), None)
            if holder is not None:
                return f"its CURVE key is authorized for {holder!r}, not for {client_id!r}"
            return f"its CURVE key is not the one authorized for {client_id!r} (authorized/{client_id}.key)"
        return None
