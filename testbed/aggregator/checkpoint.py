"""Checkpoints after every aggregated round, so `testbed run --resume` loses no completed round.

A checkpoint is trusted only when it can be tied to its run: checkpoint.json carries the run id (run.json, made
with the run directory), the scenario's digest, the round, the global state's digest and the state file's SHA-256,
and a resume checks each against this run directory, its events and the file before it loads any state.

checkpoint.json also carries the aggregator's round state that is not in the weights but decides later rounds
(`carried`: the current time dilation, the update screen's reference norms and, on the event clock, when each
client's last upload ended), with its own SHA-256, so that a resumed run continues as the uninterrupted one would
have. The server step's velocity (strategies/server_step.py), when the run has momentum, is saved beside the
global state in the same state file, under VELOCITY keys. What the events already record is not repeated here:
the `auto` preferred exits follow from the `evaluated` events, and selection and every client's draws are seeded
per round. The clients' own measurements (step costs, memory peaks, the adaptive policy's moving averages of
measured times) are host measurements, not state: a resumed client measures afresh, as every client of a fresh
run does, so the adaptive policy's depths are reproduced only as far as the host's timings are.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from testbed.config.loader import scenario_to_dict
from testbed.config.schema import Scenario

RUN_FILE = "run.json"  # {"run_id", "scenario", "created"}: who this run directory is
POINTER = "checkpoints/checkpoint.json"
IDENTITY = ("run_id", "scenario")  # the fields that tie a checkpoint to its run
VELOCITY = "server_velocity."  # prefix of the server step's velocity arrays in a state file (no model key has it)


class CheckpointRefused(Exception):
    """A checkpoint that cannot be tied to this run, or does not hold what it says: one line naming the mismatch.

    The aggregator records it as the run's `run_failed` event; the run then ends failed (exit code 1)."""

    def __init__(self, problem: str):
        super().__init__(f"checkpoint refused: {problem}")


@dataclass
class Checkpoint:
    round: int
    digest: str  # of the global state after `round` (GlobalModel.digest), as the events recorded it
    state: dict[str, np.ndarray]
    source: str  # the state file, relative to the run directory (for messages)
    carried: dict = field(default_factory=dict)  # the aggregator's round state (empty: a checkpoint without one)
    velocity: dict[str, np.ndarray] = field(default_factory=dict)  # the server step's, by state key (empty: none)


