"""The event clock (`emulation.clock: events`): emulated time that jumps, rounds replayed in emulated order.

Unit tests give the round logic hand-computed timelines; one run of real processes checks that a
freeze, a crash and an offline window land where the emulated timeline puts them.
"""

import json
import time

import pytest

from runs import events, run
from testbed.aggregator.timeline import arrival, link_phases, replay_round
from testbed.config.schema import LinkSpec
from testbed.emulation.clock import EventClock
from testbed.emulation.link import LinkModel, LinkShaper
from testbed.emulation.throttle import ComputeThrottle
from testbed.strategies.selection import Deadline, OverSelection, WaitForAll


def replayed(rule, selected, times, started_t=100.0, refused=()):
    """Replay arrivals at `times` (client -> emulated seconds after the start) under `rule`;
    returns (clients taken in order, clients counted, late clients, close time after the start)."""
    taken, counted = [], []

    def take(update):
        taken.append(update.client)
        if update.client not in refused and rule.accept(len(counted), update.t - started_t):
            counted.append(update.client)

    arrivals = [arrival(client, started_t, 0.0, t, 0.0) for client, t in times.items()]
    replay = replay_round(started_t, rule.deadline_s, arrivals, take,
                          lambda elapsed: rule.complete(selected, counted, elapsed))
    return taken, counted, [a.client for a in replay.late], replay.close_t - started_t


def test_the_deadline_cuts_what_arrives_after_it_and_the_round_closes_at_it():
    taken, counted, late, close = replayed(Deadline(10.0), ["a", "b", "c"], {"a": 12.0, "b": 3.0, "c": 7.5})
    assert (taken, counted, late, close) == (["b", "c"], ["b", "c"], ["a"], 10.0)


def test_everyone_in_before_the_deadline_closes_the_round_with_the_last_arrival():
    _, counted, late, close = replayed(Deadline(10.0), ["a", "b"], {"a": 4.0, "b": 9.0})
    assert (counted, late, close) == (["a", "b"], [], 9.0)


def test_over_selection_keeps_the_first_k_by_emulated_arrival_not_by_host_arrival():
    # the dict's order stands for the order updates reached the aggregator in host time
    rule = OverSelection(Deadline(60.0), k=2, factor=2.0)
    _, counted, late, close = replayed(rule, ["a", "b", "c", "d"], {"d": 30.0, "a": 41.0, "c": 5.0, "b": 29.0})
    assert (counted, late, close) == (["c", "b"], ["d", "a"], 29.0)


def test_ties_go_by_client_id_so_a_replay_never_depends_on_host_order():
    rule = OverSelection(WaitForAll(), k=1)
    assert replayed(rule, ["b", "a"], {"b": 2.0, "a": 2.0})[1] == ["a"]


def test_a_refused_update_does_not_count_and_the_round_ends_with_the_last_arrival():
    taken, counted, late, close = replayed(WaitForAll(), ["a", "b"], {"a": 3.0, "b": 8.0}, refused=("b",))
    assert (taken, counted, late, close) == (["a", "b"], ["a"], [], 8.0)


def test_a_round_without_arrivals_closes_when_announced():
    assert replayed(Deadline(10.0), ["a"], {})[3] == 0.0


def test_the_aggregator_draws_the_same_link_times_as_the_clients_shaper():
    link = LinkSpec(name="4g", latency_ms=60, jitter_ms=20, downlink_mbps=20, uplink_mbps=8, loss=0.01)
    clock = EventClock(50.0)
    shaper = LinkShaper(LinkModel(link, [7, 3]), clock)  # what a client does at round 3
    shaper.wait(180, "up")  # FETCH
    after_fetch = clock.now()
    shaper.wait(14_000_000, "down")  # MODEL
    downloaded = clock.now()
    shaper.wait(14_000_500, "up")  # UPDATE
    download_s, upload_s = link_phases(link, 7, 3, 180, 14_000_000, 14_000_500)
    assert after_fetch > 50.0
    assert download_s == pytest.approx(downloaded - 50.0, abs=1e-12)
    assert upload_s == pytest.approx(clock.now() - downloaded, abs=1e-12)


