"""testbed compare: metric functions on hand-made events, the compare directory from hand-made runs,
and one real comparison end to end."""

import json

import pytest

from testbed.compare.figures import RunRecord
from testbed.compare.metrics import (DepthTotals, costs_vs_full, error_table, mean_curve, mean_std,
                                     relative_depth_costs, run_metrics, targets, task_exit, time_to_target)
from testbed.compare.runner import write_comparison
from testbed.config.loader import load_scenario

from runs import run


def _row(client, depth, *, compute_s, idle_s, samples=40, cpu_s=None, peak_mb=None, status="updated"):
    return {"client": client, "status": status, "depth": depth, "download_s": 1.0, "compute_s": compute_s,
            "upload_s": 1.0, "idle_s": idle_s, "samples": samples, "cpu_s": cpu_s, "peak_mb": peak_mb,
            "bytes_down": 500, "bytes_up": 500}


def _run_events(accuracies, rows_per_round=None, exits=(2, 4), ending="run_finished", round_s=10.0):
    """A run: one round per entry of `accuracies` ({task: {layer: accuracy}}), each `round_s` long and
    evaluated for 1 s; `rows_per_round` gives each round's client rows."""
    events = [{"kind": "run_started", "t": 0.0, "scenario": "s", "rounds": len(accuracies), "exits": list(exits)}]
    for index, accuracy in enumerate(accuracies, start=1):
        start = (round_s + 1) * (index - 1)
        rows = (rows_per_round or [[]] * len(accuracies))[index - 1]
        events += [
            {"kind": "round_started", "t": start, "round": index, "selected": [r["client"] for r in rows],
             "deadline_s": 10},
            {"kind": "round_closed", "t": start + round_s, "round": index, "wall_s": round_s, "clients": rows,
             "bytes_down": 500 * len(rows), "bytes_up": 500 * len(rows),
             "updates": sum(r["status"] == "updated" for r in rows),
             "stragglers": sum(r["status"] == "straggler" for r in rows)},
            {"kind": "round_aggregated", "t": start + round_s, "round": index, "digest": "d"},
            {"kind": "evaluated", "t": start + round_s + 1, "round": index, "eval_s": 1.0,
             "accuracy": {task: {str(layer): value for layer, value in by_exit.items()}
                          for task, by_exit in accuracy.items()}}]
    events.append({"kind": ending, "t": (round_s + 1) * len(accuracies), "reason": "done"})
    return [{"seq": i, **event} for i, event in enumerate(events)]


def test_a_task_is_judged_at_its_preferred_exit_or_the_deepest():
    assert task_exit(1, (2, 4, 6, 8)) == 2 and task_exit("auto", (2, 4, 6, 8)) == "auto"
    assert task_exit(None, (3, 6)) == 6 and task_exit(9, (3, 6)) == 6


def test_an_auto_task_is_judged_where_the_rule_put_it_at_the_last_evaluation_and_at_its_best_exit():
    # as a real-speech fleet read: L8 71.6 % error, while the auto-chosen L6 (where the clients trained) 38.6 %
    last = {2: 0.30, 4: 0.5, 6: 0.614, 8: 0.284}
    metrics = run_metrics(_run_events([{"keyword": {2: 0.2, 4: 0.3, 6: 0.35, 8: 0.2}}, {"keyword": last}]),
                          {"keyword": "auto"})
    assert metrics["tasks"]["keyword"] == {"exit": 6, "final": 0.614, "series": [(10.0, 0.35), (20.0, 0.614)],
                                           "best_exit": 6, "best_final": 0.614}
    # within 1 point of the best, the shallower exit is the rule's pick; the best exit is the most accurate
    close = run_metrics(_run_events([{"keyword": {2: 0.1, 4: 0.605, 6: 0.61}}]), {"keyword": "auto"})
    assert (close["tasks"]["keyword"]["exit"], close["tasks"]["keyword"]["best_exit"]) == (4, 6)
    assert run_metrics(_run_events([]), {"keyword": "auto"})["tasks"]["keyword"]["exit"] is None