def scenario_digest(scenario: Scenario) -> str:
    """SHA-256 of the scenario's canonical JSON (16 hex digits, like a state digest): equal runs, equal digests."""
    canonical = json.dumps(scenario_to_dict(scenario), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def write_run_identity(run_dir: Path, scenario: Scenario) -> None:
    """run.json for a new run directory: a fresh run id and the digest of the scenario it runs."""
    identity = {"run_id": uuid.uuid4().hex, "scenario": scenario_digest(scenario),
                "created": datetime.now().astimezone().isoformat(timespec="seconds")}
    (run_dir / RUN_FILE).write_text(json.dumps(identity, indent=1))


def read_run_identity(run_dir: Path) -> dict[str, str] | None:
    """run_id and scenario digest from run.json; None when the run directory has none (made before run ids)."""
    path = run_dir / RUN_FILE
    if not path.exists():
        return None
    try:
        identity = json.loads(path.read_text())
    except OSError as error:
        raise CheckpointRefused(f"{RUN_FILE} is unreadable ({error.strerror})") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointRefused(f"{RUN_FILE} is not valid JSON ({error})") from None
    if not isinstance(identity, dict) or not all(isinstance(identity.get(key), str) for key in IDENTITY):
        raise CheckpointRefused(f"{RUN_FILE} must hold the strings {' and '.join(IDENTITY)}")
    return {key: identity[key] for key in IDENTITY}


def carried_digest(carried: dict) -> str:
    """SHA-256 of the carried state's canonical JSON: any edit of checkpoint.json's `carried` changes it."""
    return hashlib.sha256(json.dumps(carried, separators=(",", ":"), allow_nan=False).encode()).hexdigest()


def save_checkpoint(run_dir: Path, round_index: int, state: dict[str, np.ndarray], meta: dict,
                    carried: dict | None = None, velocity: dict[str, np.ndarray] | None = None) -> None:
    """Write state-<round>.npz (with the server step's `velocity`, if any), then atomically point checkpoint.json
    at it (stamped with run.json's identity, with the aggregator's `carried` round state and its digest), then
    drop older states."""
    identity = read_run_identity(run_dir)
    if identity is None:
        raise FileNotFoundError(f"{run_dir / RUN_FILE}: a checkpoint must name its run")
    folder = run_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    name = f"state-{round_index:05d}.npz"
    with open(folder / (name + ".tmp"), "wb") as file:
        # allow_pickle: numpy's default, named so that mypy does not match the ** of arrays against that bool
        # (the state is numeric arrays, and _read_state refuses pickles anyway)
        arrays = {**state, **{VELOCITY + key: value for key, value in (velocity or {}).items()}}
        np.savez(file, allow_pickle=True, **{key.replace(".", "/"): value for key, value in arrays.items()})
        file.flush()
        os.fsync(file.fileno())
    os.replace(folder / (name + ".tmp"), folder / name)
    sha256 = hashlib.sha256((folder / name).read_bytes()).hexdigest()  # any changed byte, not only the weights'
    pointer = folder / "checkpoint.json"
    carried = carried or {}
    pointer.with_suffix(".tmp").write_text(json.dumps({"round": round_index, "state": name, "sha256": sha256, **meta,
                                                       **identity, "carried": carried,
                                                       "carried_sha256": carried_digest(carried)}, indent=1))
    os.replace(pointer.with_suffix(".tmp"), pointer)
    for old in folder.glob("state-*.npz"):
        if old.name != name:
            old.unlink()


def load_checkpoint(run_dir: Path, scenario: Scenario, events: list[dict]) -> Checkpoint | None:
    """The last completed round's checkpoint, checked against this run; None when no round completed yet.

    `events` are the run's events so far (events.jsonl): the checkpoint must be of the last round they
    record as aggregated, with that round's digest. Anything else raises CheckpointRefused."""
    aggregated = [e for e in events if isinstance(e, dict) and e.get("kind") == "round_aggregated"]
    last = aggregated[-1] if aggregated else {"round": 0, "digest": None}
    if not (run_dir / POINTER).exists():
        if aggregated:
            raise CheckpointRefused(f"{POINTER} is missing, but this run aggregated round {last['round']} "
                                    "(events.jsonl): its global state cannot be restored")
        return None  # stopped before its first round: start afresh
    meta = _read_pointer(run_dir)
    _check_identity(run_dir, meta, scenario)
    if meta["round"] != last["round"]:
        raise CheckpointRefused(f"{POINTER} says round {meta['round']}, but the last round this run aggregated "
                                f"is {last['round']} (events.jsonl)")
    if meta["digest"] != last["digest"]:
        raise CheckpointRefused(f"{POINTER} says global state {meta['digest']} for round {meta['round']}, but "
                                f"events.jsonl recorded {last['digest']}")
    arrays = _read_state(run_dir, meta)
    velocity = {key[len(VELOCITY):]: arrays.pop(key) for key in list(arrays) if key.startswith(VELOCITY)}
    return Checkpoint(meta["round"], meta["digest"], arrays, f"checkpoints/{meta['state']}", _read_carried(meta),
                      velocity)


def _read_pointer(run_dir: Path) -> dict:
    try:
        meta = json.loads((run_dir / POINTER).read_text())
    except OSError as error:
        raise CheckpointRefused(f"{POINTER} is unreadable ({error.strerror})") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointRefused(f"{POINTER} is not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise CheckpointRefused(f"{POINTER} must hold a JSON object, not {type(meta).__name__}")
    missing = [key for key in IDENTITY if key not in meta]
    if missing:
        raise CheckpointRefused(f"{POINTER} has no {' and no '.join(missing)}: it predates checkpoints tied to "
                                "their run and cannot be trusted (start the scenario afresh)")
    for key, kind in (("round", int), ("state", str), ("sha256", str), ("digest", str), ("run_id", str),
                      ("scenario", str)):
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, int) and value < 1):
            expected = "a round number >= 1" if kind is int else "a string"
            raise CheckpointRefused(f"{POINTER}: {key} is {value!r}; expected {expected}")
    return meta


