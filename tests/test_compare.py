"""testbed compare: metric functions on hand-made events, and one real comparison end to end."""

import json

import pytest

from testbed.compare.metrics import mean_std, relative_costs, run_metrics, task_exit, time_to_target

from runs import run


def _events():
    ready = {"kind": "client_ready", "client": "c00",
             "device": {"costs": {"2": {"step_cpu_s": 0.1, "peak_mb": 300}, "4": {"step_cpu_s": 0.4, "peak_mb": 500}}}}
    rows = [{"client": "c00", "status": "updated", "depth": 2, "download_s": 1, "compute_s": 2, "upload_s": 1,
             "idle_s": 4}]
    return [
        {"seq": 0, "t": 0.0, "kind": "run_started", "scenario": "s", "rounds": 2, "exits": [2, 4]},
        {"seq": 1, "t": 0.1, **ready},
        {"seq": 2, "t": 1.0, "kind": "round_started", "round": 1, "selected": ["c00"], "deadline_s": 10},
        {"seq": 3, "t": 5.0, "kind": "update_received", "client": "c00", "round": 1, "depth": 2},
        {"seq": 4, "t": 9.0, "kind": "round_closed", "round": 1, "wall_s": 8.0, "clients": rows,
         "bytes_down": 1000, "bytes_up": 1000},
        {"seq": 5, "t": 9.1, "kind": "round_aggregated", "round": 1, "digest": "a"},
        {"seq": 6, "t": 9.2, "kind": "evaluated", "round": 1, "accuracy": {"keyword": {"2": 0.5, "4": 0.6}},
         "eval_s": 0.0},
        {"seq": 7, "t": 10.0, "kind": "run_finished", "reason": "done"},
    ]


def test_a_task_is_judged_at_its_preferred_exit_or_the_deepest():
    assert task_exit(1, (2, 4, 6, 8)) == 2 and task_exit("auto", (2, 4, 6, 8)) == 8
    assert task_exit(None, (3, 6)) == 6 and task_exit(9, (3, 6)) == 6


def test_run_metrics_from_events():
    metrics = run_metrics(_events(), {"keyword": 2})
    assert metrics["tasks"]["keyword"]["final"] == 0.5
    assert metrics["mean_round_s"] == 8.0 and metrics["bytes"] == 2000
    assert metrics["wait_share"] == pytest.approx(4 / 8)  # idle over download + compute + upload + idle
    assert relative_costs(_events()) == {"compute_vs_full": pytest.approx(0.25), "memory_vs_full": pytest.approx(0.6)}


def test_time_to_target_and_mean_std():
    series = [(10.0, 0.3), (20.0, 0.55), (30.0, 0.5)]
    assert time_to_target(series, 0.5) == 20.0 and time_to_target(series, 0.9) is None
    assert mean_std([0.1, 0.3, None]) == (pytest.approx(0.2), pytest.approx(0.1414, abs=1e-4))
    assert mean_std([0.4]) == (0.4, 0.0) and mean_std([None]) is None


def test_compare_runs_each_strategy_and_writes_the_table_and_the_plot(write_scenario, tmp_path):
    scenario = write_scenario(exit_policy="{name: adaptive, preferred_exits: {keyword: 1}}")
    out = tmp_path / "cmp"
    result = run("compare", str(scenario), "--strategies", "fedavg_full,depth_aware,centralized", "--out", str(out),
                 timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    table = (out / "compare.md").read_text()
    assert "| task (exit) | fedavg_full | depth_aware | centralized |" in table
    assert "| keyword (L1) |" in table and "| speaker (L2) |" in table
    assert "time to target, keyword" in table
    figures = json.loads((out / "compare.json").read_text())
    assert set(figures["metrics"]) == {"fedavg_full", "depth_aware", "centralized"}
    assert all(len(runs) == 1 and runs[0]["status"] == "finished" for runs in figures["metrics"].values())
    assert (out / "accuracy_vs_time.png").stat().st_size > 10_000
    assert (out / "fedavg_full-s0" / "events.jsonl").exists() and (out / "depth_aware-s0" / "summary.json").exists()


def test_an_unknown_strategy_is_refused_in_one_line(write_scenario, tmp_path):
    result = run("compare", str(write_scenario()), "--strategies", "fedavg_full,nope", "--out", str(tmp_path / "c"))
    assert result.returncode == 2 and "unknown nope (allowed:" in result.stderr and "Traceback" not in result.stderr
