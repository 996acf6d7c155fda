"""A resume reproduces the run it continues, and a failing aggregator is always reported on the console.

The resume test runs a scenario whose depths depend on the evaluated accuracy (`auto` preferred exits) once
uninterrupted and once interrupted after round 2 and resumed: the depths sent per client per round and the
per-round digests must be equal, round by round. Its server step has momentum, whose velocity only the
checkpoint carries: a resume that forgot it would step round 3 differently.
"""

import csv
import io
import json
import os
import shlex
import signal
import subprocess

import numpy as np
import pytest

import runs
from runs import events, run, start, wait_for_event
from testbed.aggregator import checkpoint
from testbed.aggregator.checkpoint import CheckpointRefused, load_checkpoint, save_checkpoint
from testbed.aggregator.server import Interrupted, _interruption_held
from testbed.config.loader import load_scenario
from testbed.launch.run import new_run_dir

AUTO = "{name: task, preferred_exits: {keyword: auto, speaker: auto}}"
SERVER_MOMENTUM = "{name: depth_aware, server_learning_rate: 1.5, server_momentum: 0.5}"


def finished(result) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def depths_sent(log: list[dict]) -> dict[int, dict[str, int]]:
    """Round -> {client: depth of the model it was sent}, from the launch that completed the round (a resumed run
    repeats the round it was interrupted in: its second round_started starts that round's record afresh)."""
    sent: dict[int, dict[str, int]] = {}
    for event in log:
        if event["kind"] == "round_started":
            sent[event["round"]] = {}
        elif event["kind"] == "model_sent":
            sent[event["round"]][event["client"]] = event["depth"]
    return sent


def digests(log: list[dict]) -> dict[int, str]:
    return {e["round"]: e["digest"] for e in log if e["kind"] == "round_aggregated"}


def test_a_run_interrupted_after_round_2_and_resumed_sends_the_depths_and_digests_of_an_uninterrupted_run(
        write_scenario, tmp_path):
    scenario = write_scenario(rounds=4, exit_policy=AUTO, seed=3, strategy=SERVER_MOMENTUM)
    reference = tmp_path / "reference"
    finished(run("run", str(scenario), "--out", str(reference)))
    expected_depths, expected_digests = depths_sent(events(reference)), digests(events(reference))
    # the auto exits shaped the later rounds (else this test could not tell a resume that forgot them)
    assert expected_depths[1] != expected_depths[3] or expected_depths[1] != expected_depths[4], expected_depths

    out = tmp_path / "run"
    process = start("run", str(scenario), "--out", str(out))
    wait_for_event(out, lambda e: e["kind"] == "round_aggregated" and e["round"] == 2)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    finished(run("run", "--resume", str(out)))
    log = events(out)
    assert [e["from_round"] for e in log if e["kind"] == "run_resumed"] == [2]
    for index in range(1, 5):
        assert (index, depths_sent(log)[index]) == (index, expected_depths[index])
        assert (index, digests(log)[index]) == (index, expected_digests[index])
    # one CSV row per round, as the uninterrupted run wrote, also for round 2, interrupted while it was evaluated
    assert csv_rounds(out, "rounds.csv") == csv_rounds(reference, "rounds.csv")
    assert csv_rounds(out, "clients.csv") == csv_rounds(reference, "clients.csv")


def csv_rounds(run_dir, name: str) -> list[tuple]:
    """The rows of a run's CSV file by (round, client, digest, accuracies): what does not depend on timing."""
    with open(run_dir / name, newline="") as file:
        return [(row["round"], row.get("client"), row.get("digest"), row.get("status"),
                 *(v for k, v in row.items() if k.startswith("acc_"))) for row in csv.DictReader(file)]


