"""Checkpoints after every aggregated round, so `testbed run --resume` loses no completed round."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def save_checkpoint(run_dir: Path, round_index: int, state: dict[str, np.ndarray], meta: dict) -> None:
    """Write state-<round>.npz, then atomically point checkpoint.json at it, then drop older states."""
    folder = run_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    name = f"state-{round_index:05d}.npz"
    with open(folder / (name + ".tmp"), "wb") as file:
        np.savez(file, **{key.replace(".", "/"): value for key, value in state.items()})
        file.flush()
        os.fsync(file.fileno())
    os.replace(folder / (name + ".tmp"), folder / name)
    pointer = folder / "checkpoint.json"
    pointer.with_suffix(".tmp").write_text(json.dumps({"round": round_index, "state": name, **meta}, indent=1))
    os.replace(pointer.with_suffix(".tmp"), pointer)
    for old in folder.glob("state-*.npz"):
        if old.name != name:
            old.unlink()


def load_checkpoint(run_dir: Path) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(meta, state) of the last completed round, or None when no round completed yet."""
    pointer = run_dir / "checkpoints" / "checkpoint.json"
    if not pointer.exists():
        return None
    meta = json.loads(pointer.read_text())
    with np.load(run_dir / "checkpoints" / meta["state"]) as arrays:
        state = {key.replace("/", "."): arrays[key] for key in arrays.files}
    return meta, state
