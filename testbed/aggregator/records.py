"""Tabular records of a run: rounds.csv (one row per round) and clients.csv (per client per round)."""

from __future__ import annotations

import csv
from pathlib import Path

CLIENT_COLUMNS = ["round", "client", "profile", "task", "status", "depth", "download_s", "compute_s",
                  "upload_s", "idle_s", "bytes_down", "bytes_up", "samples", "loss", "peak_mb", "cpu_s", "overshoot"]
ROUND_COLUMNS = ["round", "started_t", "wall_s", "deadline_s", "selected", "updates", "stragglers", "lost",
                 "bytes_down", "bytes_up", "dilation", "aggregate_s", "eval_s", "digest"]


class Records:
    """Append-only CSV writers (flushed per row; a resumed run appends to the same files)."""

    def __init__(self, run_dir: Path, accuracy_columns: list[str]):
        self.round_columns = ROUND_COLUMNS + accuracy_columns
        self.rounds = self._open(run_dir / "rounds.csv", self.round_columns)
        self.clients = self._open(run_dir / "clients.csv", CLIENT_COLUMNS)

    @staticmethod
    def _open(path: Path, columns: list[str]):
        fresh = not path.exists()
        file = open(path, "a", newline="", encoding="utf-8")
        writer = csv.DictWriter(file, columns, extrasaction="ignore")
        if fresh:
            writer.writeheader()
        return file, writer

    def add(self, round_row: dict, client_rows: list[dict]) -> None:
        for (file, writer), rows in ((self.clients, client_rows), (self.rounds, [round_row])):
            writer.writerows(rows)
            file.flush()

    def close(self) -> None:
        self.rounds[0].close()
        self.clients[0].close()


def accuracy_columns(tasks: list[str], exits: tuple[int, ...]) -> list[str]:
    return [f"acc_{task}_L{layer}" for task in tasks for layer in exits]