def test_the_checkpoint_carries_the_aggregators_round_state_and_refuses_it_altered(write_scenario, tmp_path):
    scenario = load_scenario(write_scenario())
    run_dir = new_run_dir(scenario, str(tmp_path / "run"))
    state = {"w": np.arange(4, dtype=np.float32)}
    carried = {"dilation": 2.5, "screen": {"layer 0": {"c01": 0.5, "c00": 0.25}}, "busy_until": {"c01": 61.5}}
    velocity = {"w": np.full(4, 0.5, dtype=np.float32)}
    save_checkpoint(run_dir, 1, state, {"digest": "d1", "seq": 9, "t": 1.0}, carried, velocity)
    log = [{"kind": "round_aggregated", "round": 1, "digest": "d1"}]
    loaded = load_checkpoint(run_dir, scenario, log)
    assert loaded.carried == carried and list(loaded.carried["screen"]["layer 0"]) == ["c01", "c00"]  # order kept
    assert list(loaded.state) == ["w"] and np.array_equal(loaded.state["w"], state["w"])  # velocity kept apart
    assert list(loaded.velocity) == ["w"] and np.array_equal(loaded.velocity["w"], velocity["w"])
    pointer = run_dir / "checkpoints" / "checkpoint.json"
    meta = json.loads(pointer.read_text())
    meta["carried"]["screen"]["layer 0"]["c00"] = 99.0  # a hand-edited reference norm
    pointer.write_text(json.dumps(meta))
    with pytest.raises(CheckpointRefused, match="carried state .* altered"):
        load_checkpoint(run_dir, scenario, log)
    save_checkpoint(run_dir, 1, state, {"digest": "d1", "seq": 9, "t": 1.0}, {**carried, "busy_until": {"c01": -1}})
    with pytest.raises(CheckpointRefused, match="busy_until must map each client to a run time >= 0"):
        load_checkpoint(run_dir, scenario, log)


def test_a_ctrl_c_while_the_checkpoint_is_written_interrupts_the_run_once_the_checkpoint_is_whole(
        write_scenario, tmp_path, monkeypatch):
    scenario = load_scenario(write_scenario())
    run_dir = new_run_dir(scenario, str(tmp_path / "run"))
    state = {"w": np.arange(4096, dtype=np.float32)}

    class CtrlCWhileWriting(io.FileIO):
        """The state file, which presses Ctrl-C on its second write: inside numpy's zip writer, past the header."""
        writes = 0

        def write(self, data):
            CtrlCWhileWriting.writes += 1
            if CtrlCWhileWriting.writes == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return super().write(data)

    monkeypatch.setattr(checkpoint, "open", lambda path, mode: CtrlCWhileWriting(path, "w"), raising=False)

    def interrupt(signum, frame):  # the aggregator's own handler
        raise Interrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        with pytest.raises(Interrupted, match="SIGINT"), _interruption_held():
            save_checkpoint(run_dir, 1, state, {"digest": "d1", "seq": 9, "t": 1.0})
    finally:
        signal.signal(signal.SIGINT, previous)
    assert CtrlCWhileWriting.writes > 2  # the write went on after Ctrl-C
    loaded = load_checkpoint(run_dir, scenario, [{"kind": "round_aggregated", "round": 1, "digest": "d1"}])
    assert loaded.round == 1 and np.array_equal(loaded.state["w"], state["w"])


def on_a_terminal(*args: str) -> subprocess.CompletedProcess:
    """`testbed run ...` on a pseudo-terminal (so with the live dashboard), as a user at a terminal runs it."""
    command = " ".join(shlex.quote(part) for part in runs.testbed_command("run", *args))
    return subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True, timeout=240)


def test_a_run_interrupted_before_its_first_event_starts_afresh_on_resume_with_the_dashboard_on(
        write_scenario, tmp_path):
    scenario = load_scenario(write_scenario(rounds=1, fleet="[{profile: laptop, count: 2}]"))
    out = new_run_dir(scenario, str(tmp_path / "run"))  # what `testbed run` leaves when stopped before any event
    result = on_a_terminal("--resume", str(out))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "run finished: 1/1 rounds" in result.stdout
    assert [e["kind"] for e in events(out)][0] == "run_started"


