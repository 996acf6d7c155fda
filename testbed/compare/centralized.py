"""The `centralized` baseline: the same model, exits and loss, all of the fleet's data in one process.

The upper bound a federated run is measured against. Each "round" trains, for every task, as many
steps at full depth as that task's clients would together (clients x local_steps, same batch size),
so the model sees the same number of samples as the federated run; then it is evaluated on the same
held-out data. Times are this host's wall seconds of training, not emulated device time. It writes
a run directory whose events.jsonl uses the run vocabulary (run_started, evaluated, run_finished), so
every tool that reads runs reads it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from testbed.config.loader import dump_scenario, load_scenario, resolve_fleet
from testbed.events import EventLog


def run_centralized(scenario_path: str, overrides: list[str], out: Path) -> Path:
    from testbed.data.source import task_data
    from testbed.model.backbone import build_backbone
    from testbed.model.early_exit import EarlyExitModel
    from testbed.model.train import evaluate, make_optimizer, train_steps

    scenario = load_scenario(scenario_path, overrides)
    out.mkdir(parents=True, exist_ok=True)
    dump_scenario(scenario, out / "scenario.yaml")
    torch.manual_seed(scenario.seed)
    clients_per_task: dict[str, int] = {}
    for client in resolve_fleet(scenario):
        clients_per_task[client.task] = clients_per_task.get(client.task, 0) + 1
    data = {task: task_data(scenario.data, task, scenario.seed) for task in sorted(clients_per_task)}
    spec, training = scenario.backbone, scenario.training
    backbone = build_backbone(spec.name, spec.family, spec.pretrained, scenario.seed, progress=False)
    model = EarlyExitModel(backbone, {task: len(d.classes) for task, d in data.items()}, spec.exits,
                           spec.freeze_feature_encoder)
    train = {task: (torch.from_numpy(d.train_clips()), torch.from_numpy(d.train_labels)) for task, d in data.items()}
    test = {task: (torch.from_numpy(d.test_waveforms), torch.from_numpy(d.test_labels)) for task, d in data.items()}
    optimizer = make_optimizer(model, training.learning_rate, training.head_learning_rate)
    generator = torch.Generator().manual_seed(scenario.seed)
    events = EventLog(out / "events.jsonl")
    events.emit("run_started", scenario=scenario.name, rounds=scenario.rounds, exits=list(model.exits),
                strategy="centralized", clients=[], dilation={"factor": 1.0, "reason": "centralized: host time"})
    for index in range(1, scenario.rounds + 1):
        for task, (waveforms, labels) in train.items():
            train_steps(model, optimizer, waveforms, labels, task=task, depth=model.num_layers,
                        steps=clients_per_task[task] * training.local_steps,
                        batch_size=min(training.batch_size, len(waveforms)), loss_mode=training.loss,
                        generator=generator)
        if index % scenario.eval_every == 0 or index == scenario.rounds:
            evaluated = time.perf_counter()
            accuracy = {task: {str(layer): round(value, 4) for layer, value in
                               evaluate(model, waveforms, labels, task=task).items()}
                        for task, (waveforms, labels) in test.items()}
            events.emit("evaluated", round=index, accuracy=accuracy, eval_s=round(time.perf_counter() - evaluated, 3))
    events.emit("run_finished", reason="rounds done", dropped_messages=0)
    events.close()
    from testbed.aggregator.server import write_summary

    write_summary(out)
    return out
