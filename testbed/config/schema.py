"""Scenario, device-profile and link schema: frozen, keyword-only dataclasses mapping the YAML 1:1.

Each field's rules (bounds, allowed names) live next to it in `setting(...)`; the generic
converter in `convert.py` enforces them, so nothing here repeats validation code.
"""

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from testbed.config import names
from testbed.config.convert import FrozenDict, setting

Problems = Iterator[tuple[str, str]]  # cross-field checks yield (field name, problem)

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # becomes part of runs/<name>-<time>/


@dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """A network link preset (`profiles/links/<name>.yaml`), shaped in the transport or by tc netem."""

    name: str                                 # equal to the file name
    downlink_mbps: float = setting(gt=0)      # aggregator -> client, Mbit/s
    uplink_mbps: float = setting(gt=0)        # client -> aggregator, Mbit/s (often far below downlink)
    latency_ms: float = setting(ge=0)         # round trip, ms, as speed tests report it; half each way
    jitter_ms: float = setting(0.0, ge=0)     # +- random variation of the latency, ms
    loss: float = setting(0.0, ge=0, lt=1)    # packet loss probability, emulated as retransmit delay
    source: str = ""                          # citation for the figures


@dataclass(frozen=True, kw_only=True)
class Availability:
    """When a client is reachable: a per-round draw and/or alternating online/offline periods."""

    online_probability: float = setting(1.0, ge=0, le=1)  # chance to be online when a round starts
    online_s: float | None = setting(None, gt=0)   # seconds online, then offline_s offline, repeating
    offline_s: float | None = setting(None, gt=0)  # (starting online); None for both = no periods

    def problems(self) -> Problems:
        if (self.online_s is None) != (self.offline_s is None):
            missing = "offline_s" if self.offline_s is None else "online_s"
            yield missing, "online_s and offline_s go together (alternating periods, seconds > 0)"


@dataclass(frozen=True, kw_only=True)
class Failure:
    """Injected faults, drawn per client per round from the scenario seed."""

    crash_rate: float = setting(0.0, ge=0, le=1)   # chance per round that the process is killed
    freeze_rate: float = setting(0.0, ge=0, le=1)  # chance per round that it hangs (no heartbeats)
    freeze_s: float = setting(30.0, gt=0)          # how long a freeze lasts, seconds


