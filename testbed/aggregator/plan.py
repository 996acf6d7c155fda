"""Who trains on what: the resolved fleet, each client's data shard and seed, the classes of each task."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from testbed.config.loader import ClientSpec, resolve_fleet
from testbed.config.schema import Scenario


@dataclass(frozen=True)
class RunPlan:
    scenario: Scenario
    clients: dict[str, ClientSpec]  # client id -> spec, fleet order
    shards: dict[str, list[int]]  # client id -> indices into its task's training clips
    classes: dict[str, int]  # task -> number of classes


def client_seed(scenario_seed: int, client_id: str) -> int:
    """A per-client seed derived from the scenario's one seed (stable across runs and hosts)."""
    digest = hashlib.sha256(f"{scenario_seed}:{client_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_plan(scenario: Scenario) -> RunPlan:
    """Partition each task's training clips among that task's clients (DataSpec.partition)."""
    from testbed.data.partition import partition_by_speaker, partition_dirichlet, partition_iid
    from testbed.data.source import task_data

    clients = {spec.client_id: spec for spec in resolve_fleet(scenario)}
    shards, classes = {}, {}
    spec = scenario.data
    for task in sorted({c.task for c in clients.values()}):
        members = [cid for cid, c in clients.items() if c.task == task]
        data = task_data(spec, task, scenario.seed)
        classes[task] = len(data.classes)
        if spec.partition == "speaker":
            parts = partition_by_speaker(data.train_speakers, len(members), scenario.seed)
        elif spec.partition == "dirichlet":
            parts = partition_dirichlet(data.train_labels, len(members), spec.dirichlet_alpha, scenario.seed)
        else:
            parts = partition_iid(len(data.train_labels), len(members), scenario.seed)
        shards.update({cid: sorted(int(i) for i in part) for cid, part in zip(members, parts)})
    return RunPlan(scenario, clients, shards, classes)
