"""Per-round overhead of the runtime itself: everything in a round that is not a device phase.

A round lasts from ROUND going out until its aggregate is checkpointed. Device phases are each
client's download, compute and upload (emulated seconds, as the emulation imposes them). The rest is
the runtime's: in the client on the critical path (loading received layers into the model, building
the optimizer, collecting and encoding the update: its elapsed time minus download and compute) and
in the aggregator after the last update (closing the round, aggregating, checkpointing). Evaluation
is reported apart by every run and is left out here too.

    python tools/runtime_overhead.py RUN_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    events = [json.loads(line) for line in (args.run_dir / "events.jsonl").read_text().splitlines()
              if line.endswith("}")]
    started = {e["round"]: e["t"] for e in events if e["kind"] == "round_started"}
    aggregated = {e["round"]: e["t"] for e in events if e["kind"] == "round_aggregated"}
    shares = []
    for index in sorted(aggregated):
        updates = [e for e in events if e["kind"] == "update_received" and e["round"] == index]
        if not updates:
            continue
        last = max(updates, key=lambda e: e["t"])
        client_overhead = last["t"] - started[index] - last["download_s"] - last["compute_s"] - last["upload_s"]
        aggregator_tail = aggregated[index] - last["t"]
        round_s = aggregated[index] - started[index]
        overhead = client_overhead + aggregator_tail
        shares.append(overhead / round_s)
        print(f"round {index}: {round_s:.2f} s; overhead {overhead:.3f} s = client {client_overhead:.3f} s "
              f"({last['client']}, the last to arrive) + aggregator {aggregator_tail:.3f} s: {overhead / round_s:.1%}")
    if shares:
        print(f"mean overhead share {sum(shares) / len(shares):.1%} (target < 5 %); all times emulated seconds")


if __name__ == "__main__":
    main()
