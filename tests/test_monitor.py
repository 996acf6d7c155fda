"""The monitor role: dashboard rendering, plain lines, event sources and the report, from recorded events.

tests/data/events_sample.jsonl was recorded from a real `testbed run` (4 rounds, 4 clients, debug
backbone; one client frozen with SIGSTOP in round 2 until it was marked lost, then thawed): it holds
a dilation change, a lost and rejoined client, a dropped message, an offline client skipping rounds.
"""

import io
import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import zmq
from rich.console import Console

from testbed.cli import main
from testbed.events import read_events
from testbed.monitor.console import EventPrinter, describe
from testbed.monitor.dashboard import Dashboard
from testbed.monitor.live import RunDashboard, choose_printer
from testbed.monitor.metrics import round_rows
from testbed.monitor.plots import accuracy_comparison
from testbed.monitor.sources import FileTail, Replay, Subscription
from testbed.monitor.state import RunView, fold

SAMPLE = Path(__file__).parent / "data" / "events_sample.jsonl"
PLOTS = ("accuracy", "gantt", "depths", "rounds", "depth_cost")
# event kinds worth a plain line in the sample; client_state only for a state out of the routine
LINE_KINDS = {"run_started", "client_joined", "round_started", "round_closed", "evaluated", "dilation_changed",
              "client_lost", "client_rejoined", "client_skipped", "message_dropped", "run_finished"}
ROUTINE = {"ready", "idle", "downloading", "training", "uploading"}


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return read_events(SAMPLE)


def render(view: RunView, width: int, height: int, color: bool = False) -> list[str]:
    console = Console(file=io.StringIO(), width=width, height=height, force_terminal=color,
                      color_system="truecolor" if color else None)
    console.print(Dashboard(view, lambda: view.t + 0.7))
    return console.file.getvalue().splitlines()


@pytest.mark.parametrize("width,height", [(80, 24), (120, 40), (200, 60)])
def test_the_dashboard_fits_the_terminal_at_every_moment_of_a_run(events, width, height):
    for cut in (1, 6, 40, 120, 150, len(events)):  # joined, first round, mid-run, after the loss, the end
        view = fold(events[:cut])
        lines = render(view, width, height)
        assert len(lines) <= height, (cut, len(lines))
        assert max(len(line) for line in lines) <= width, cut
        assert lines[0].lstrip().startswith("testbed")
        if cut >= 40:
            assert all(any(cid in line for line in lines) for cid in ("c00", "c01", "c02", "c03")), cut
    assert render(fold(events), width, height, color=True)  # styles render too


def test_the_dashboard_shows_the_round_the_lost_client_the_dilation_and_accuracy(events):
    lost = next(i for i, e in enumerate(events) if e["kind"] == "client_lost")
    during = render(fold(events[:lost + 1]), 80, 24)
    text = "\n".join(during)
    assert "round 2" in text and "waiting for" in text and "time ×10.1" in during[0]
    assert re.search(r"c01 .*lost", text)
    final = "\n".join(render(fold(events), 160, 50))
    assert "finished" in final and "round 4 closed" in final
    assert re.search(r"keyword L1\s+\S+\s+28\.9% 33\.3%", final)  # last and best accuracy of exit L1
    timeline = next(line for line in final.splitlines() if line.startswith("│ c01"))
    assert "✗" in timeline  # lost mid-round 2: its bar ends in a cross


def test_unknown_kinds_missing_fields_and_garbage_never_break_the_view(events):
    view = fold(events[:60])
    for odd in ({"kind": "brand_new_kind", "t": 3.0, "anything": [1, 2]},
                {"kind": "dilation_changed", "t": 3.1},  # no factor
                {"kind": "dilation_changed", "t": 3.2, "factor": 2.5, "reason": "test"},
                {"kind": "round_started", "t": 3.3},  # no round: dropped
                {"kind": "client_progress", "client": "c09", "round": 77},
                {"kind": "client_state", "client": "c00", "state": "frozen"},
                {"kind": "round_closed", "round": 2, "clients": [{"client": 5}, "nonsense", {"client": "c00"}]},
                {"kind": "evaluated", "round": 2, "accuracy": {"keyword": {"1": "high", "2": 0.5}}},
                {"no kind": True}, ["not", "an", "event"]):
        view.apply(odd)
    assert view.unknown_kinds == {"brand_new_kind": 1}
    assert view.dilation == {"factor": 2.5, "reason": "test"}
    assert view.malformed >= 3 and view.clients["c00"].state == "frozen"
    assert view.evaluations[2].accuracy["keyword"] == {2: 0.5}
    for width, height in ((80, 24), (160, 50)):
        assert len(render(view, width, height, color=True)) <= height
    assert describe({"kind": "round_closed"}).startswith("round ?")
    assert describe({"kind": "brand_new_kind"}) is None