def test_run_metrics_follow_the_task_exit_and_leave_evaluation_time_out():
    metrics = run_metrics(_run_events([{"keyword": {2: 0.5, 4: 0.6}}, {"keyword": {2: 0.7, 4: 0.65}}]),
                          {"keyword": 2})
    # each round took 10 s, each evaluation 1 s: evaluated models were ready at 10 s and 20 s of training
    assert metrics["tasks"]["keyword"] == {"exit": 2, "final": 0.7, "series": [(10.0, 0.5), (20.0, 0.7)],
                                           "best_exit": 2, "best_final": 0.7}
    assert metrics["mean_round_s"] == 10.0 and metrics["status"] == "finished"
    assert run_metrics(_run_events([{"keyword": {2: 0.5}}], ending="run_failed"), {"keyword": 2})["status"] == "failed"


def test_straggler_wait_share_is_idle_over_all_client_seconds():
    # a fast client waits 6 s for a slow one; the straggler that never delivered does not count
    rows = [_row("fast", 2, compute_s=2.0, idle_s=6.0), _row("slow", 4, compute_s=8.0, idle_s=0.0),
            _row("late", 4, compute_s=0.0, idle_s=0.0, status="straggler")]
    metrics = run_metrics(_run_events([{"keyword": {2: 0.5}}], [rows]), {"keyword": 2})
    assert metrics["wait_share"] == pytest.approx(6.0 / (1 + 2 + 1 + 6 + 1 + 8 + 1 + 0))
    assert metrics["bytes"] == 3000


def test_time_to_target_and_mean_std():
    series = [(10.0, 0.3), (20.0, 0.55), (30.0, 0.5)]
    assert time_to_target(series, 0.5) == 20.0 and time_to_target(series, 0.9) is None
    assert mean_std([0.1, 0.3, None]) == (pytest.approx(0.2), pytest.approx(0.1414, abs=1e-4))
    assert mean_std([0.4]) == (0.4, 0.0) and mean_std([None]) is None
    assert mean_curve([[(10.0, 0.2), (20.0, 0.4)], [(12.0, 0.4)]]) == [(11.0, pytest.approx(0.3))]


def test_error_table_is_mean_and_std_over_seeds_per_task_and_strategy():
    def final(keyword, speaker):
        return {"tasks": {"keyword": {"final": keyword}, "speaker": {"final": speaker}}}

    metrics = {"fedavg_full": [final(0.9, 0.6), final(0.8, 0.7)], "depth_aware": [final(0.85, None)]}
    table = error_table(metrics, ["keyword", "speaker"])
    assert table["keyword"]["fedavg_full"] == (pytest.approx(0.15), pytest.approx(0.0707, abs=1e-4))
    assert table["speaker"]["fedavg_full"] == (pytest.approx(0.35), pytest.approx(0.0707, abs=1e-4))
    assert table["keyword"]["depth_aware"] == (pytest.approx(0.15), 0.0)
    assert table["speaker"]["depth_aware"] is None
    assert targets(metrics, ["keyword"], None) == {"keyword": pytest.approx(0.85 - 0.02)}
    assert targets(metrics, ["keyword"], 0.5) == {"keyword": 0.5}
    assert targets({"layerwise": metrics["depth_aware"]}, ["keyword"], None) == {"keyword": None}
    assert targets({"fedavg_full": [final(0.01, 0.5)]}, ["keyword"], None) == {"keyword": None}  # not above 0


