"""Emulated seconds and host seconds are never mixed, and costs per depth compare depths, not devices.

The event clock `t`, a round's seconds, deadlines and client phases are EMULATED seconds (host wall
seconds / the run's dilation); evaluation, aggregation, the whole run's wall time and a client's
CPU time are HOST seconds. Each figure says which clock it is in. Most tests replay
tests/data/events_sample.jsonl, a run recorded before the figures were renamed (old run directories
must keep reporting); one starts a real run and reads its run directory.
"""

import csv
import io
import json
import re
import shutil
from itertools import accumulate
from pathlib import Path

import pytest
from rich.console import Console

from runs import run
from testbed.aggregator.records import Records
from testbed.aggregator.summary import summarize
from testbed.events import read_events
from testbed.monitor import plots
from testbed.monitor.console import outcome_lines
from testbed.monitor.dashboard import Dashboard
from testbed.monitor.metrics import depth_rows, depth_totals
from testbed.monitor.report import build_report
from testbed.monitor.state import fold

SAMPLE = Path(__file__).parent / "data" / "events_sample.jsonl"


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return read_events(SAMPLE)


def rounds_clock(events: list[dict]) -> list[float]:
    """The emulated seconds at which each round closed, counting rounds only (what time_budget_s counts)."""
    closed = {e["round"]: e["wall_s"] for e in events if e["kind"] == "round_closed"}
    return list(accumulate(closed[index] for index in sorted(closed)))


def slow_evaluation(events: list[dict], factor: float = 20.0) -> list[dict]:
    """The sample as if the host had evaluated `factor` times slower (the smoke run: ~5 host s each)."""
    return [{**e, "eval_s": e["eval_s"] * factor} if e["kind"] == "evaluated" else e for e in events]


def captured_figures(monkeypatch) -> dict:
    """Capture every figure the report draws, by file stem, instead of only writing it."""
    figures = {}
    save = plots._save

    def keep(figure, path):
        figures[Path(path).stem] = figure
        return save(figure, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


@pytest.mark.parametrize("slow", [False, True])
def test_an_accuracy_point_sits_at_the_emulated_seconds_its_round_closed(events, slow):
    view = fold(slow_evaluation(events) if slow else events)
    expected = rounds_clock(events)  # 2.087, 4.187, 6.261, 8.387: evaluation's host seconds play no part
    for task in view.tasks():
        for layer in view.exit_layers(task):
            assert [t for t, _, _ in view.accuracy_series(task, layer)] == pytest.approx(expected), (task, layer)
    assert view.best("keyword")[3] == pytest.approx(expected[2])  # 34.4% at exit L2, first in round 3


def test_the_report_names_each_clock_and_its_accuracy_axis_is_positive_and_ordered(tmp_path, events, monkeypatch):
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in slow_evaluation(events)))
    figures = captured_figures(monkeypatch)
    report = build_report(tmp_path, target=0.34).read_text()
    expected = rounds_clock(events)
    evaluating = sum(e["eval_s"] for e in slow_evaluation(events) if e["kind"] == "evaluated")
    host = events[-1]["wall"] - events[0]["wall"]
    assert (f"**finished** (rounds done): 4/4 rounds in {expected[-1]:.1f} s emulated "
            f"(rounds only, what time_budget_s counts; the run clock read {events[-1]['t']:.1f} s emulated at the end). "
            f"Host: {host:.1f} s wall in all, {evaluating:.1f} s evaluating, ") in report
    assert "keyword: best 34.4% (exit L2, round 3, first at 6.3 s emulated); reached 34% at 6.3 s emulated" in report
    assert f"Last evaluation (round 4, after {expected[-1]:.1f} s emulated of rounds)" in report
    assert "| round | round s (emulated) | deadline s (emulated) |" in report and "eval s (host) |" in report
    axes = figures["accuracy"].axes[0]
    assert "emulated s" in axes.get_xlabel()
    for line in axes.get_lines():
        if line.get_label().startswith("exit"):
            assert list(line.get_xdata()) == pytest.approx(expected)
    assert axes.get_xlim()[0] >= 0
    rounds = figures["rounds"].axes[0]
    labels = rounds.get_legend_handles_labels()[1]
    assert rounds.get_ylabel() == "emulated s" and any(label.startswith("round time (emulated s") for label in labels)
    assert "emulated s" in figures["gantt"].axes[0].get_xlabel()


