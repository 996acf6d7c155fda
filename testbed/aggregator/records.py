"""Tabular records of a run: rounds.csv (one row per round) and clients.csv (per client per round).

Each time column names its clock: `_emulated_s` (the event clock: host wall seconds / the run's
dilation, the device and link speeds a run emulates) or `_host_s` (measured on this host).
"""

from __future__ import annotations

import csv
from pathlib import Path

# the aggregator's keys (its events' field names) -> the column that says which clock it is in
COLUMN_NAMES = {"started_t": "started_emulated_s", "wall_s": "round_emulated_s", "deadline_s": "deadline_emulated_s",
                "aggregate_s": "aggregate_host_s", "eval_s": "eval_host_s", "download_s": "download_emulated_s",
                "compute_s": "compute_emulated_s", "upload_s": "upload_emulated_s", "idle_s": "idle_emulated_s",
                "cpu_s": "cpu_host_s"}
CLIENT_COLUMNS = ["round", "client", "profile", "task", "status", "depth", "download_emulated_s", "compute_emulated_s",
                  "upload_emulated_s", "idle_emulated_s", "bytes_down", "bytes_up", "samples", "loss", "peak_mb",
                  "cpu_host_s", "overshoot"]
ROUND_COLUMNS = ["round", "started_emulated_s", "round_emulated_s", "deadline_emulated_s", "selected", "updates",
                 "stragglers", "lost", "bytes_down", "bytes_up", "dilation", "aggregate_host_s", "eval_host_s",
                 "digest"]


class Records:
    """Append-only CSV writers (flushed per row; a resumed run appends to the same files, under their header)."""

    def __init__(self, run_dir: Path, accuracy_columns: list[str]):
        self.round_columns = ROUND_COLUMNS + accuracy_columns
        self.rounds = self._open(run_dir / "rounds.csv", self.round_columns)
        self.clients = self._open(run_dir / "clients.csv", CLIENT_COLUMNS)

    @staticmethod
    def _open(path: Path, columns: list[str]):
        header = None
        if path.exists():
            with open(path, newline="", encoding="utf-8") as existing:
                header = next(csv.reader(existing), None)  # a directory of an older version keeps its column names
        file = open(path, "a", newline="", encoding="utf-8")
        writer = csv.DictWriter(file, header or columns, extrasaction="ignore")
        if not header:
            writer.writeheader()
        return file, writer

    @staticmethod
    def rounds_in(run_dir: Path) -> set[int]:
        """The rounds rounds.csv has a row for (none when it does not exist)."""
        path = run_dir / "rounds.csv"
        if not path.exists():
            return set()
        with open(path, newline="", encoding="utf-8") as file:
            return {int(row["round"]) for row in csv.DictReader(file) if (row.get("round") or "").isdigit()}

    def add(self, round_row: dict, client_rows: list[dict]) -> None:
        for (file, writer), rows in ((self.clients, client_rows), (self.rounds, [round_row])):
            # each value under its named column and under its key: a file's header takes whichever it has
            writer.writerows({**row, **{COLUMN_NAMES[k]: v for k, v in row.items() if k in COLUMN_NAMES}}
                             for row in rows)
            file.flush()

    def close(self) -> None:
        self.rounds[0].close()
        self.clients[0].close()


def accuracy_columns(tasks: list[str], exits: tuple[int, ...]) -> list[str]:
    return [f"acc_{task}_L{layer}" for task in tasks for layer in exits]