def test_compute_and_memory_relative_to_full_depth_from_round_rows():
    rows = [_row("a", 2, compute_s=9.0, idle_s=0, samples=40, cpu_s=4.0, peak_mb=300.0),
            _row("b", 2, compute_s=3.0, idle_s=0, samples=40, cpu_s=4.0, peak_mb=340.0),
            _row("c", 4, compute_s=2.0, idle_s=0, samples=40, cpu_s=16.0, peak_mb=400.0),
            _row("d", 4, compute_s=2.0, idle_s=0, samples=20, cpu_s=None, peak_mb=None)]  # reported no CPU or peak
    depths = run_metrics(_run_events([{"keyword": {2: 0.5}}], [rows]), {"keyword": 2})["depths"]
    assert depths[2] == DepthTotals(updates=2, samples=80, cpu_s=8.0, cpu_samples=80, compute_s=12.0,
                                    peak_mb=640.0, peaks=2)
    assert depths[4].cpu_per_sample == 0.4 and depths[4].compute_per_sample == pytest.approx(4.0 / 60)
    relative = relative_depth_costs(depths, depths[4])
    assert relative[2]["compute_vs_full"] == pytest.approx(0.1 / 0.4)  # host CPU s per clip, not device seconds
    assert relative[2]["memory_vs_full"] == pytest.approx(320.0 / 400.0)
    assert relative[4]["compute_vs_full"] == 1.0
    whole = costs_vs_full(depths, depths[4])
    assert whole["compute_vs_full"] == pytest.approx((24.0 / 120) / 0.4)
    assert whole["memory_vs_full"] == pytest.approx((1040.0 / 3) / 400.0)
    assert costs_vs_full({}, depths[4]) == {"compute_vs_full": None, "memory_vs_full": None}
    assert costs_vs_full(depths, None) == {"compute_vs_full": None, "memory_vs_full": None}


