"""Issue 16, classes 1, 2, 8: updates the aggregator drops never shape its screen, claims of samples are checked
against what the client could have trained, and a run that aggregated no update at all fails."""

import json

import numpy as np
import pytest
import torch
import zmq

from runs import events, run
from testbed.aggregator.plan import make_plan
from testbed.aggregator.rounds import ClientRow, Round, bookkeeping_fault
from testbed.aggregator.server import Aggregator
from testbed.config.loader import load_scenario
from testbed.event_kinds import RunFinished
from testbed.model.architecture import build_random
from testbed.model.early_exit import EarlyExitModel
from testbed.model.train import make_optimizer, round_samples, train_steps
from testbed.transport.messages import Message, encode

HONEST = {"depth": 1, "samples": 24, "loss": 0.7, "timings": {"download_s": 0.1, "compute_s": 1.0, "elapsed_s": 1.2}}


# ---------------------------------------------------------------- the claims of an UPDATE (class 2)
@pytest.mark.parametrize("change, reason", [
    ({"samples": 2**62}, "samples: claimed 4611686018427387904 clips, allowed 1..24 (its local steps x batch this "
                         "round)"),
    ({"samples": 25}, "samples: claimed 25 clips, allowed 1..24"),
    ({"samples": 0}, "samples: claimed 0 clips, allowed 1..24"),
    ({"loss": float("nan")}, "loss: nan (allowed: a finite number)"),
    ({"timings": {"download_s": -1, "compute_s": 1.0}}, "timings: download_s, elapsed_s missing or not a finite"),
    ({"depth": 2}, "depth: the update claims depth 2, its FETCH was for depth 1"),
])
def test_an_impossible_claim_is_named_with_its_bound(change, reason):
    assert bookkeeping_fault(HONEST, 1, 24) is None
    assert bookkeeping_fault({**HONEST, **change}, 1, 24).startswith(reason)


@pytest.mark.parametrize("clips", [5, 20])  # a shard smaller than the batch, and one larger
def test_the_samples_bound_is_what_local_training_counts(clips):
    model = EarlyExitModel(build_random("debug", seed=1), {"keyword": 3})
    waveforms, labels = torch.randn(clips, 4000), torch.randint(0, 3, (clips,))
    for batch_size in (8, min(8, clips)):  # what the scenario says, and what the client passes (testbed.client.local)
        stats = train_steps(model, make_optimizer(model, 1e-4), waveforms, labels, task="keyword", depth=1, steps=3,
                            batch_size=batch_size, generator=torch.Generator().manual_seed(0))
        assert stats["samples"] == round_samples(3, 8, clips) == 3 * min(8, clips)


# ---------------------------------------------------------------- the aggregator's decisions (classes 1 and 2)
@pytest.fixture
def aggregator(write_scenario, tmp_path):
    """An aggregator on a real ROUTER socket, in round 1, with c00 and c01 having fetched depth 1."""
    scenario = load_scenario(write_scenario(fleet="[{profile: laptop, count: 2}]", deadline_s=60))
    (tmp_path / "run").mkdir()
    aggregator = Aggregator(make_plan(scenario), tmp_path / "run", bind="tcp://127.0.0.1:*")
    aggregator.round = Round(1, aggregator.events.now(), aggregator.rule.deadline_s)
    for cid in ("c00", "c01"):
        aggregator.round.rows[cid] = ClientRow(cid, "laptop", "keyword", status="fetched", depth=1)
    try:
        yield aggregator
    finally:
        aggregator._finish(RunFinished, "test over")  # closes its sockets, its event log and its records


def upload(aggregator: Aggregator, client: str, body: dict, scale: float = 1e-3) -> None:
    """`client` uploads its fetched layers moved by `scale` over a real DEALER socket; the aggregator decides.

    The message is handed to `_on_update` straight from the ROUTER: who may speak for a client (JOIN) is
    another test's matter."""
    rng = np.random.default_rng(len(client))
    tensors = {key: (value + scale * rng.standard_normal(value.shape)).astype(value.dtype)
               for key, value in aggregator.model.tensors_for(1, "keyword").items()}
    dealer = aggregator.context.socket(zmq.DEALER)  # closed before the aggregator's context ends
    try:
        dealer.connect(aggregator.router.address)
        dealer.send_multipart(encode(Message("UPDATE", client, 1, body, tensors)))
        received = aggregator.router.poll(10.0)
        assert received is not None and received.message is not None, received
        assert aggregator._on_update(received.message, received) is None  # decided, not dropped as a message
    finally:
        dealer.close(linger=0)


def test_an_inflated_samples_claim_is_rejected_and_shapes_nothing(aggregator):
    most = round_samples(3, 8, len(aggregator.plan.shards["c00"]))
    upload(aggregator, "c00", {**HONEST, "samples": 2**62})
    upload(aggregator, "c01", {**HONEST, "samples": most})
    rejected = [e for e in events(aggregator.run_dir) if e["kind"] == "update_rejected"]
    assert [(e["client"], e["check"]) for e in rejected] == [("c00", "samples")]
    assert rejected[0]["reason"] == (f"samples: claimed {2**62} clips, allowed 1..{most} "
                                     "(its local steps x batch this round)")
    assert aggregator.round.rows["c00"].status == "rejected" and aggregator.round.rows["c01"].status == "updated"
    assert [(u.client, u.samples) for u in aggregator.round.updates] == [("c01", most)]  # c00 weighs nothing
    assert {group: list(refs) for group, refs in aggregator.screen.references.items()} == {
        group: ["c01"] for group in aggregator.screen.references}
    assert aggregator.screen.counts() == {"accepted": 1, "rejected": {"samples": 1}}


def test_updates_the_round_does_not_keep_never_become_references(aggregator):
    aggregator.round.started_t -= 1000  # the deadline passed: what arrives now is discarded
    upload(aggregator, "c00", HONEST, scale=1e-7)
    assert aggregator.round.rows["c00"].status == "discarded" and not aggregator.round.updates
    assert aggregator.screen.references == {} and aggregator.screen.counts() == {"accepted": 0, "rejected": {}}
    late = {**HONEST, "timings": {**HONEST["timings"], "elapsed_s": -5.0}}
    upload(aggregator, "c01", late, scale=1e-7)  # passes the screen, refused for its bookkeeping
    assert aggregator.round.rows["c01"].status == "rejected" and aggregator.screen.references == {}
    assert [e["check"] for e in events(aggregator.run_dir) if e["kind"] == "update_rejected"] == ["timings"]
    assert aggregator.screen.counts() == {"accepted": 0, "rejected": {"timings": 1}}


# ---------------------------------------------------------------- a run that trained nothing (class 8)
def test_a_run_whose_rounds_all_end_without_an_update_fails_with_each_clients_story(write_scenario, tmp_path):
    (tmp_path / "never_online.yaml").write_text(  # online only after ~359 days: offline all this run long
        "name: never_online\ncores: 1\nthreads: 1\nspeed: 1.0\nmemory_mb: 4096\nlink: wifi\n"
        "availability: {intervals: [[31000000, 31536000]]}\n")
    out = tmp_path / "run"
    result = run("run", str(write_scenario(fleet="[{profile: never_online.yaml, count: 2}]")), "--out", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    end = events(out)[-1]
    assert end["kind"] == "run_failed"
    assert end["reason"] == "no round aggregated an update (2 rounds): c00, c01: skipped (offline) x2"
    assert f"run failed: {end['reason']}" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"] == end["reason"] and summary["updates"] == 0
