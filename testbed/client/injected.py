"""What a stress test injects into a running client, in one object the round asks at each point it matters.

Outside stress runs no control file exists (or no run directory is known), and this object is inert:
the compute keeps the profile's pace, the link its model, and the update goes out as trained, under
the client's own name. The control file's format: `testbed/emulation/injection.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from testbed.config.schema import LinkSpec
from testbed.emulation.injection import InjectedState
from testbed.emulation.link import LinkModel, LinkShaper


class StressInjection:
    def __init__(self, path: Path | None, link: LinkSpec, seed: int):
        self.state = InjectedState(path, link)
        self.seed = seed  # the client's: an injected link draws from it as the profile's link did
        self._fetched: dict[str, np.ndarray] | None = None  # a copy of the fetched layers, for a scaled step

    def take_up(self, shaper: LinkShaper) -> bool:
        """Re-read the control file (one stat call); on a change the link takes its new model. True: changed."""
        if not self.state.changed():
            return False
        shaper.model = LinkModel(self.state.link, self.seed)
        return True

    def slowed(self, throughput: float) -> float:
        """Host cores the device is worth under an injected slowdown."""
        return throughput / self.state.slowdown

    def keep_fetched(self, tensors: dict[str, np.ndarray]) -> None:
        """A lying client uploads a scaled step: it needs what it fetched (copies; the frames are let go)."""
        self._fetched = {k: v.copy() for k, v in tensors.items()} if self.state.lies_about_steps else None

    def tampered(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The update as uploaded (a stress test may corrupt it); the fetched copy is dropped."""
        fetched, self._fetched = self._fetched, None
        return self.state.tampered(tensors, fetched)

    def samples(self, trained: int) -> int:
        """The clip count the update claims: the truth unless a stress test makes the client lie."""
        return self.state.samples or trained

    def sender(self, client_id: str) -> str:
        """The name the update claims: an impostor's victim under a stress test, else `client_id`."""
        return self.state.impersonate or client_id