def test_without_a_terminal_each_event_worth_a_line_gets_exactly_one(tmp_path, events):
    path = tmp_path / "events.jsonl"
    text = SAMPLE.read_text()
    path.write_text(text[:-20])  # the last event is still being written
    stream = io.StringIO()
    printer = EventPrinter(path, stream)
    printer.poll()
    with open(path, "a") as file:
        file.write(text[-20:])
    printer.poll()
    printer.poll()  # nothing new: nothing printed twice
    lines = stream.getvalue().splitlines()
    worth = [e for e in events if e["kind"] in LINE_KINDS
             or (e["kind"] == "client_state" and e["state"] not in ROUTINE)]
    assert len(lines) == len(worth) and len(worth) < len(events) / 5
    assert all(re.match(r"\[ +\d+\.\d s\] ", line) for line in lines)
    assert lines[-1].endswith("run finished: rounds done (1 dropped messages)")
    assert sum("c01: lost" in line for line in lines) == 1
    assert sum("time dilation ×10.0622" in line for line in lines) == 1
    assert sum(" offline" in line for line in lines) == 3  # two skipped rounds and the state change


def test_a_file_tail_skips_a_garbage_line_and_waits_for_a_torn_one(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = FileTail(path)
    assert tail.read() == []  # no file yet
    path.write_text('{"kind": "a", "t": 1}\nnot json\n[1, 2]\n{"kind": "b", "t"')
    assert [e["kind"] for e in tail.read()] == ["a"]
    with open(path, "a") as file:
        file.write(': 2}\n')
    assert [e["kind"] for e in tail.read()] == ["b"]


def test_a_replay_hands_events_out_at_its_speed(events):
    now = [0.0]
    replay = Replay(events, speed=10.0, clock=lambda: now[0])
    first = replay.read()
    assert first and all(e["t"] <= events[0]["t"] for e in first)
    now[0] = 0.2  # 2 run seconds later at ten times the speed
    middle = replay.read()
    assert middle and all(e["t"] <= events[0]["t"] + 2.0 for e in middle) and not replay.done
    now[0] = 100.0
    assert len(first) + len(middle) + len(replay.read()) == len(events) and replay.done
    with pytest.raises(ValueError):
        Replay(events, speed=0)


def test_a_subscription_gets_published_events_and_drops_bad_messages(tmp_path, events):
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    address = f"ipc://{tmp_path}/events"
    publisher.bind(address)
    subscription = Subscription(address)
    try:
        received, deadline = [], time.monotonic() + 5.0
        while not received and time.monotonic() < deadline:  # a subscriber misses what was sent before it joined
            publisher.send_string(json.dumps(events[0]))
            time.sleep(0.02)
            received = subscription.read()
        publisher.send(b"\xff not json")
        publisher.send_multipart([b"two", b"frames"])
        publisher.send_string(json.dumps(events[1]))
        time.sleep(0.1)
        later = subscription.read()
    finally:
        subscription.close()
        publisher.close(0)
        context.term()
    assert received and received[0]["kind"] == "run_started"
    assert [e["seq"] for e in later if e["seq"] != 0] == [1]


def test_the_run_printer_on_a_terminal_leaves_the_last_frame_and_the_outcome(tmp_path):
    path = tmp_path / "events.jsonl"
    shutil.copy(SAMPLE, path)
    console = Console(file=io.StringIO(), width=100, height=30, force_terminal=True, color_system=None)
    printer = RunDashboard(path, console)
    printer.poll()
    printer.finish(tmp_path, {"status": "finished", "rounds_completed": 4, "rounds_planned": 4,
                              "rounds_emulated_s": 8.4}, 0)
    output = console.file.getvalue()
    assert "round 4 closed" in output and output.rstrip().endswith(f"results in {tmp_path}")
    assert "\x1b[?1049h" in output and "\x1b[?1049l" in output  # the alternate screen, left again


def test_the_report_is_rebuilt_from_a_run_cut_mid_line_and_mid_run(tmp_path):
    text = SAMPLE.read_text()
    cut = text.index('"kind":"round_closed","round":3')
    (tmp_path / "events.jsonl").write_text(text[:cut + 40])  # killed mid-round 3, mid-write
    assert main(["report", str(tmp_path), "--target", "0.34"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "**incomplete**: 2/4 rounds" in report
    assert "| 2 | " in report and "| 3 | " not in report  # rounds table: the closed rounds only
    assert "keyword: best 33.3%" in report and "has not reached 34%" in report
    for name in PLOTS:
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        assert f"(plots/{name}.png)" in report


def test_a_report_needs_events_and_says_so(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no events.jsonl" in capsys.readouterr().err
    assert main(["monitor", str(tmp_path / "nowhere")]) == 2


def test_the_monitor_replays_a_finished_run_as_plain_lines(tmp_path, capsys, events):
    shutil.copy(SAMPLE, tmp_path / "events.jsonl")
    assert main(["monitor", str(tmp_path), "--no-dashboard", "--speed", "1000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[     0.0 s] run started: sample") and "run finished" in lines[-1]
    assert main(["monitor", str(tmp_path), "--no-dashboard"]) == 0  # all at once
    assert capsys.readouterr().out.splitlines() == lines


def test_runs_compare_on_one_accuracy_plot(tmp_path, events):
    halfway = next(i for i, e in enumerate(events) if e["kind"] == "round_started" and e["round"] == 3)
    path = accuracy_comparison([("whole", events), ("first half", events[:halfway])], tmp_path / "compare.png")
    assert path.stat().st_size > 5000
    exit_two = accuracy_comparison([("whole", events)], tmp_path / "l2.png", exit_layer=2)
    assert exit_two.read_bytes()[:4] == b"\x89PNG"


def test_testbed_run_shows_the_dashboard_only_on_a_terminal_and_when_wanted(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert choose_printer(no_dashboard=False) is None  # not a terminal: the run's plain lines
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert choose_printer(no_dashboard=False) is RunDashboard
    assert choose_printer(no_dashboard=True) is None


def test_phases_and_wait_share_come_from_the_events(events):
    view = fold(events)
    closed = {e["round"]: e for e in events if e["kind"] == "round_closed"}
    second = view.rounds[2]
    row = next(r for r in closed[2]["clients"] if r["client"] == "c00")
    phases = second.segments("c00", view.t)
    assert [s.phase for s in phases] == ["download", "compute", "upload", "idle"]
    assert [round(s.end_s - s.start_s, 4) for s in phases[:3]] == [row["download_s"], row["compute_s"], row["upload_s"]]
    assert phases[-1].end_s == closed[2]["wall_s"]
    lost_t = next(e["t"] for e in events if e["kind"] == "client_lost")
    lost = second.segments("c01", view.t)
    assert [s.phase for s in lost] == ["download", "compute"] and lost[-1].end_s == pytest.approx(lost_t - second.started_t)
    rows = closed[1]["clients"]
    idle = sum(r["idle_s"] for r in rows)
    busy = sum(r[k] for r in rows for k in ("download_s", "compute_s", "upload_s"))
    assert round_rows(view)[0]["wait_share"] == pytest.approx(idle / (idle + busy))


def test_a_task_evaluated_without_a_number_is_reported_as_such(tmp_path):
    lines = SAMPLE.read_text().splitlines()
    last = json.loads(lines[-1])
    odd = {"seq": last["seq"] + 1, "t": last["t"], "wall": last.get("wall", 0.0), "kind": "evaluated", "round": 4,
           "accuracy": {"speech": {}}, "eval_s": 0.1}  # valid by its declaration, yet no accuracy
    (tmp_path / "events.jsonl").write_text("\n".join([*lines, json.dumps(odd)]) + "\n")
    assert main(["report", str(tmp_path)]) == 0
    assert "- speech: no accuracy recorded" in (tmp_path / "report.md").read_text()