@dataclass(frozen=True, kw_only=True)
class Profile:
    """What a device is (`profiles/<name>.yaml`): compute, memory, default link, availability."""

    name: str                                 # equal to the file name
    description: str = ""
    source: str = ""                          # citation for the figures
    cores: int = setting(1, ge=1)             # CPU affinity size: host cores the client is pinned to
    threads: int = setting(1, ge=1)           # torch intra-op threads used for training (<= cores)
    speed: float = setting(1.0, gt=0, le=16)  # per-core compute speed relative to one host core
    memory_mb: int = setting(4096, ge=64)     # MiB the client may use: device RAM minus the OS's share
    max_exit: int | None = setting(None, ge=1)  # static policy's cap: 1-based exit index
    #                                           (portable across backbones); None = deepest exit
    link: str = "wifi"                        # default link preset name (profiles/links/) or path
    availability: Availability = setting(Availability)
    failure: Failure = setting(Failure)

    def problems(self) -> Problems:
        if self.threads > self.cores:  # more threads than pinned cores only time-slice each other
            yield "threads", f"{self.threads} is more than cores ({self.cores}) (allowed: threads <= cores)"


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Which corpus, how it is split among clients and held out for evaluation."""

    source: str = setting("builtin", choices=names.DATA_SOURCES, what="data source")
    path: str | None = None                   # corpus directory or manifest; required unless builtin
    partition: str = setting("speaker", choices=names.PARTITIONS, what="partition")
    dirichlet_alpha: float = setting(0.5, gt=0)  # label-skew concentration; smaller = more skewed
    test_speaker_fraction: float = setting(0.2, gt=0, lt=1)  # speakers held out for evaluation
    clip_seconds: float = setting(1.0, gt=0, le=10)  # seconds per clip (Speech Commands: 1 s)
    words: tuple[str, ...] | None = setting(None, nonempty=True)  # keyword classes; None = all

    def problems(self) -> Problems:
        if self.source != "builtin" and self.path is None:
            yield "path", f"required when source is {self.source!r} (a corpus directory or manifest file)"


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """The SSL backbone and where its exits sit."""

    name: str = "tiny"                        # "tiny" | "debug" | a Hugging Face id | a local directory
    family: str = setting("wav2vec2", choices=names.FAMILIES, what="backbone family")
    exits: tuple[int, ...] | None = setting(None, ge=1, nonempty=True, increasing=True)
    #                                         # 1-based layers followed by a head; None = evenly spaced
    pretrained: bool = True                   # start from pretrained weights (tiny: `testbed pretrain`)
    freeze_feature_encoder: bool = True       # CNN front end frozen, as in the paper; saves compute


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    """Client-side training per round."""

    local_steps: int = setting(10, ge=1)      # optimiser steps per client per round
    batch_size: int = setting(16, ge=1)       # clips per step
    # AdamW learning rates: the pretrained backbone moves slowly, the fresh exit heads fast. One rate
    # of 5e-4 for everything made the deeper exits worse than their frozen probes (measured here).
    learning_rate: float = setting(1e-4, gt=0)        # backbone (transformer layers, projection)
    head_learning_rate: float = setting(1e-3, gt=0)   # exit heads
    loss: str = setting("all_exits", choices=names.LOSSES, what="loss")  # sum over exits <= depth


@dataclass(frozen=True, kw_only=True)
class StrategySpec:
    """Server-side aggregation (DESIGN 4.3)."""

    name: str = setting("depth_aware", choices=names.STRATEGIES, what="strategy")
    weighting: str = setting("samples_depth", choices=names.WEIGHTINGS, what="weighting")


@dataclass(frozen=True, kw_only=True)
class ExitPolicySpec:
    """How each client picks its training depth every round (DESIGN 4.2)."""

    name: str = setting("static", choices=names.EXIT_POLICIES, what="exit policy")
    preferred_exits: Mapping[str, int | str] = setting(  # task -> 1-based exit index or "auto"
        FrozenDict(), keys=names.TASKS, ge=1, choices=(names.PREFERRED_EXIT_AUTO,))
    ema: float = setting(0.5, gt=0, le=1)     # weight of the newest timing in the moving average


@dataclass(frozen=True, kw_only=True)
class FleetEntry:
    """`count` identical clients of one profile, task and link."""

    profile: str                              # profile name (profiles/<name>.yaml) or YAML path
    count: int = setting(1, ge=1)
    task: str = setting("keyword", choices=names.TASKS, what="task")
    link: str | None = None                   # link preset name or path; None = the profile's link


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """What an experiment is (`scenarios/<name>.yaml`); saved resolved in its run directory."""

    name: str                                 # run directories are runs/<name>-<time>/
    seed: int = setting(0, ge=0)              # the one seed; per-client seeds derive from it
    rounds: int = setting(10, ge=1)
    deadline_s: float = setting(60.0, gt=0)   # round deadline, emulated seconds
    eval_every: int = setting(1, ge=1)        # evaluate every N rounds
    data: DataSpec = setting(DataSpec)
    backbone: BackboneSpec = setting(BackboneSpec)
    training: TrainingSpec = setting(TrainingSpec)
    strategy: StrategySpec = setting(StrategySpec)
    exit_policy: ExitPolicySpec = setting(ExitPolicySpec)
    fleet: tuple[FleetEntry, ...] = setting(nonempty=True)  # mandatory: who takes part

    def problems(self) -> Problems:
        if not _RUN_NAME.fullmatch(self.name):
            yield "name", (f"{self.name!r} is not allowed (allowed: letters, digits, '_', '.', '-', "
                          "starting with a letter or digit: it names run directories)")
