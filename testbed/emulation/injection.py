"""Changes injected into a running client from outside (stress tests): slower compute, a worse link, lies.

The injector writes `RUN_DIR/control/<client>.json`, e.g. {"slowdown": 10} or
{"link": {"uplink_mbps": 0.1, "downlink_mbps": 0.1}}; the client re-reads it whenever the file
changes (checked when a round starts and after every local step: one stat call). Fields:
  slowdown: float >= 1, compute takes this many times longer than the profile says (1 = none);
  link: any LinkSpec fields to override on the client's link (0 < bandwidth, latency >= 0);
  scale: float > 0, the client multiplies its uploaded weights by it (a broken or hostile client
         whose update the aggregator's screen must reject; 1 = none);
  step_scale: float >= 0, the client uploads fetched + step_scale x (trained - fetched): 0 sends back
         the model it fetched, 1e-4 a tiny step (1 = none);
  samples: int >= 1, the number of clips the client claims each update was trained on (None = the truth);
  impersonate: a client id the client claims to be when it uploads (a JOIN with its own credential,
         then its UPDATE; None = itself).
  t: emulated seconds of the run when the stress test scripted the latest change (event clock only: a
         client reads the file some host time later, and bills a compute phase that began after `t` at
         the new slowdown throughout; absent: the change holds from when it is read).
Every field but slowdown and link makes a lying or broken client, whose lies the aggregator must refuse.
An invalid file is logged and ignored (the previous state holds): the run never crashes over it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from testbed.config.schema import LinkSpec

log = logging.getLogger("testbed.client")
LINK_FIELDS = ("downlink_mbps", "uplink_mbps", "latency_ms", "jitter_ms", "loss")


def control_path(run_dir: Path, client_id: str) -> Path:
    return Path(run_dir) / "control" / f"{client_id}.json"


def write_injection(run_dir: Path, client_id: str, **fields) -> None:
    """Atomically replace a client's injected state (what `testbed stress` calls)."""
    path = control_path(run_dir, client_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(fields))
    partial.replace(path)


class InjectedState:
    """The client's view of its control file: `changed()` re-reads it when its mtime moved."""

    def __init__(self, path: Path | None, base_link: LinkSpec):
        self.path, self.base_link = path, base_link
        self.slowdown, self.link, self.scale = 1.0, base_link, 1.0
        self.step_scale = 1.0
        self.samples: int | None = None
        self.impersonate: str | None = None
        self.since_t: float | None = None  # emulated seconds: when the latest change was scripted (field `t`)
        self._seen: float | None = None

    def changed(self) -> bool:
        """True when the file changed and was applied (callers then update throttles and shapers)."""
        if self.path is None:
            return False
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self._seen:
            return False
        self._seen = mtime
        try:
            fields = json.loads(self.path.read_text())
            slowdown = float(fields.get("slowdown", 1.0))
            if not slowdown >= 1.0:
                raise ValueError(f"slowdown {slowdown} must be >= 1")
            scale = float(fields.get("scale", 1.0))
            if not 0 < scale < float("inf"):
                raise ValueError(f"scale {scale} must be > 0 and finite")
            step_scale = float(fields.get("step_scale", 1.0))
            if not 0 <= step_scale < float("inf"):
                raise ValueError(f"step_scale {step_scale} must be >= 0 and finite")
            samples = fields.get("samples")
            if samples is not None and not (type(samples) is int and samples >= 1):
                raise ValueError(f"samples {samples!r} must be an integer >= 1")
            since_t = fields.get("t")
            if since_t is not None and not (type(since_t) in (int, float) and 0 <= since_t < float("inf")):
                raise ValueError(f"t {since_t!r} must be emulated seconds >= 0")
            impersonate = fields.get("impersonate")
            if impersonate is not None and not isinstance(impersonate, str):
                raise ValueError(f"impersonate {impersonate!r} must be a client id")
            link_fields = fields.get("link", {})
            unknown = set(link_fields) - set(LINK_FIELDS)
            if unknown:
                raise ValueError(f"unknown link fields {sorted(unknown)} (allowed: {', '.join(LINK_FIELDS)})")
            overrides = {k: float(v) for k, v in link_fields.items()}
            # named one by one: replace()'s keywords are checked against LinkSpec, whose str fields no float fits
            base = self.base_link
            link = dataclasses.replace(
                base, downlink_mbps=overrides.get("downlink_mbps", base.downlink_mbps),
                uplink_mbps=overrides.get("uplink_mbps", base.uplink_mbps),
                latency_ms=overrides.get("latency_ms", base.latency_ms),
                jitter_ms=overrides.get("jitter_ms", base.jitter_ms), loss=overrides.get("loss", base.loss))
            if link.downlink_mbps <= 0 or link.uplink_mbps <= 0 or link.latency_ms < 0 or not 0 <= link.loss < 1:
                raise ValueError("bandwidths must be > 0, latency >= 0, 0 <= loss < 1")
        except (OSError, ValueError, TypeError, AttributeError) as error:
            log.warning("ignored %s: %s", self.path, error)
            return False
        self.slowdown, self.link, self.scale = slowdown, link, scale
        self.step_scale, self.samples, self.impersonate = step_scale, samples, impersonate
        self.since_t = None if since_t is None else float(since_t)
        log.info("injected: slowdown %.2f, link %s, update scale %g, step scale %g, claimed samples %s, "
                 "impersonating %s", slowdown, link, scale, step_scale, samples, impersonate)
        return True

    def tampered(self, tensors: dict[str, np.ndarray], fetched: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """The update as this (possibly broken or hostile) client uploads it: new arrays, never the model's own."""
        if self.step_scale != 1.0 and fetched is not None:
            tensors = {key: fetched[key] + value.dtype.type(self.step_scale) * (value - fetched[key])
                       if value.dtype.kind == "f" else value for key, value in tensors.items()}
        if self.scale != 1.0:
            tensors = {key: value * value.dtype.type(self.scale) if value.dtype.kind == "f" else value
                       for key, value in tensors.items()}
        return tensors

    @property
    def lies_about_steps(self) -> bool:
        """The client must keep a copy of what it fetched (to upload a scaled step)."""
        return self.step_scale != 1.0
