"""Events as a declared contract (testbed/event_kinds.py): what is written, and what each consumer does with it."""

import dataclasses
import json
import types
import typing
from pathlib import Path

import pytest

from testbed.aggregator import rounds, summary
from testbed.aggregator.summary import summarize
from testbed.compare import metrics
from testbed.event_kinds import (FINISHED, KINDS, ClientStatus, MessageDropped, Record, RoundClientRow, RoundClosed,
                                 RoundStarted)
from testbed.event_kinds import problems
from testbed.events import EventLog, read_events
from testbed.monitor import console
from testbed.monitor import state
from testbed.monitor.state import RunView, fold
from testbed.stress import checks, spec

SAMPLE = Path(__file__).parent / "data" / "events_sample.jsonl"
CONSUMERS = {"monitor/state.py": state, "monitor/console.py": console, "aggregator/summary.py": summary,
             "stress/checks.py": checks, "compare/metrics.py": metrics}

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


def example_value(tp):
    """A value of a declared type (the first of a union's non-None members)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return example_value(next(arg for arg in args if arg is not type(None)))
    if origin is list:
        return [example_value(args[0])]
    if origin is dict or tp is dict:
        return {}
    if isinstance(tp, type) and issubclass(tp, Record):
        return example_fields(tp)
    return {int: 1, float: 1.5, str: "c00", bool: True}[tp]


def example_fields(declaration) -> dict:
    hints = typing.get_type_hints(declaration)
    return {f.name: example_value(hints[f.name]) for f in dataclasses.fields(declaration)}


def examples() -> list[dict]:
    """One event of every declared kind, every field given, in declaration order."""
    return [{"seq": seq, "t": float(seq), "wall": 100.0 + seq, "kind": kind, **example_fields(declaration)}
            for seq, (kind, declaration) in enumerate(KINDS.items())]


def test_a_rejected_update_finishes_the_client_before_the_round_closes():
    view = fold(REJECTED_ROUND)
    part = view.rounds[1].clients["c01"]
    assert part.status == "rejected"
    assert view.rounds[1].out() == []  # the round waits for nobody: both clients are done
    assert view.clients["c01"].state == "rejected"


@pytest.mark.parametrize("name", CONSUMERS)
def test_every_consumer_handles_or_ignores_each_declared_kind(name):
    consumer = CONSUMERS[name]
    assert not consumer.HANDLED & consumer.IGNORED, name
    assert consumer.HANDLED | consumer.IGNORED == set(KINDS), name


def test_the_view_has_a_handler_for_each_kind_it_handles_and_none_for_an_undeclared_kind():
    handlers = {name.removeprefix("_on_") for name in dir(RunView) if name.startswith("_on_")}
    assert handlers == state.HANDLED


def test_every_kind_written_in_full_fits_its_declaration_and_folds_prints_and_summarizes():
    events = examples()
    assert [problems(event) for event in events] == [[]] * len(events)
    view = fold(events)  # a handler's fault is an error here, not a dropped event
    assert view.malformed == 0 and not view.unknown_kinds and view.events == len(events)
    for event in events:
        line = console.describe(event)
        assert (line is not None) == (event["kind"] in console.HANDLED), event["kind"]
    assert summarize(events)["status"] == "failed"  # the last ending declared


def test_the_recorded_sample_fits_the_declarations():
    events = read_events(SAMPLE)
    assert {e["kind"] for e in events} <= set(KINDS)
    assert [(e["seq"], problems(e)) for e in events if problems(e)] == []


def test_an_event_that_does_not_fit_is_dropped_but_a_fault_in_a_handler_is_raised(monkeypatch):
    view = fold(REJECTED_ROUND[:2])
    for odd in ({"kind": "round_started"},  # its round missing
                {"kind": "model_sent", "client": 7, "round": 1},  # a client id that is no string
                {"kind": "round_closed", "round": 1, "wall_s": 2.0, "clients": [{"client": "c00", "depth": "deep"}]},
                {"kind": "evaluated", "round": 1, "accuracy": {}, "t": "late"}):  # the envelope is checked too
        view.apply(odd)
    assert view.malformed == 4 and view.rounds[1].closed is None
    assert view.unknown_kinds == {} and view.events == 2

    def broken(self, event, t):
        raise KeyError("a bug")

    monkeypatch.setattr(RunView, "_on_round_aggregated", broken)
    with pytest.raises(KeyError):
        view.apply({"kind": "round_aggregated", "round": 1, "digest": "d"})


def test_old_events_without_the_fields_added_later_still_fit():
    closed = {"kind": "round_closed", "round": 1, "started_t": 0.0, "wall_s": 2.0, "deadline_s": None,
              "selected": 1, "updates": 1, "stragglers": 0, "lost": 0, "bytes_down": 1, "bytes_up": 1,
              "clients": [{"round": 1, "client": "c00", "status": "updated", "depth": 2}]}  # no rejected, discarded
    assert problems(closed) == []
    assert problems({"kind": "run_finished", "dropped_messages": 0}) == []  # no reason
    assert problems({"kind": "brand_new_kind", "anything": [1]}) == []  # a newer writer's: the reader decides


def test_the_log_writes_a_record_as_before(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.emit(RoundStarted(round=1, selected=["c00"], deadline_s=None))  # no deadline: written as null
    row = RoundClientRow(round=1, client="c00", profile="p", task="keyword", status=ClientStatus.UPDATED, depth=2,
                         download_s=0.1, compute_s=1.0, upload_s=0.2, idle_s=0.0, bytes_down=5, bytes_up=6,
                         samples=8, loss=1.0, peak_mb=None, cpu_s=None, overshoot=None)
    log.emit(RoundClosed(round=1, started_t=0.0, wall_s=2.0, deadline_s=None, selected=1, updates=1, stragglers=0,
                         lost=0, discarded=0, rejected=0, bytes_down=5, bytes_up=6, dilation=1.0, clients=[row]))
    log.emit(MessageDropped(reason="garbage", identity="ab12"))  # no count: a single refusal, written without one
    log.close()
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    started, closed, dropped = (json.loads(line) for line in lines)
    assert started == {"seq": 0, "t": started["t"], "wall": started["wall"], "kind": "round_started", "round": 1,
                       "selected": ["c00"], "deadline_s": None}
    assert closed["clients"][0]["status"] == "updated" and closed["clients"][0]["peak_mb"] is None
    assert '"status":"updated"' in lines[1]
    assert set(dropped) == {"seq", "t", "wall", "kind", "reason", "identity"}


def test_one_definition_of_the_statuses_that_finish_a_client_s_round():
    assert rounds.FINISHED is FINISHED and state.FINISHED is FINISHED
    assert {str(status) for status in FINISHED} == {"updated", "discarded", "rejected", "skipped", "lost", "left"}
    assert ClientStatus.STRAGGLER not in FINISHED and ClientStatus.ASKED not in FINISHED


def test_stress_triggers_accept_exactly_the_declared_kinds():
    assert set(spec.EVENT_KINDS) == set(KINDS)