def test_the_event_clock_jumps_and_never_goes_back():
    clock = EventClock()
    clock.advance(2.5)
    clock.advance_to(1.0)
    assert clock.now() == 2.5
    clock.catch_up(40.0)  # a round announced at run time 40 s
    assert clock.now() == 40.0
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1.0)
    with pytest.raises(ValueError, match="no dilation"):
        clock.set_dilation(3.0)


def test_compute_is_billed_its_cpu_seconds_over_the_throughput_without_sleeping(monkeypatch):
    def no_sleep(seconds):
        raise AssertionError(f"the event clock slept {seconds} s")

    monkeypatch.setattr(time, "sleep", no_sleep)
    clock = EventClock()
    throttle = ComputeThrottle(0.1, clock)  # a device a tenth of a host core
    throttle.start()
    spin_until = time.process_time() + 0.2
    while time.process_time() < spin_until:
        pass
    report = throttle.finish()
    assert report.elapsed_s == pytest.approx(report.cpu_s / 0.1, rel=1e-3) and report.elapsed_s >= 2.0
    assert report.overshoot == pytest.approx(1.0)


def _profile(tmp_path, name: str, extra: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ncores: 1\nthreads: 1\nspeed: 1.0\nmemory_mb: 4096\nlink: wifi\n"
                    f"availability: {{online_probability: 1.0}}\n{extra}")
    return str(path)


