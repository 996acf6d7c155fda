"""Per-client compute seconds of a run against its profiles' speed ratios (same depth only).

For every round and depth, each client's emulated compute seconds are compared with the slowest
client's at that depth: achieved ratio = compute_slowest / compute_k, requested ratio =
(speed x threads)_k / (speed x threads)_slowest. Also printed: host CPU seconds, which show how
much of a deviation is the work itself (the same steps cost different CPU time under contention).

    python tools/compute_ratios.py RUN_DIR
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    fleet = {client["client_id"]: client["profile"] for client in json.loads((args.run_dir / "fleet.json").read_text())}
    demand = {cid: p["speed"] * p["threads"] for cid, p in fleet.items()}
    events = [json.loads(line) for line in (args.run_dir / "events.jsonl").read_text().splitlines() if line.endswith("}")]
    rows = defaultdict(list)  # (round, depth) -> update events
    for event in events:
        if event["kind"] == "update_received" and event.get("compute_s"):
            rows[event["round"], event["depth"]].append(event)
    worst = 0.0
    for (round_index, depth), updates in sorted(rows.items()):
        slowest = min(updates, key=lambda e: demand[e["client"]])
        print(f"round {round_index}, depth {depth}: reference {slowest['client']} "
              f"({fleet[slowest['client']]['name']}, {slowest['compute_s']:.2f} s)")
        for update in sorted(updates, key=lambda e: demand[e["client"]]):
            cid = update["client"]
            requested = demand[cid] / demand[slowest["client"]]
            achieved = slowest["compute_s"] / update["compute_s"]
            error = achieved / requested - 1
            worst = max(worst, abs(error))
            print(f"  {cid} {fleet[cid]['name']:<17} compute {update['compute_s']:6.2f} s  cpu {update.get('cpu_s', 0):5.2f} s"
                  f"  ratio requested {requested:5.2f} achieved {achieved:5.2f} ({error:+.1%})"
                  f"  overshoot {update.get('overshoot', 1):.2f}")
    print(f"worst ratio error: {worst:.1%}")


if __name__ == "__main__":
    main()
