"""The server's step: how far the global model moves towards the round's average (FedAvgM).

Any strategy yields an average θ̄ of what the round's clients uploaded; plain FedAvg takes it as the new
global model. The server step treats Δ = θ̄ − θ as a pseudo-gradient (Hsu et al. 2019, "Measuring the
Effects of Non-Identical Data Distribution for Federated Visual Classification"; Reddi et al. 2021,
"Adaptive Federated Optimization"):
    v ← β v + Δ,    θ ← θ + η v
with η the server learning rate and β the server momentum. η = 1, β = 0 is FedAvg, and returns the
strategy's average untouched (bit for bit). Why it exists: when clients' updates agree, averaging K of
them moves the model about as far as one client would, and η > 1 or β > 0 gives back distance. On
`paper_fleet`'s speaker task it does not (η = 4 ruins both tasks, β = 0.75 costs 6 points: measured in
docs/benchmarks.md, "Speaker information", "Server step"), so the defaults stay FedAvg's.

Depth-aware rule: a key nobody trained this round keeps its value and its velocity (a layer beyond every
client's depth is not moved by momentum it gathered from other rounds' clients). Integer buffers take the
average as it is. A step that leaves a weight non-finite ends the run with a ValueError naming the key
(the clients' updates were screened finite, so only η and β can have caused it). The velocity is part of the run's state: checkpoints carry it, so a resumed run steps
as the uninterrupted one would have.
"""

from __future__ import annotations

import numpy as np


class ServerStep:
    """θ ← θ + η v, v ← β v + (θ̄ − θ), key by key; `velocity` holds v for keys that have moved."""

    def __init__(self, learning_rate: float = 1.0, momentum: float = 0.0):
        if not (np.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"server learning rate {learning_rate}: allowed a finite number > 0")
        if not (0 <= momentum < 1):
            raise ValueError(f"server momentum {momentum}: allowed 0 <= momentum < 1")
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.velocity: dict[str, np.ndarray] = {}

    @property
    def plain(self) -> bool:
        """True for FedAvg's step (η = 1, β = 0): the average is the new state."""
        return self.learning_rate == 1.0 and self.momentum == 0.0

    def apply(self, current: dict[str, np.ndarray], averaged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The new global state from the current one and the strategy's average (every key of `current`)."""
        if self.plain:
            return averaged
        new_state = {}
        for key, old in current.items():
            mean = averaged[key]
            if mean is old or not np.issubdtype(np.asarray(old).dtype, np.inexact):
                new_state[key] = mean  # untrained this round (the strategy kept the array), or an integer buffer
                continue
            precision = np.promote_types(old.dtype, np.float32)  # float16 state steps in float32, as base.py sums
            step = np.subtract(mean, old, dtype=precision)  # Δ
            if self.momentum:
                previous = self.velocity.get(key)
                if previous is not None:
                    step += precision.type(self.momentum) * previous
                self.velocity[key] = step
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, by key
                moved = (old + precision.type(self.learning_rate) * step).astype(old.dtype, copy=False)
            if not np.isfinite(moved).all():  # the clients' updates were screened finite: the step overshot
                raise ValueError(f"the server step diverged: {key} is no longer finite (server learning rate "
                                 f"{self.learning_rate}, momentum {self.momentum}; lower them, 1 and 0 are FedAvg)")
            new_state[key] = moved
        return new_state