def test_faults_and_offline_windows_land_where_the_emulated_timeline_puts_them(write_scenario, tmp_path):
    """A freeze of 100 s makes its client miss every 20 s deadline (and start late: it is still busy); a crash
    loses its client at once (its process reboots and joins again: the round does not wait for the dead
    one); a device online the first 30 s of every minute skips the round announced at 40 s, which only
    the deadline cuts put there."""
    steady = _profile(tmp_path, "steady", "")
    frozen = _profile(tmp_path, "frozen", "failure: {freeze_rate: 1.0, freeze_s: 100.0}\n")
    crashing = _profile(tmp_path, "crashing", "failure: {crash_rate: 1.0}\n")
    windowed = tmp_path / "windowed.yaml"
    windowed.write_text("name: windowed\ncores: 1\nthreads: 1\nspeed: 1.0\nmemory_mb: 4096\nlink: wifi\n"
                        "availability: {online_probability: 1.0, online_s: 30, offline_s: 30}\n")
    out = tmp_path / "run"
    scenario = write_scenario(rounds=3, deadline_s=20, eval_every=3, emulation="{clock: events}",
                              fleet=f"[{{profile: {steady}}}, {{profile: {frozen}}}, {{profile: {crashing}}}, "
                                    f"{{profile: {windowed}}}]")
    result = run("run", str(scenario), "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    log = events(out)
    assert next(e for e in log if e["kind"] == "run_started")["clock"] == "events"
    closed = {e["round"]: e for e in log if e["kind"] == "round_closed"}
    status = {(r, row["client"]): row["status"] for r, e in closed.items() for row in e["clients"]}
    assert [closed[r]["started_t"] for r in (1, 2, 3)] == [0.0, 20.0, 40.0]  # each cut at its deadline
    assert [closed[r]["wall_s"] for r in (1, 2, 3)] == [20.0, 20.0, 20.0]
    assert [status[r, "c01"] for r in (1, 2, 3)] == ["straggler"] * 3
    # the crashing client reboots (a new process joins) and crashes again in every round it is ready for
    assert status[1, "c02"] == "lost" and all(status.get((r, "c02"), "lost") == "lost" for r in (2, 3))
    assert [status[r, "c03"] for r in (1, 2, 3)] == ["updated", "updated", "skipped"]
    assert [status[r, "c00"] for r in (1, 2, 3)] == ["updated"] * 3
    for received in (e for e in log if e["kind"] == "update_received"):
        started = closed[received["round"]]["started_t"]
        # it arrives when its phases say, on the run's clock (the steady clients start when the round does)
        phases = received["download_s"] + received["compute_s"] + received["upload_s"]
        assert received["t"] == pytest.approx(started + phases, abs=2e-3)
        assert received["overshoot"] == pytest.approx(1.0, abs=1e-3)  # billed exactly, never starved
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clock"] == "events" and summary["rounds_emulated_s"] == 60.0
    assert summary["speedup"] == pytest.approx(60.0 / summary["run_host_s"], rel=0.01)


def test_the_dashboard_does_not_run_an_event_clock_on_between_events_and_shows_the_speed_up():
    from testbed.monitor.dashboard import header
    from testbed.monitor.state import RunView

    view = RunView()
    view.apply({"seq": 0, "t": 0.0, "wall": 1000.0, "kind": "run_started", "scenario": "s", "rounds": 2, "exits": [1],
                "clients": [], "dilation": {"factor": 1.0, "reason": "none"}, "clock": "events"})
    view.apply({"seq": 1, "t": 50.0, "wall": 1010.0, "kind": "round_started", "round": 1, "selected": [],
                "deadline_s": 60.0})
    assert view.run_seconds_at(1100.0) == 50.0  # a real clock would have run on by 90 s / its dilation
    assert view.speedup() == pytest.approx(5.0)
    assert "event clock, 5 s per host s" in header(view, view.t).plain


def test_the_dashboard_and_the_report_claim_no_dilation_for_an_event_clock_run():
    """run_started carries a factor of 1 under the event clock; emulated seconds are not host seconds / 1 there."""
    from testbed.monitor.dashboard import round_panel_lines
    from testbed.monitor.metrics import run_figures
    from testbed.monitor.report import _summary_section
    from testbed.monitor.state import RunView

    started = {"seq": 0, "t": 0.0, "wall": 1000.0, "kind": "run_started", "scenario": "s", "rounds": 2, "exits": [1],
               "clients": [], "dilation": {"factor": 1.0, "reason": "none: the event clock bills compute"}}
    for clock, claims in (("events", False), ("real", True)):
        view = RunView()
        view.apply({**started, "clock": clock})
        panel = " ".join(line.plain for line in round_panel_lines(view, view.t, 200))
        report = " ".join(_summary_section(view, run_figures(view)))
        assert ("time dilation ×1" in panel) == claims and ("Time dilation ×1" in report) == claims, (panel, report)
        assert ("Event clock: nothing waited, so no time dilation" in report) == (not claims), report


def test_a_stress_test_runs_under_the_clock_asked_for_and_an_unknown_one_is_one_line(tmp_path):
    """`testbed stress` (the event clock by default, as `--clock events`) puts the test's scenario under the event
    clock and drops the dilation it or its quick variant sets (that clock has none, and a scenario giving both is
    refused); `--clock real` keeps that dilation; None leaves the scenario's own clock, under which the same file
    is refused; an unknown clock, or a setting the clock asked for lacks, is one line naming what is allowed."""
    from testbed.errors import ConfigError
    from testbed.stress.spec import load_stress

    stress = tmp_path / "s.yaml"
    stress.write_text("name: s\nscenario: {inline: {name: t, backbone: {name: debug}, fleet: [{profile: laptop}],\n"
                      "  emulation: {dilation: 2}}}\nchecks: {completed: true}\n"
                      "quick: {set: {emulation: {dilation: 1}, rounds: 2}}\n")
    for quick in (False, True):
        default = load_stress(stress, quick=quick).scenario.emulation
        assert (default.clock, default.dilation) == ("events", None)
        events = load_stress(stress, quick=quick, clock="events").scenario.emulation
        assert (events.clock, events.dilation) == ("events", None)
        real = load_stress(stress, quick=quick, clock="real").scenario.emulation
        assert (real.clock, real.dilation) == ("real", 1.0 if quick else 2.0)
    with pytest.raises(ConfigError, match=r"emulation\.dilation: only applies to clock: real"):
        load_stress(stress, clock=None)  # its own clock: the default, events, which has no dilation
    own = tmp_path / "own.yaml"
    own.write_text("name: own\nscenario: {inline: {name: t, backbone: {name: debug}, fleet: [{profile: laptop}],\n"
                   "  emulation: {clock: events}}}\nchecks: {completed: true}\n")
    assert load_stress(own).scenario.emulation.clock == "events"
    own_real = tmp_path / "own_real.yaml"  # None keeps a scenario's own real clock, dilation and all
    own_real.write_text(own.read_text().replace("{clock: events}", "{clock: real, dilation: 3}"))
    assert (load_stress(own_real, clock=None).scenario.emulation.clock,
            load_stress(own_real, clock=None).scenario.emulation.dilation) == ("real", 3.0)
    with pytest.raises(ConfigError, match=r"unknown clock 'sundial' \(allowed: real, events\)"):
        load_stress(stress, clock="sundial")
    modeled = tmp_path / "modeled.yaml"  # a setting only the event clock has: refused under --clock real
    modeled.write_text(own.read_text().replace("{clock: events}", "{clock: events, compute: modeled}"))
    assert load_stress(modeled).scenario.emulation.compute == "modeled"
    with pytest.raises(ConfigError, match=r"emulation\.compute: 'modeled' needs clock: events"):
        load_stress(modeled, clock="real")


def test_modeled_compute_makes_two_runs_of_one_seed_identical(write_scenario, tmp_path):
    """compute: modeled bills each step the run's cost table, so the timeline and the digests depend on the seed
    alone (host seconds and memory peaks are measured, and differ)."""
    import csv

    def emulated(path):
        rows = list(csv.DictReader(open(path)))
        return [{k: v for k, v in row.items() if not k.endswith("_host_s") and k != "peak_mb"} for row in rows]

    scenario = write_scenario(rounds=3, deadline_s=20, eval_every=3, emulation="{clock: events, compute: modeled}",
                              strategy="{name: depth_aware, clients_per_round: 2}")
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        result = run("run", str(scenario), "--out", str(out), timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
    assert (runs[0] / "costs.json").read_text() == (runs[1] / "costs.json").read_text()  # cached once
    for name in ("rounds.csv", "clients.csv"):
        first, second = emulated(runs[0] / name), emulated(runs[1] / name)
        assert first == second and len(first) >= 3, name
    assert len({row["digest"] for row in emulated(runs[0] / "rounds.csv")}) == 3


def test_compute_slots_let_at_most_n_processes_hold_one(tmp_path):
    """Two slots, three processes: the third gets one only when a holder lets go (or dies)."""
    import subprocess
    import sys

    holder = ("import sys, time; from pathlib import Path; from testbed.emulation.slots import ComputeSlots\n"
              "with ComputeSlots(Path(sys.argv[1]), 2):\n    print('held', flush=True); time.sleep(float(sys.argv[2]))\n")
    first = [subprocess.Popen([sys.executable, "-c", holder, str(tmp_path), "30"], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        assert [p.stdout.readline().strip() for p in first] == ["held", "held"]
        third = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path), "0"], stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)
        assert third.poll() is None  # still waiting: both slots are taken
        first[0].kill()  # a dead holder's lock goes with it
        assert third.stdout.readline().strip() == "held" and third.wait(timeout=30) == 0
    finally:
        for process in first:
            process.kill()
            process.wait()


@pytest.mark.parametrize("compute", ["measured", "modeled"])
def test_a_compute_time_too_short_for_the_work_is_refused_and_wins_no_place(write_scenario, tmp_path, compute):
    """Under the event clock an update's arrival rests on the compute time its client claims: a claim below half
    what the run's cost table says the work takes is refused (it would otherwise be first of the round); under
    `compute: modeled`, where every step is billed the table's figure, any claim below that bill is."""
    import numpy as np
    import zmq

    from testbed.aggregator.plan import make_plan
    from testbed.aggregator.rounds import ClientRow, Round
    from testbed.aggregator.server import Aggregator
    from testbed.config.loader import load_scenario
    from testbed.emulation.dilation import demand_cores
    from testbed.event_kinds import RunFinished
    from testbed.launch.run import prepare_assets
    from testbed.transport.messages import Message, encode

    scenario = load_scenario(write_scenario(fleet="[{profile: laptop, count: 2}]", emulation=f"{{clock: events, compute: {compute}}}"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    prepare_assets(scenario, run_dir)  # the cost table the aggregator judges claims by
    aggregator = Aggregator(make_plan(scenario), run_dir, bind="tcp://127.0.0.1:*")
    try:
        round_ = aggregator.round = Round(1, aggregator.events.now(), aggregator.rule.deadline_s)
        dealer = aggregator.context.socket(zmq.DEALER)
        dealer.connect(aggregator.router.address)
        # what compute: modeled bills 3 steps to depth 1 on a laptop (table: one-thread CPU s per step)
        billed_s = 3 * aggregator.cost_table["keyword"]["1"] / demand_cores(aggregator.fleet.records["c00"].spec.profile)
        short_s = 1e-6 if compute == "measured" else billed_s * 0.999  # a lie of 0.1 % is refused when modeled
        for cid, compute_s in (("c00", short_s), ("c01", billed_s if compute == "modeled" else 5.0)):
            round_.rows[cid] = ClientRow(cid, "laptop", "keyword", status="fetched", depth=1)
            tensors = {k: v + np.float32(1e-3) for k, v in aggregator.model.tensors_for(1, "keyword").items()}
            body = {"depth": 1, "samples": 24, "loss": 0.7,
                    "timings": {"download_s": 0.1, "compute_s": compute_s, "elapsed_s": compute_s + 0.1}}
            dealer.send_multipart(encode(Message("UPDATE", cid, 1, body, tensors)))
            received = aggregator.router.poll(10.0)
            assert received is not None and aggregator._on_update(received.message, received) is None
        dealer.close(linger=0)
        aggregator._replay_round(round_)
        rejected = [e for e in events(run_dir) if e["kind"] == "update_rejected"]
        assert [(e["client"], e["check"]) for e in rejected] == [("c00", "timings")]
        assert f"compute_s {short_s:.4g} s for 3 steps to depth 1 on laptop, allowed >= " in rejected[0]["reason"]
        assert [u.client for u in round_.updates] == ["c01"]
    finally:
        aggregator._finish(RunFinished, "test over")


def test_the_cost_table_measures_every_task_on_one_backbone_built_once(write_scenario, cache, monkeypatch):
    """A cache miss for two tasks builds (for a checkpoint: loads) the backbone once, and probes each task on
    a copy of it: the first task's probe steps must not train the backbone the second one is measured on."""
    import torch

    import testbed.model.backbone as backbone_module
    from testbed.client.costs import cost_table
    from testbed.config.loader import load_scenario

    built = []
    build = backbone_module.build_backbone
    monkeypatch.setattr(backbone_module, "build_backbone", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    scenario = load_scenario(write_scenario(training="{local_steps: 3, batch_size: 5}"))  # a batch of its own: a miss
    table = cost_table(scenario, ["keyword", "speaker"], {"keyword": 4, "speaker": 8}, "all_exits")
    assert len(built) == 1
    assert sorted(table) == ["keyword", "speaker"]
    # every exit of each task measured (the debug backbone's layers cost too little to order by depth)
    assert all(len(steps) >= 2 and all(s > 0 for s in steps.values()) for steps in table.values())
    fresh = build(scenario.backbone.name, scenario.backbone.family, scenario.backbone.pretrained, scenario.seed,
                  progress=False)
    # the built one is as built: each probe trained a copy
    assert all(torch.equal(a, b) for a, b in zip(built[0].state_dict().values(), fresh.state_dict().values()))
