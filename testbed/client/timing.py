"""One round's durations as a client measures them on its clock: what its UPDATE reports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RoundTiming:
    """Filled in phase by phase: fetch, train, upload. Emulated seconds unless named otherwise."""

    started: float  # clock.now() when the round's work began (ROUND arrived, or a lean client had reloaded)
    download_s: float = 0.0  # FETCH sent until the layers arrived
    compute_s: float = 0.0  # local training, paced
    cpu_s: float = 0.0  # host CPU seconds of local training
    overshoot: float = 1.0  # achieved over target compute time (> 1: the host starved the process)
    elapsed_s: float = 0.0  # since `started`, before the upload: lets the aggregator derive the upload time
    upload_s: float = 0.0  # the UPDATE's send, as this side saw it

    def reported(self) -> dict[str, float]:
        """The UPDATE's "timings" field (the aggregator checks these names)."""
        return {"download_s": self.download_s, "compute_s": self.compute_s, "elapsed_s": self.elapsed_s,
                "cpu_s": self.cpu_s, "overshoot": self.overshoot}

    def observed(self) -> dict[str, float]:
        """What the exit policy learns from: the reported timings and the upload."""
        return {**self.reported(), "upload_s": self.upload_s}
