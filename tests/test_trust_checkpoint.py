"""A resume trusts no checkpoint it cannot tie to its run (run id, scenario, round, the events' last digest).

Two finished 2-round runs are made once; each case resumes a tampered copy of the first with `testbed run
--resume`, over real processes, and must be refused before any client is waited for.
"""

import hashlib
import json
import shutil

import numpy as np
import pytest

from runs import alive, events, run

SCENARIO = {  # the write_scenario fixture's, with two clients: the runs only need a checkpoint
    "name": "trust", "rounds": 2, "deadline_s": 20, "eval_every": 2,
    "data": "{words: [stop, spot, no]}", "backbone": "{name: debug}",
    "training": "{local_steps: 2, batch_size: 8}",
    "fleet": "[{profile: laptop, count: 2}]",
    "emulation": "{clock: real, dilation: 1}",
}


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory, cache):
    """Two finished runs of the same scenario: equal global states, different runs."""
    folder = tmp_path_factory.mktemp("trust")
    scenario = folder / "trust.yaml"
    scenario.write_text("".join(f"{key}: {value}\n" for key, value in SCENARIO.items()))
    runs = []
    for name in ("base", "other"):
        result = run("run", str(scenario), "--out", str(folder / name))
        assert result.returncode == 0, result.stdout + result.stderr
        runs.append(folder / name)
    return runs


def _from_another_run(run_dir, other):
    shutil.rmtree(run_dir / "checkpoints")
    shutil.copytree(other / "checkpoints", run_dir / "checkpoints")


def _edit_pointer(run_dir, **fields):
    pointer = run_dir / "checkpoints" / "checkpoint.json"
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), **fields}))


def _outside(run_dir, other):
    shutil.copy(run_dir / "checkpoints" / "state-00002.npz", run_dir / "x.npz")  # a loadable state, outside
    _edit_pointer(run_dir, state="../x.npz")


def _truncate(run_dir, other):
    state = run_dir / "checkpoints" / "state-00002.npz"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])


def _flip_byte(run_dir, other):
    state = run_dir / "checkpoints" / "state-00002.npz"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))


def _state_altered(run_dir, other):
    """A well-formed state file whose weights are not the ones its round ended with, its SHA-256 forged to match."""
    state = run_dir / "checkpoints" / "state-00002.npz"
    with np.load(state) as arrays:
        altered = {key: arrays[key] for key in arrays.files}
    first = sorted(altered)[0]
    altered[first] = altered[first] + 1
    with open(state, "wb") as file:
        np.savez(file, **altered)
    _edit_pointer(run_dir, sha256=hashlib.sha256(state.read_bytes()).hexdigest())


def _velocity_misshapen(run_dir, other):
    """A server velocity (momentum's state) for a key of the model, of another shape; its SHA-256 forged to match."""
    state = run_dir / "checkpoints" / "state-00002.npz"
    with np.load(state) as arrays:
        saved = {key: arrays[key] for key in arrays.files}
    saved["server_velocity/" + sorted(saved)[0]] = np.zeros(3, dtype=np.float32)
    with open(state, "wb") as file:
        np.savez(file, **saved)
    _edit_pointer(run_dir, sha256=hashlib.sha256(state.read_bytes()).hexdigest())


TAMPERINGS = {  # case -> (tampering, what the one line must name)
    "from_another_run": (_from_another_run, "belongs to run"),
    "round_edited": (lambda run_dir, other: _edit_pointer(run_dir, round=1),
                     "says round 1, but the last round this run aggregated is 2"),
    "state_outside": (_outside, "names state '../x.npz'"),
    "state_truncated": (_truncate, "checkpoints/state-00002.npz is corrupt"),
    "state_byte_flipped": (_flip_byte, "checkpoints/state-00002.npz is corrupt"),
    "state_missing": (lambda run_dir, other: (run_dir / "checkpoints" / "state-00002.npz").unlink(),
                      "checkpoints/state-00002.npz is missing"),
    "state_altered": (_state_altered, "holds global state"),
    "velocity_misshapen": (_velocity_misshapen, "server velocity of"),
}


