"""Events as a declared contract: what is written, what each consumer does with it."""

from testbed.monitor.state import fold

# a round of two clients in which c01's update is refused by the update screen, as the aggregator writes it
REJECTED_ROUND = [
    {"seq": 0, "t": 0.0, "wall": 100.0, "kind": "run_started", "scenario": "s", "rounds": 1, "exits": [1, 2],
     "clients": []},
    {"seq": 1, "t": 1.0, "wall": 101.0, "kind": "round_started", "round": 1, "selected": ["c00", "c01"],
     "deadline_s": 30.0},
    {"seq": 2, "t": 1.1, "wall": 101.1, "kind": "model_sent", "client": "c00", "round": 1, "depth": 2, "bytes": 10},
    {"seq": 3, "t": 1.2, "wall": 101.2, "kind": "model_sent", "client": "c01", "round": 1, "depth": 2, "bytes": 10},
    {"seq": 4, "t": 3.0, "wall": 103.0, "kind": "update_received", "client": "c00", "round": 1, "depth": 2,
     "bytes": 10, "samples": 8, "loss": 1.5, "download_s": 0.1, "compute_s": 1.5, "upload_s": 0.2, "peak_mb": None,
     "cpu_s": None, "overshoot": None},
    {"seq": 5, "t": 3.5, "wall": 103.5, "kind": "update_rejected", "client": "c01", "round": 1, "depth": 2,
     "check": "norm", "reason": "norm: layer 1 moved 1e6 x the fleet's"},
]


def test_a_rejected_update_finishes_the_client_before_the_round_closes():
    view = fold(REJECTED_ROUND)
    part = view.rounds[1].clients["c01"]
    assert part.status == "rejected"
    assert view.rounds[1].out() == []  # the round waits for nobody: both clients are done
    assert view.clients["c01"].state == "rejected"
