"""Link shaping inside the transport (user backend): how long a message takes on the profile's link.

Model, per message and direction (one-way):
    latency_ms / 2 + jitter + 8 x bytes / bandwidth + retransmissions
jitter ~ Normal(0, jitter_ms / 2), clipped so the one-way delay stays >= 0 (jitter_ms is the
"+-" spread, i.e. about two standard deviations). Loss: the payload travels in 1448-byte TCP
segments; each segment is lost with probability `loss`, and each loss costs one round trip (fast
retransmit: the sender learns of it from duplicate acks one RTT later). The shaper lets that many
emulated seconds pass on the client's clock (on a `RealClock`, dilation x as many host seconds).
"""

from __future__ import annotations

import math

import numpy as np

from testbed.config.schema import LinkSpec
from testbed.emulation.clock import Clock

SEGMENT_BYTES = 1448  # TCP payload per segment on a 1500-byte MTU with timestamps


class LinkModel:
    """Emulated one-way transfer times on one link; draws are reproducible from `seed`."""

    def __init__(self, link: LinkSpec, seed: int | list[int]):  # a list: NumPy's seed sequence, e.g. [seed, round]
        self.link = link
        self.rng = np.random.default_rng(seed)

    def transfer_s(self, nbytes: int, direction: str) -> float:
        """Emulated seconds for `nbytes` to cross the link, `direction` "down" or "up"."""
        if direction not in ("down", "up"):
            raise ValueError(f"direction must be 'down' or 'up' (got {direction!r})")
        link = self.link
        mbps = link.downlink_mbps if direction == "down" else link.uplink_mbps
        one_way = link.latency_ms / 2000.0
        if link.jitter_ms > 0:
            one_way = max(0.0, one_way + self.rng.normal(0.0, link.jitter_ms / 2000.0))
        serialisation = 8.0 * nbytes / (mbps * 1e6)
        retransmits = 0
        if link.loss > 0:
            retransmits = int(self.rng.binomial(max(1, math.ceil(nbytes / SEGMENT_BYTES)), link.loss))
        return one_way + serialisation + retransmits * link.latency_ms / 1000.0

    def expected_s(self, nbytes: int, direction: str) -> float:
        """Mean of transfer_s (no draw): what a client can plan with."""
        link = self.link
        mbps = link.downlink_mbps if direction == "down" else link.uplink_mbps
        segments = max(1, math.ceil(nbytes / SEGMENT_BYTES))
        return link.latency_ms / 2000.0 + 8.0 * nbytes / (mbps * 1e6) + segments * link.loss * link.latency_ms / 1000.0


class LinkShaper:
    """The transport's shaper for one client (user backend): each message waits its transfer time on `clock`.

    Also records the emulated seconds it imposed, per direction, so a client can report them.
    """

    def __init__(self, model: LinkModel, clock: Clock):
        self.model, self.clock = model, clock
        self.emulated_s = {"down": 0.0, "up": 0.0}

    def wait(self, nbytes: int, direction: str) -> None:
        seconds = self.model.transfer_s(nbytes, direction)  # emulated
        self.emulated_s[direction] += seconds
        self.clock.advance(seconds)