def _check_identity(run_dir: Path, meta: dict, scenario: Scenario) -> None:
    identity = read_run_identity(run_dir)
    if identity is None:
        raise CheckpointRefused(f"{RUN_FILE} is missing: {POINTER} cannot be tied to this run (run directories "
                                "made before run ids cannot be resumed)")
    if meta["run_id"] != identity["run_id"]:
        raise CheckpointRefused(f"{POINTER} belongs to run {meta['run_id']}, but this run directory is run "
                                f"{identity['run_id']} ({RUN_FILE}): it was copied from another run")
    digest = scenario_digest(scenario)
    if meta["scenario"] != digest:
        raise CheckpointRefused(f"{POINTER} was written for scenario {meta['scenario']}, but scenario.yaml is now "
                                f"{digest}: the scenario was edited after the run started")


def _read_carried(meta: dict) -> dict:
    """The carried round state, checked against its digest and for its kinds (dilation: a number > 0; screen:
    {group: {client: norm >= 0}}; busy_until: {client: run time >= 0}); {} for a checkpoint written before round
    state was carried."""
    if "carried" not in meta:
        return {}
    carried = meta["carried"]
    if not isinstance(carried, dict):
        raise CheckpointRefused(f"{POINTER}: carried is {type(carried).__name__}; expected a JSON object")
    try:
        digest = carried_digest(carried)
    except ValueError as error:  # NaN or Infinity: never written by save_checkpoint
        raise CheckpointRefused(f"{POINTER}: carried state is not valid JSON ({error})") from None
    if digest != meta.get("carried_sha256"):
        raise CheckpointRefused(f"{POINTER}: carried state has SHA-256 {digest[:16]}..., but carried_sha256 says "
                                f"{str(meta.get('carried_sha256'))[:16]}... (the carried state was altered)")
    dilation = carried.get("dilation", 1.0)
    if not _number(dilation) or dilation <= 0:
        raise CheckpointRefused(f"{POINTER}: carried dilation is {dilation!r}; expected a number > 0")
    screen = carried.get("screen", {})
    if not (isinstance(screen, dict) and all(isinstance(norms, dict) and all(
            isinstance(client, str) and _number(norm) and norm >= 0 for client, norm in norms.items())
            for norms in screen.values())):
        raise CheckpointRefused(f"{POINTER}: carried screen must map each group to {{client: norm >= 0}}")
    busy = carried.get("busy_until", {})
    if not (isinstance(busy, dict) and all(isinstance(client, str) and _number(t) and t >= 0
                                           for client, t in busy.items())):
        raise CheckpointRefused(f"{POINTER}: carried busy_until must map each client to a run time >= 0 (seconds)")
    return carried


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_state(run_dir: Path, meta: dict) -> dict[str, np.ndarray]:
    expected = f"state-{meta['round']:05d}.npz"  # the name save_checkpoint gave it: nothing else is ever loaded
    if meta["state"] != expected:
        raise CheckpointRefused(f"{POINTER} names state {meta['state']!r}; allowed: {expected!r} in checkpoints/")
    path = run_dir / "checkpoints" / expected
    shown = f"checkpoints/{expected}"
    if path.is_symlink() or path.resolve().parent != run_dir.resolve() / "checkpoints":
        raise CheckpointRefused(f"{shown} is a link; allowed: a plain file inside checkpoints/")
    if not path.is_file():
        raise CheckpointRefused(f"{shown} is missing")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 != meta["sha256"]:
        raise CheckpointRefused(f"{shown} is corrupt: its SHA-256 is {sha256[:16]}..., but {POINTER} says "
                                f"{meta['sha256'][:16]}... (a truncated, altered or replaced file)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return {key.replace("/", "."): arrays[key] for key in arrays.files}
    except Exception as error:
        raise CheckpointRefused(f"{shown} is corrupt ({type(error).__name__}: {error})") from None
