"""The `centralized` baseline: the same model, exits and loss, all of the fleet's data in one process.

The upper bound a federated run is measured against. The model starts from the federated run's
initial global state (same backbone, same heads, same seed). Each "round" trains every task, at full
depth, for as many steps as that task's clients would together deliver in a federated round
(updates per round x local_steps, same batch size), on the union of their shards, so the model sees
the same number of samples; then it is evaluated on the same held-out data at every exit.
Times are this host's wall seconds of training, not emulated device time. The run directory's
events.jsonl uses the run vocabulary (run_started, round_aggregated, evaluated, run_finished), so
every tool that reads runs reads it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from testbed.config.loader import dump_scenario, load_scenario
from testbed.config.schema import Scenario
from testbed.errors import UserError
from testbed.event_kinds import Evaluated, RoundAggregated, RunFailed, RunFinished, RunInterrupted, RunStarted
from testbed.events import EventLog

HOST_TIME = "centralized: host wall seconds of training, no emulation"


def steps_per_round(scenario: Scenario, clients_per_task: dict[str, int]) -> dict[str, int]:
    """Local steps a federated round delivers per task: its share of the updates kept per round x local_steps."""
    fleet = sum(clients_per_task.values())
    kept = min(scenario.strategy.clients_per_round or fleet, fleet)  # over-selection keeps the first k updates
    return {task: max(1, round(kept * count / fleet * scenario.training.local_steps))
            for task, count in clients_per_task.items()}


def warm_up(model, train: dict[str, tuple[torch.Tensor, torch.Tensor]], batch_size: int, loss_mode: str) -> None:
    """One untimed forward and backward per task, no optimizer step (the weights stay as they are).

    The first pass pays one-off costs (thread pools, kernel selection, allocator growth; measured on
    the debug backbone: 2x a later step). Clients pay theirs in the cost probe before their first
    round, so the baseline pays its own before its clock starts."""
    from testbed.model.early_exit import exit_loss

    model.train()
    for task, (waveforms, labels) in train.items():
        batch = slice(0, min(batch_size, len(waveforms)))
        exit_loss(model(waveforms[batch], model.num_layers, task), labels[batch], loss_mode).backward()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.eval()
        for task, (waveforms, _) in train.items():
            model(waveforms[:1], model.num_layers, task)


def run_centralized(scenario_path: str, overrides: list[str], out: Path) -> Path:
    """Train and evaluate the baseline; returns its run directory `out` (which must be new or empty)."""
    from testbed.aggregator.global_model import GlobalModel
    from testbed.aggregator.plan import make_plan
    from testbed.aggregator.summary import write_summary
    from testbed.data.source import task_data
    from testbed.model.train import make_optimizer, train_steps
    from testbed.monitor.report import build_report_or_warn

    scenario = load_scenario(scenario_path, overrides)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    dump_scenario(scenario, out / "scenario.yaml")
    plan = make_plan(scenario)
    members = {task: [cid for cid, spec in plan.clients.items() if spec.task == task] for task in plan.classes}
    train, test = {}, {}
    for task, clients in members.items():
        data = task_data(scenario.data, task, scenario.seed)
        pooled = np.asarray(sorted({i for cid in clients for i in plan.shards[cid]}), dtype=np.int64)
        train[task] = (torch.from_numpy(data.train_clips(pooled)), torch.from_numpy(data.train_labels[pooled]))
        test[task] = (torch.from_numpy(data.test_waveforms), torch.from_numpy(data.test_labels))
    steps = steps_per_round(scenario, {task: len(clients) for task, clients in members.items()})
    global_model = GlobalModel(scenario, plan.classes)  # the federated run's initial global state
    model, training = global_model.model, scenario.training
    optimizer = make_optimizer(model, training.learning_rate, training.head_learning_rate)
    warm_up(model, train, training.batch_size, training.loss)
    generator = torch.Generator().manual_seed(scenario.seed)  # batch order
    torch.manual_seed(scenario.seed)  # dropout
    events = EventLog(out / "events.jsonl")
    events.emit(RunStarted(scenario=scenario.name, rounds=scenario.rounds, exits=list(model.exits),
                           strategy="centralized", clients=[], dilation={"factor": 1.0, "reason": HOST_TIME},
                           train_clips={task: len(waveforms) for task, (waveforms, _) in train.items()},
                           steps_per_round=steps, batch_size=training.batch_size))
    training_s, ending = 0.0, None  # host seconds of training so far: what time_budget_s limits here
    try:
        for index in range(1, scenario.rounds + 1):
            started = time.perf_counter()
            for task, (waveforms, labels) in train.items():
                train_steps(model, optimizer, waveforms, labels, task=task, depth=model.num_layers,
                            steps=steps[task], batch_size=min(training.batch_size, len(waveforms)),
                            loss_mode=training.loss, generator=generator)
            training_s += time.perf_counter() - started
            events.emit(RoundAggregated(round=index, digest=global_model.digest(), aggregate_s=0.0))
            ending = scenario.ending(index, training_s, clock="host s")
            if index % scenario.eval_every == 0 or ending:
                accuracy, seconds = global_model.evaluate(test)
                events.emit(Evaluated(round=index, accuracy=accuracy, eval_s=round(seconds, 3)))
            if ending:
                break
        events.emit(RunFinished(reason=ending, dropped_messages=0))
    except KeyboardInterrupt:
        events.emit(RunInterrupted(reason="interrupted"))
        raise
    except Exception as error:
        events.emit(RunFailed(reason=f"{type(error).__name__}: {error}"))
        raise
    finally:
        events.close()
        write_summary(out)
    build_report_or_warn(out)
    return out