def _files(folder) -> dict:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("case", list(TAMPERINGS))
def test_a_resume_refuses_a_checkpoint_it_cannot_tie_to_its_run(finished_runs, tmp_path, case):
    base, other = finished_runs
    tamper, named = TAMPERINGS[case]
    run_dir = tmp_path / "run"
    shutil.copytree(base, run_dir)
    tamper(run_dir, other)
    before, kept = len(events(run_dir)), _files(run_dir / "checkpoints")

    result = run("run", "--resume", str(run_dir), timeout=120)

    assert result.returncode not in (0, 130), result.stdout + result.stderr
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "checkpoint refused" in line and named in line]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    new = events(run_dir)[before:]
    # refused before the fleet was waited for: no run started, no client joined; one run_failed says why
    assert [e["kind"] for e in new] == ["run_failed"], new
    assert new[0]["reason"].startswith("checkpoint refused: ") and named in new[0]["reason"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"] == new[0]["reason"]
    assert _files(run_dir / "checkpoints") == kept  # the evidence stays as it was
    assert all(not alive(pid) for pid in json.loads((run_dir / "processes.json").read_text()).values())



# ---------------------------------------------------------------- the checks themselves, in this process
def _pointer_text(text):
    return lambda run_dir: (run_dir / "checkpoints" / "checkpoint.json").write_text(text)


def _without(*keys):
    def tamper(run_dir):
        pointer = run_dir / "checkpoints" / "checkpoint.json"
        meta = json.loads(pointer.read_text())
        pointer.write_text(json.dumps({k: v for k, v in meta.items() if k not in keys}))
    return tamper


def _link_outside(run_dir):
    state = run_dir / "checkpoints" / "state-00002.npz"
    shutil.move(state, run_dir / "elsewhere.npz")
    state.symlink_to(run_dir / "elsewhere.npz")


REFUSALS = {  # case -> (tampering, what the one line must name)
    "invalid_json": (_pointer_text("{\"round\": 2,"), "checkpoints/checkpoint.json is not valid JSON"),
    "not_an_object": (_pointer_text("[2]"), "must hold a JSON object, not list"),
    "round_a_string": (lambda run_dir: _edit_pointer(run_dir, round="2"), "round is '2'; expected a round number"),
    "digest_a_number": (lambda run_dir: _edit_pointer(run_dir, digest=7), "digest is 7; expected a string"),
    "predates_run_ids": (_without("run_id", "scenario"), "has no run_id and no scenario: it predates"),
    "run_json_missing": (lambda run_dir: (run_dir / "run.json").unlink(), "run.json is missing"),
    "pointer_missing": (lambda run_dir: (run_dir / "checkpoints" / "checkpoint.json").unlink(),
                        "checkpoints/checkpoint.json is missing, but this run aggregated round 2"),
    "digest_edited": (lambda run_dir: _edit_pointer(run_dir, digest="0123456789abcdef"),
                      "says global state 0123456789abcdef for round 2, but events.jsonl recorded"),
    "state_a_link_outside": (_link_outside, "checkpoints/state-00002.npz is a link"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_load_checkpoint_names_what_does_not_match(finished_runs, tmp_path, case):
    from testbed.aggregator.checkpoint import CheckpointRefused, load_checkpoint
    from testbed.config.loader import load_scenario
    from testbed.events import read_events

    tamper, named = REFUSALS[case]
    run_dir = tmp_path / "run"
    shutil.copytree(finished_runs[0], run_dir)
    tamper(run_dir)
    with pytest.raises(CheckpointRefused, match="^checkpoint refused: ") as refusal:
        load_checkpoint(run_dir, load_scenario(run_dir / "scenario.yaml"), read_events(run_dir / "events.jsonl"))
    assert named in str(refusal.value) and "\n" not in str(refusal.value)


def test_load_checkpoint_takes_its_own_runs_checkpoint_and_refuses_an_edited_scenario(finished_runs):
    from testbed.aggregator.checkpoint import CheckpointRefused, load_checkpoint
    from testbed.config.loader import load_scenario
    from testbed.events import read_events

    base = finished_runs[0]
    scenario, log = load_scenario(base / "scenario.yaml"), read_events(base / "events.jsonl")
    checkpoint = load_checkpoint(base, scenario, log)
    last = [e for e in log if e["kind"] == "round_aggregated"][-1]
    assert (checkpoint.round, checkpoint.digest) == (2, last["digest"]) and checkpoint.state
    with pytest.raises(CheckpointRefused, match="the scenario was edited after the run started"):
        load_checkpoint(base, load_scenario(base / "scenario.yaml", ["rounds=3"]), log)