def _write_run(directory, events):
    directory.mkdir()
    (directory / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return str(directory)


def test_the_compare_directory_from_hand_made_runs_lists_a_failed_run(tmp_path, write_scenario):
    scenario = load_scenario(write_scenario(exit_policy="{name: adaptive, preferred_exits: {keyword: 1}}"), [])
    full = [[_row("c00", 2, compute_s=2, idle_s=0, cpu_s=8.0, peak_mb=400.0)]]
    shallow = [[_row("c00", 1, compute_s=1, idle_s=1, cpu_s=2.0, peak_mb=300.0)]]
    accuracy = lambda keyword: [{"keyword": {1: keyword, 2: 0.1}, "speaker": {1: 0.2, 2: 0.3}}]  # noqa: E731
    records = [
        RunRecord("fedavg_full", 0, "fedavg_full-s0",
                  _write_run(tmp_path / "f0", _run_events(accuracy(0.8), full, (1, 2))), "finished"),
        RunRecord("fedavg_full", 1, "fedavg_full-s1",
                  _write_run(tmp_path / "f1", _run_events(accuracy(0.6), full, (1, 2))), "finished"),
        RunRecord("depth_aware", 0, "depth_aware-s0",
                  _write_run(tmp_path / "d0", _run_events(accuracy(0.75), shallow, (1, 2), round_s=4.0)), "finished"),
        RunRecord("depth_aware", 1, "depth_aware-s1", None, "failed", "RuntimeError: boom"),
    ]
    out = tmp_path / "cmp"
    out.mkdir()
    figures = write_comparison(out, scenario, ["fedavg_full", "depth_aware"], records, None)
    table = (out / "compare.md").read_text()
    assert "| task (exit) | fedavg_full | depth_aware |" in table
    assert "| keyword (L1) | 30.0 ± 14.1 | 25.0 ± 0.0 |" in table  # errors 20 % and 40 %; 25 %
    assert "| speaker (L2) | 70.0 ± 0.0 | 70.0 ± 0.0 |" in table
    assert figures["targets"]["keyword"] == pytest.approx(0.68)  # fedavg_full's mean final 70 % minus 2 points
    assert "| time to 68.0%, keyword, s | 10.0 ± 0.0 (1/2 reached) | 4.0 ± 0.0 (1/1 reached) |" in table
    assert "| time to 68.0%, keyword, vs fedavg_full | 1.00x | 0.40x |" in table
    assert "| mean round time vs fedavg_full | 1.00x | 0.40x |" in table
    assert "| client compute vs full depth, % | 100 ± 0 | 25 ± 0 |" in table
    assert "| client peak memory vs full depth, % | 100 ± 0 | 75 ± 0 |" in table
    assert "- depth_aware-s1: failed: RuntimeError: boom (not in the tables)" in table
    assert figures["strategies"]["depth_aware"]["runs"] == 1
    assert (out / "accuracy_vs_time.png").stat().st_size > 10_000
    assert json.loads((out / "compare.json").read_text())["runs"][3]["error"] == "RuntimeError: boom"


def test_compare_runs_each_strategy_and_writes_the_table_and_the_plot(write_scenario, tmp_path):
    scenario = write_scenario(exit_policy="{name: adaptive, preferred_exits: {keyword: 1}}",
                              fleet="[{profile: laptop}, {profile: rpi4, task: speaker}]")
    out = tmp_path / "cmp"
    result = run("compare", str(scenario), "--strategies", "fedavg_full,depth_aware,centralized", "--out", str(out),
                 timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    table = (out / "compare.md").read_text()
    assert "| task (exit) | fedavg_full | depth_aware | centralized |" in table
    assert "| keyword (L1) |" in table and "| speaker (L2) |" in table
    assert "host's wall seconds of training" in table
    assert ", keyword, s |" in table  # 3 words: fedavg_full's keyword accuracy is above 2 %, so there is a target
    figures = json.loads((out / "compare.json").read_text())
    assert [r["status"] for r in figures["runs"]] == ["finished"] * 3
    assert all(s["runs"] == 1 and s["error"]["keyword"] is not None for s in figures["strategies"].values())
    assert figures["depths"]["2"]["compute_vs_full"] == 1.0 and figures["depths"]["1"]["updates"] >= 1
    assert 0.5 < figures["strategies"]["fedavg_full"]["compute_vs_full"][0] < 2  # full depth only; host noise
    assert (out / "accuracy_vs_time.png").stat().st_size > 10_000
    assert (out / "fedavg_full-s0" / "clients.csv").exists() and (out / "centralized-s0" / "summary.json").exists()
    centralized = [json.loads(line) for line in (out / "centralized-s0" / "events.jsonl").read_text().splitlines()]
    started = centralized[0]
    # the same samples as the federated run: one client per task, 3 local steps of 8 clips per round
    assert started["steps_per_round"] == {"keyword": 3, "speaker": 3} and started["batch_size"] == 8
    assert [e["round"] for e in centralized if e["kind"] == "evaluated"] == [1, 2]


def test_an_unknown_or_repeated_strategy_is_refused_in_one_line(write_scenario, tmp_path):
    result = run("compare", str(write_scenario()), "--strategies", "fedavg_full,nope", "--out", str(tmp_path / "c"))
    assert result.returncode == 2 and "unknown nope (allowed:" in result.stderr and "Traceback" not in result.stderr
    result = run("compare", str(write_scenario()), "--strategies", "layerwise,layerwise", "--out", str(tmp_path / "c"))
    assert result.returncode == 2 and "each strategy once" in result.stderr and not (tmp_path / "c").exists()


def test_a_failed_run_is_recorded_and_the_comparison_goes_on_until_interrupted(write_scenario, tmp_path, monkeypatch):
    import testbed.compare.centralized
    import testbed.launch.run
    from testbed.aggregator.summary import write_summary
    from testbed.compare.runner import compare

    made = []

    def fake_run(path, overrides, out, make_printer=None):
        made.append(out)
        raise RuntimeError("aggregator exploded\nsecond line")

    def fake_centralized(path, overrides, out):
        made.append(str(out))
        if "seed=1" in overrides:
            raise KeyboardInterrupt
        _write_run(out, _run_events([{"keyword": {1: 0.5, 2: 0.6}, "speaker": {1: 0.1, 2: 0.2}}], exits=(1, 2)))
        write_summary(out)
        return out

    monkeypatch.setattr(testbed.launch.run, "run", fake_run)
    monkeypatch.setattr(testbed.compare.centralized, "run_centralized", fake_centralized)
    directory, complete = compare(str(write_scenario()), ["layerwise", "centralized"], 3, [], str(tmp_path / "c"))
    assert not complete and [m.rsplit("/", 1)[1] for m in made] == ["layerwise-s0", "centralized-s0",
                                                                      "layerwise-s1", "centralized-s1"]
    figures = json.loads((directory / "compare.json").read_text())
    assert [(r["label"], r["status"]) for r in figures["runs"]] == [
        ("layerwise-s0", "failed"), ("centralized-s0", "finished"), ("layerwise-s1", "failed"),
        ("centralized-s1", "interrupted")]
    assert figures["runs"][0]["error"] == "RuntimeError: aggregator exploded"
    assert figures["strategies"]["centralized"]["error"]["keyword"] == [pytest.approx(0.4), 0.0]
    assert figures["strategies"]["layerwise"]["runs"] == 0
    assert "| keyword (L2) | - | 40.0 ± 0.0 |" in (directory / "compare.md").read_text()


def test_the_centralized_baseline_keeps_to_the_time_budget_in_its_own_host_seconds(write_scenario, tmp_path):
    from testbed.compare.centralized import run_centralized

    out = run_centralized(str(write_scenario(rounds=20, eval_every=100)), ["time_budget_s=0.001"], tmp_path / "c")
    log = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["round"] for e in log if e["kind"] == "round_aggregated"] == [1]  # one round spends 1 ms
    assert [e["round"] for e in log if e["kind"] == "evaluated"] == [1]
    assert log[-1]["kind"] == "run_finished" and log[-1]["reason"].startswith("time budget spent")


def test_compare_md_names_an_auto_tasks_exit_per_run_and_each_runs_best_exit():
    from testbed.compare.figures import RunRecord, comparison_figures
    from testbed.compare.tables import markdown

    runs = {"depth_aware-s0": [{"keyword": {2: 0.3, 4: 0.5, 6: 0.614, 8: 0.284}}],
            "depth_aware-s1": [{"keyword": {2: 0.3, 4: 0.6, 6: 0.605, 8: 0.2}}]}
    records = [RunRecord("depth_aware", seed, label, None, "finished") for seed, label in enumerate(runs)]
    figures = comparison_figures("t", [2, 4, 6, 8], {"keyword": "auto"}, ["depth_aware"], records,
                                 {label: _run_events(accuracies) for label, accuracies in runs.items()}, None)
    text = markdown(figures)
    assert "| keyword (auto) | 39.3 ± 1.0 |" in text  # 1 - 0.614 and 1 - 0.6 (L4: within 1 point of L6)
    assert "| keyword: auto exits | L6 L4 |" in text
    assert "| keyword | 39.1 ± 0.6 (L6 L6) |" in text  # best exits: 0.614 and 0.605


def test_an_interrupted_comparison_is_finished_by_resume_keeping_its_finished_runs(write_scenario, tmp_path):
    import signal

    from runs import start, wait_for_event

    scenario = write_scenario(rounds=3, fleet="[{profile: laptop}, {profile: rpi4, task: speaker}]")
    out = tmp_path / "cmp"
    process = start("compare", str(scenario), "--strategies", "fedavg_full,depth_aware,centralized",
                    "--out", str(out))
    wait_for_event(out / "depth_aware-s0", lambda e: e["kind"] == "round_aggregated", timeout=240)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130 and f"testbed compare --resume {out}" in output, output
    kept = (out / "fedavg_full-s0" / "summary.json").read_text()
    assert not (out / "centralized-s0").exists()

    result = run("compare", "--resume", str(out), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fedavg_full-s0: finished (kept)" in result.stdout and "depth_aware-s0: resumed" in result.stdout
    assert (out / "fedavg_full-s0" / "summary.json").read_text() == kept
    resumed = [json.loads(line) for line in (out / "depth_aware-s0" / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in resumed].count("run_resumed") == 1
    figures = json.loads((out / "compare.json").read_text())
    assert [(r["label"], r["status"]) for r in figures["runs"]] == [
        ("fedavg_full-s0", "finished"), ("depth_aware-s0", "finished"), ("centralized-s0", "finished")]
    assert "Made by" not in (out / "compare.md").read_text()  # one code version made every run

    # other code resumed it: every run says which code made it
    plan = json.loads((out / "compare_plan.json").read_text())
    plan["made_by"]["fedavg_full-s0"] = "0.0.9 (git 1234567)"
    (out / "compare_plan.json").write_text(json.dumps(plan))
    result = run("compare", "--resume", str(out), "--target", "0.5")
    assert result.returncode == 0, result.stdout + result.stderr
    table = (out / "compare.md").read_text()
    assert "**Made by 2 code versions**" in table and "made by 0.0.9 (git 1234567)" in table
    assert "time to 50.0%" in table

    # an edited scenario would make runs that no longer compare: refused, nothing run
    edited = (out / "scenario.yaml").read_text().replace("rounds: 3", "rounds: 4")
    (out / "scenario.yaml").write_text(edited)
    result = run("compare", "--resume", str(out))
    assert result.returncode == 2 and "it was edited" in result.stderr and "Traceback" not in result.stderr
    result = run("compare", "--resume", str(out), "--strategies", "layerwise")
    assert result.returncode == 2 and "drop --strategies (allowed with it: --target)" in result.stderr


def test_paired_differences_are_seed_by_seed_with_a_students_t_interval():
    from testbed.compare.figures import RunRecord, comparison_figures
    from testbed.compare.metrics import mean_ci
    from testbed.compare.tables import markdown

    assert mean_ci([]) is None and mean_ci([0.5]) == {"mean": 0.5, "ci": None, "n": 1}
    # 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.303: 2 ± 4.303 / sqrt(3)
    three = mean_ci([1.0, 2.0, 3.0])
    assert three["mean"] == 2.0 and three["ci"] == [pytest.approx(2 - 2.4844, abs=1e-4),
                                                       pytest.approx(2 + 2.4844, abs=1e-4)]
    # keyword accuracy per seed: fedavg_full 0.70, 0.80, 0.60; depth_aware 0.68, 0.75, 0.61 (seed 2 missing
    # for layerwise: pairs use the seeds both finished); depth_aware rounds take 4 s against 10 s
    finals = {"fedavg_full": [0.70, 0.80, 0.60], "depth_aware": [0.68, 0.75, 0.61], "layerwise": [0.5, 0.6, None]}
    events, records = {}, []
    for name, accuracies in finals.items():
        for seed, accuracy in enumerate(accuracies):
            label = f"{name}-s{seed}"
            if accuracy is None:
                records.append(RunRecord(name, seed, label, None, "failed", "boom"))
                continue
            events[label] = _run_events([{"keyword": {2: accuracy}}], round_s=4.0 if name == "depth_aware" else 10.0)
            records.append(RunRecord(name, seed, label, None, "finished"))
    figures = comparison_figures("t", [2], {"keyword": 2}, list(finals), records, events, None)
    pairs = {(p["strategy"], p["against"]): p for p in figures["paired"]}
    assert set(pairs) == {("depth_aware", "fedavg_full"), ("layerwise", "fedavg_full"), ("depth_aware", "layerwise")}
    against_full = pairs["depth_aware", "fedavg_full"]
    # error differences: +0.02, +0.05, -0.01: mean 0.02, sd 0.03, half-width 4.303 * 0.03 / sqrt(3) = 0.07453
    assert against_full["error"]["keyword"]["mean"] == pytest.approx(0.02)
    assert against_full["error"]["keyword"]["ci"] == [pytest.approx(-0.05453, abs=1e-5), pytest.approx(0.09453, abs=1e-5)]
    assert against_full["round_time_ratio"] == {"mean": pytest.approx(0.4), "ci": [pytest.approx(0.4)] * 2, "n": 3}
    assert pairs["depth_aware", "layerwise"]["seeds"] == [0, 1]
    text = markdown(figures)
    assert "| depth_aware vs fedavg_full | +2.0 [-5.5, +9.5] (n=3) | 0.40x [0.40x, 0.40x] (n=3) |" in text
    assert "| depth_aware vs layerwise | -16.5" in text  # 0.32 - 0.5 and 0.25 - 0.4: -0.18, -0.15