def test_the_dashboard_says_first_best_at_emulated_seconds_of_rounds(events):
    view = fold(slow_evaluation(events))
    console = Console(file=io.StringIO(), width=160, height=50, color_system=None)
    console.print(Dashboard(view, lambda: view.t))
    screen = console.file.getvalue()
    assert "first best at" in screen and "6.3 s emulated (r3, L2)" in screen  # keyword, first best in round 3
    assert "4.2 s emulated (r2, L2)" in screen  # speaker
    assert re.search(r"0:00:08 emulated", screen)  # the header's run clock
    assert "-" + "0." not in screen.split("first best at")[1].split("\n")[1]  # no negative time


def test_summary_json_and_the_last_line_keep_emulated_and_host_seconds_apart(events):
    summary = summarize(slow_evaluation(events))
    expected = rounds_clock(events)
    assert summary["rounds_emulated_s"] == pytest.approx(expected[-1])
    assert summary["run_emulated_s"] == events[-1]["t"]
    assert summary["run_host_s"] == pytest.approx(events[-1]["wall"] - events[0]["wall"], abs=1e-3)
    assert summary["eval_host_s"] == pytest.approx(20 * sum(e["eval_s"] for e in events if e["kind"] == "evaluated"))
    assert summary["aggregate_host_s"] == pytest.approx(sum(e["aggregate_s"] for e in events
                                                            if e["kind"] == "round_aggregated"))
    assert summary["round_emulated_s"]["max"] == max(e["wall_s"] for e in events if e["kind"] == "round_closed")
    line = outcome_lines(Path("/runs/x"), summary, 0)[0]
    assert f"4/4 rounds in {expected[-1]:.1f} s emulated (76.4 s host, 0.11 emulated s per host s, real clock)" in line


def test_costs_per_depth_compare_depths_not_devices(events, monkeypatch, tmp_path):
    # in the sample only the slow rpi4 trains L1: per emulated second L1 looks dearer than L2, per host CPU second
    # (the work done, whatever the device's speed) it is cheaper, as a shallower model must be
    view = fold(events)
    totals = depth_totals(view)
    assert totals[1].cpu_per_sample < totals[2].cpu_per_sample
    assert totals[1].compute_per_sample > totals[2].compute_per_sample  # what the old figure showed
    rows = {row["depth"]: row for row in depth_rows(view)}
    assert rows[1]["cpu_host_s_per_clip"] == pytest.approx(totals[1].cpu_per_sample)
    assert rows[2]["peak_mb"] == pytest.approx(totals[2].mean_peak_mb)
    assert rows[1]["profiles"] == ["rpi4"]
    figures = captured_figures(monkeypatch)
    plots.depth_cost(view, tmp_path / "depth_cost.png")
    memory, cpu = figures["depth_cost"].axes[:2]
    assert cpu.get_ylabel() == "host CPU s per clip" and "MB" in memory.get_ylabel()
    heights = [patch.get_height() for patch in cpu.patches]
    assert heights == pytest.approx([totals[1].cpu_per_sample, totals[2].cpu_per_sample])
    assert [patch.get_height() for patch in memory.patches] == pytest.approx(
        [totals[1].mean_peak_mb, totals[2].mean_peak_mb])