def _refused_checkpoint(run_dir):
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "checkpoint.json").write_text("{")


def _no_log_folder(run_dir):
    (run_dir / "logs").write_text("")  # the aggregator cannot open its log: it fails before its first event


@pytest.mark.parametrize("break_it, said", [
    (_refused_checkpoint, "run failed: checkpoint refused: checkpoints/checkpoint.json is not valid JSON"),
    (_no_log_folder, "run failed: the aggregator exited with code 1 before its first event"),
], ids=["refused-checkpoint", "before-first-event"])
@pytest.mark.parametrize("dashboard", [True, False], ids=["dashboard", "no-dashboard"])
def test_a_failing_aggregator_leaves_its_reason_on_the_console_and_exit_code_1(
        write_scenario, tmp_path, break_it, said, dashboard):
    scenario = load_scenario(write_scenario(fleet="[{profile: laptop, count: 2}]"))
    out = new_run_dir(scenario, str(tmp_path / "run"))
    break_it(out)
    result = on_a_terminal("--resume", str(out), *([] if dashboard else ["--no-dashboard"]))
    assert result.returncode == 1, result.stdout[-3000:]
    after = result.stdout.rsplit("\x1b[?1049l", 1)[-1]  # what stays on the console once the dashboard has gone
    assert said in after, after
    assert events(out)[-1]["kind"] == "run_failed"


def test_a_resumed_event_clock_run_starts_the_last_rounds_straggler_as_late_as_the_uninterrupted_run(
        write_scenario, tmp_path):
    """Event clock, modeled compute: a client frozen 50 s in round 1 (20 s deadlines) is still busy when round 2 is
    announced, so it misses round 2 too, and starts round 3 late. A run interrupted after round 1 or 2 and resumed
    must know that (the checkpoint carries when each client's last upload ended): same timeline, same statuses,
    same digests."""
    from testbed.aggregator.plan import client_seed
    from testbed.config.schema import Failure
    from testbed.emulation.availability import DeviceSchedule

    failure = Failure(freeze_rate=0.3, freeze_s=50.0)
    seed = next(s for s in range(200) if [DeviceSchedule(None, failure, client_seed(s, "c01")).fault(r)
                                          for r in (1, 2, 3)] == ["freeze", None, None])
    frozen = tmp_path / "frozen.yaml"
    frozen.write_text("name: frozen\ncores: 1\nthreads: 1\nspeed: 1.0\nmemory_mb: 4096\nlink: wifi\n"
                      "failure: {freeze_rate: 0.3, freeze_s: 50.0}\n")
    scenario = write_scenario(rounds=3, deadline_s=20, eval_every=3, seed=seed,
                              emulation="{clock: events, compute: modeled}",
                              fleet=f"[{{profile: laptop}}, {{profile: {frozen}}}]")
    reference = tmp_path / "reference"
    finished(run("run", str(scenario), "--out", str(reference)))
    out = tmp_path / "run"
    process = start("run", str(scenario), "--out", str(out))
    wait_for_event(out, lambda e: e["kind"] == "round_aggregated" and e["round"] == 1)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    finished(run("run", "--resume", str(out)))

    def timeline(run_dir):
        with open(run_dir / "rounds.csv", newline="") as file:
            return [{k: v for k, v in row.items() if not k.endswith("_host_s") and k != "peak_mb"}
                    for row in csv.DictReader(file)]

    statuses = {(e["round"], row["client"]): row["status"] for e in events(reference)
                if e["kind"] == "round_closed" for row in e["clients"]}
    assert [statuses[r, "c01"] for r in (1, 2, 3)] == ["straggler", "straggler", "updated"]
    # the event clock runs ahead of the SIGINT: resumed after round 1 or 2, the straggler is busy into the next round
    assert [e["from_round"] for e in events(out) if e["kind"] == "run_resumed"] in ([1], [2])
    assert timeline(out) == timeline(reference)
    assert csv_rounds(out, "clients.csv") == csv_rounds(reference, "clients.csv")