def test_a_resumed_run_appends_to_old_csv_files_under_their_own_header(tmp_path):
    old = "round,started_t,wall_s,deadline_s,aggregate_s,eval_s,digest\n1,0.1,2.0,10,0.01,0.5,ab\n"
    (tmp_path / "rounds.csv").write_text(old)
    records = Records(tmp_path, [])
    records.add({"round": 2, "started_t": 2.5, "wall_s": 3.0, "deadline_s": 10, "aggregate_s": 0.02,
                 "eval_s": 0.4, "digest": "cd"}, [{"round": 2, "client": "c00", "compute_s": 1.5, "cpu_s": 0.3}])
    records.close()
    rows = list(csv.DictReader(open(tmp_path / "rounds.csv")))
    assert rows[1] == {"round": "2", "started_t": "2.5", "wall_s": "3.0", "deadline_s": "10", "aggregate_s": "0.02",
                       "eval_s": "0.4", "digest": "cd"}
    client = next(csv.DictReader(open(tmp_path / "clients.csv")))  # a new file: the named columns
    assert client["compute_emulated_s"] == "1.5" and client["cpu_host_s"] == "0.3"


def test_a_real_run_records_each_clock_under_its_name(write_scenario, tmp_path, monkeypatch):
    out = tmp_path / "run"
    result = run("run", str(write_scenario(emulation="{clock: real, dilation: 2}")), "--out", str(out), "--no-dashboard")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = list(csv.DictReader(open(out / "rounds.csv")))
    for column in ("started_emulated_s", "round_emulated_s", "deadline_emulated_s", "aggregate_host_s",
                   "eval_host_s"):
        assert column in rows[0], column
    assert "wall_s" not in rows[0] and "eval_s" not in rows[0]
    clients = list(csv.DictReader(open(out / "clients.csv")))
    assert {"compute_emulated_s", "idle_emulated_s", "cpu_host_s"} <= set(clients[0])
    log = read_events(out / "events.jsonl")
    closed = [e for e in log if e["kind"] == "round_closed"]
    assert [float(r["round_emulated_s"]) for r in rows] == [e["wall_s"] for e in closed]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_emulated_s"] == pytest.approx(sum(e["wall_s"] for e in closed))
    assert f"rounds in {summary['rounds_emulated_s']:.1f} s emulated" in result.stdout
    view = fold(log)
    points = [t for t, _, _ in view.accuracy_series("keyword", view.exit_layers("keyword")[-1])]
    assert points == pytest.approx(rounds_clock(log)) and points == sorted(points) and points[0] > 0
    shutil.rmtree(out / "plots")
    figures = captured_figures(monkeypatch)
    report = build_report(out).read_text()
    assert f"rounds in {summary['rounds_emulated_s']:.1f} s emulated" in report
    assert list(figures["accuracy"].axes[0].get_lines()[0].get_xdata()) == pytest.approx(points)


def test_the_centralized_baseline_reports_on_host_seconds_and_says_so(tmp_path):
    # its events: no round_closed, an undilated clock on this host; each evaluation advanced that clock by its eval_s
    events, t = [{"seq": 0, "t": 0.0, "wall": 100.0, "kind": "run_started", "scenario": "c", "rounds": 2,
                  "exits": [1, 2], "strategy": "centralized", "clients": [],
                  "dilation": {"factor": 1.0, "reason": "centralized: host wall seconds of training, no emulation"}}], 0.0
    for index in (1, 2):
        t += 3.0  # training
        events.append({"t": t, "wall": 100.0 + t, "kind": "round_aggregated", "round": index, "aggregate_s": 0.0})
        t += 0.5  # evaluating
        events.append({"t": t, "wall": 100.0 + t, "kind": "evaluated", "round": index, "eval_s": 0.5,
                       "accuracy": {"keyword": {"1": 0.2 * index, "2": 0.3 * index}}})
    events.append({"t": t, "wall": 100.0 + t, "kind": "run_finished", "reason": "rounds done"})
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    view = fold(events)
    assert view.clock == "host" and [s[0] for s in view.accuracy_series("keyword", 2)] == pytest.approx([3.0, 6.0])
    report = build_report(tmp_path).read_text()
    assert "2/2 rounds in 6.0 s host (training only" in report and "first at 6.0 s host" in report
