"""Scenario, device-profile and link schema: frozen, keyword-only dataclasses mapping the YAML 1:1.

Each field's rules (bounds, allowed names) live next to it in `setting(...)`; the generic
converter in `convert.py` enforces them, so nothing here repeats validation code. Every number has
both bounds: a physical or practical limit (the comment says which, with its unit), so that a value
that validates is one a run can carry out; errors show the range (`allowed: 1 <= x <= 86400`).
"""

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from testbed.config import names
from testbed.config.convert import FrozenDict, setting

Problems = Iterator[tuple[str, str]]  # cross-field checks yield (field name, problem)

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # becomes part of runs/<name>-<time>/
# a Ray custom resource a fleet entry asks of its node; not one of Ray's built-in resources
_RESOURCE_NAME = re.compile(r"(?!(CPU|GPU|memory|object_store_memory)$)[A-Za-z][A-Za-z0-9_.:/-]{0,63}")

# Bounds shared by several fields.
MAX_FLEET = 1024      # clients per run: each is an OS process of 80-220 MB (docs/benchmarks.md), so 1024
#                       already need a 128-256 GB host (launch/capacity.py checks this host's memory)
MAX_LAYERS = 128      # transformer layers: the deepest speech SSL checkpoints have 48 (XLS-R 1B/2B)
BUILTIN_TAKES = 3     # takes of each word by each speaker in the built-in corpus, by default (data/synth.py)
DAY_S = 86_400        # seconds
YEAR_S = 31_536_000   # seconds (365 days): the longest emulated time a schedule may span


@dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """A network link preset (`profiles/links/<name>.yaml`), shaped in the transport or by tc netem."""

    name: str                                 # equal to the file name
    # Mbit/s, from 1 kbit/s (a GPRS trickle: a 1 MB model takes over 2 hours) to 100 Gbit/s (datacentre)
    downlink_mbps: float = setting(ge=0.001, le=100_000)  # aggregator -> client
    uplink_mbps: float = setting(ge=0.001, le=100_000)    # client -> aggregator (often far below downlink)
    # ms, round trip as speed tests report it (half each way); 60 s is 100x a geostationary satellite's
    latency_ms: float = setting(ge=0, le=60_000)
    jitter_ms: float = setting(0.0, ge=0, le=60_000)  # +- random variation of the latency, ms
    # packet loss probability, emulated as retransmit delay; beyond 50 % TCP barely moves (real links: < 5 %)
    loss: float = setting(0.0, ge=0, le=0.5)
    source: str = ""                          # citation for the figures


@dataclass(frozen=True, kw_only=True)
class Availability:
    """When a client is reachable: a per-round draw and/or online periods (alternating or listed)."""

    # Chance to be online when a round starts; 0 = a device never online (its fleet trains without it;
    # a run in which no client ever trains ends as failed, with each client's reason)
    online_probability: float = setting(1.0, ge=0, le=1)
    # Seconds online, then offline_s offline, repeating (starting online); None for both = no periods.
    # At least 1 s (a model download needs that much), at most a year.
    online_s: float | None = setting(None, ge=1, le=YEAR_S)
    offline_s: float | None = setting(None, ge=1, le=YEAR_S)
    # Listed online periods [start_s, end_s], seconds since the client started (up to a year), in time
    # order; offline in between and after the last one (e.g. a FedScale behaviour trace).
    intervals: tuple[tuple[float, float], ...] | None = setting(None, ge=0, le=YEAR_S, nonempty=True)
    period_s: float | None = setting(None, ge=1, le=YEAR_S)  # the intervals repeat every period_s; None = once

    def problems(self) -> Problems:
        if (self.online_s is None) != (self.offline_s is None):
            missing = "offline_s" if self.offline_s is None else "online_s"
            yield missing, "online_s and offline_s go together (alternating periods, in seconds)"
        if self.intervals is not None and self.online_s is not None:
            yield "intervals", "give either intervals or online_s/offline_s, not both"
        yield from self._interval_problems()

    def _interval_problems(self) -> Problems:
        if self.intervals is None:
            if self.period_s is not None:
                yield "period_s", "only goes with intervals (it is how often they repeat)"
            return
        previous_end = 0.0
        for index, interval in enumerate(self.intervals):
            at = f"intervals[{index}]"
            if len(interval) != 2:
                yield at, f"expected [start_s, end_s], got {len(interval)} numbers"
                return
            start, end = interval
            if end <= start:
                yield at, f"end_s {end:g} is not after start_s {start:g} (allowed: start_s < end_s)"
            if start < previous_end:
                yield at, (f"starts at {start:g} s, before the previous period ends ({previous_end:g} s) "
                           "(allowed: periods in time order, not overlapping)")
            previous_end = end
        if self.period_s is not None and self.period_s < previous_end:
            yield "period_s", f"{self.period_s:g} is shorter than the intervals (last end_s {previous_end:g})"


@dataclass(frozen=True, kw_only=True)
class Failure:
    """Injected faults, drawn per client per round from the scenario seed."""

    crash_rate: float = setting(0.0, ge=0, le=1)   # chance per round that the process is killed
    freeze_rate: float = setting(0.0, ge=0, le=1)  # chance per round that it hangs (no heartbeats)
    freeze_s: float = setting(30.0, gt=0, le=DAY_S)  # how long a freeze lasts, seconds, up to a day


@dataclass(frozen=True, kw_only=True)
class Profile:
    """What a device is (`profiles/<name>.yaml`): compute, memory, default link, availability."""

    name: str                                 # equal to the file name
    description: str = ""
    source: str = ""                          # citation for the figures
    cores: int = setting(1, ge=1, le=256)     # CPU affinity size: host cores the client is pinned to
    #                                           (256: a two-socket server; more than any edge device)
    threads: int = setting(1, ge=1, le=256)   # torch intra-op threads used for training (<= cores)
    # Per-core compute speed relative to one host core: from 1/100 (a step of 0.5 s here takes 50 s
    # per emulated device; slower than any phone-class core) to 16 (beyond any CPU core today)
    speed: float = setting(1.0, ge=0.01, le=16)
    memory_mb: int = setting(4096, ge=64, le=1_048_576)  # MiB the client may use: device RAM minus the
    #                                                      OS's share; 64 MiB to 1 TiB
    max_exit: int | None = setting(None, ge=1, le=MAX_LAYERS)  # static policy's cap: 1-based exit index,
    #                                           portable across backbones: beyond their exits it means the
    #                                           deepest (model/geometry.py exit_depth); None = deepest exit
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
    # Label-skew concentration; smaller = more skewed: at 0.01 each class goes almost wholly to one
    # client, from ~100 on the split is indistinguishable from IID
    dirichlet_alpha: float = setting(0.5, ge=0.01, le=1000)
    # Speakers held out for evaluation: at least 1 %, at most 90 % (the rest must still train)
    test_speaker_fraction: float = setting(0.2, ge=0.01, le=0.9)
    # Seconds per clip (Speech Commands: 1 s); the CNN front end needs 25 ms, a spoken word ~0.3 s
    clip_seconds: float = setting(1.0, ge=0.1, le=10)
    words: tuple[str, ...] | None = setting(None, nonempty=True)  # keyword classes; None = all
    # Takes of each word by each speaker in the built-in corpus (default: BUILTIN_TAKES). The speaker
    # task trains on ~0.8 x 12 words x takes clips per speaker: with 3 its held-out accuracy stops where the
    # training clips are learnt by heart (docs/benchmarks.md, "Speaker information"). Each take adds ~1152
    # clips (37 MB in the cache, ~1 s of synthesis here); 30 is ten times the default.
    takes: int = setting(BUILTIN_TAKES, ge=1, le=30)

    def problems(self) -> Problems:
        if self.source != "builtin" and self.path is None:
            yield "path", f"required when source is {self.source!r} (a corpus directory or manifest file)"
        if self.source != "builtin" and self.takes != BUILTIN_TAKES:
            yield "takes", (f"only shapes the built-in corpus (source: builtin); a {self.source!r} corpus has "
                            "the takes it was recorded with: remove it")


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """The SSL backbone and where its exits sit."""

    name: str = "tiny"                        # "tiny" | "debug" | a Hugging Face id | a local directory
    family: str = setting("wav2vec2", choices=names.FAMILIES, what="backbone family")
    exits: tuple[int, ...] | None = setting(None, ge=1, le=MAX_LAYERS, nonempty=True, increasing=True)
    #                                         # 1-based layers followed by a head; None = evenly spaced;
    #                                         # checked against the backbone's depth (config/depth.py)
    pretrained: bool = True                   # start from pretrained weights (tiny: `testbed pretrain`)
    freeze_feature_encoder: bool = True       # CNN front end frozen, as in the paper; saves compute


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    """Client-side training per round."""

    local_steps: int = setting(10, ge=1, le=100_000)  # optimiser steps per client per round
    batch_size: int = setting(16, ge=1, le=4096)      # clips per step (at most a client's shard is used)
    # AdamW learning rates: the pretrained backbone moves slowly, the fresh exit heads fast. One rate
    # of 5e-4 for everything made the deeper exits worse than their frozen probes (measured here).
    # (0, 10]: an AdamW step moves each weight by about the rate, so above 10 every step destroys the model
    learning_rate: float = setting(1e-4, gt=0, le=10)        # backbone (transformer layers, projection)
    head_learning_rate: float = setting(1e-2, gt=0, le=10)   # exit heads (1e-3 learns slower: docs/benchmarks.md)
    loss: str = setting("all_exits", choices=names.LOSSES, what="loss")  # sum over exits <= depth


@dataclass(frozen=True, kw_only=True)
class StrategySpec:
    """Server-side aggregation (testbed/strategies/)."""

    name: str = setting("depth_aware", choices=names.STRATEGIES, what="strategy")
    weighting: str = setting("samples_depth", choices=names.WEIGHTINGS, what="weighting")
    # Over-selection (Bonawitz et al. 2019): ask ceil(k x over_selection) clients, keep the first k
    # updates. None = every live client every round.
    clients_per_round: int | None = setting(None, ge=1, le=MAX_FLEET)
    over_selection: float = setting(1.3, ge=1, le=10)  # asking more than 10x the clients kept only wastes them
    # The server's step towards the round's average (strategies/server_step.py): θ += η v, v = β v + (average − θ).
    # 1 and 0 are FedAvg. η above 10 overshoots the clients' own models tenfold; β = 1 would never forget a step.
    server_learning_rate: float = setting(1.0, gt=0, le=10)
    server_momentum: float = setting(0.0, ge=0, le=0.99)


@dataclass(frozen=True, kw_only=True)
class ExitPolicySpec:
    """How each client picks its training depth every round (testbed/client/policies.py)."""

    name: str = setting("static", choices=names.EXIT_POLICIES, what="exit policy")
    preferred_exits: Mapping[str, int | str] = setting(  # task -> 1-based exit index or "auto"
        FrozenDict(), keys=names.TASKS, ge=1, le=MAX_LAYERS, choices=(names.PREFERRED_EXIT_AUTO,))
    #   checked against the backbone's number of exits (config/depth.py)
    # Weight of the newest timing in the moving average; below 0.01 the policy would ignore a slowdown
    # for hundreds of rounds
    ema: float = setting(0.5, ge=0.01, le=1)


@dataclass(frozen=True, kw_only=True)
class EmulationSpec:
    """How profiles are imposed on this host (testbed/emulation/) and how emulated time maps onto wall time."""

    backend: str = setting("user", choices=names.BACKENDS, what="emulation backend")
    # How emulated time passes (testbed/emulation/clock.py): "events" (the default) jumps from event to
    # event, so no process sleeps and dilation does not apply (a round costs the host only its real work,
    # whatever the fleet's CPU demand); "real" waits, dilation host seconds per emulated second: kept to
    # validate the event clock against, and for what needs wall time (the kernel backend's CPU quota).
    clock: str = setting("events", choices=names.CLOCKS, what="emulated clock")
    # What a local step costs in emulated time (event clock only): "measured", its own host CPU seconds /
    # throughput; "modeled", the run's cost table (costs.json: one-thread CPU seconds of a training step per
    # depth, measured once per backbone and batch on this host and cached), which makes a run's timeline
    # and digests a function of its seed (client/costs.py).
    compute: str = setting("measured", choices=names.COMPUTE_MODES, what="compute mode")
    # Event clock: clients of this host that compute (probe or train) at once; the others wait, which costs
    # them no emulated time (emulation/slots.py). None = the host's cores.
    max_computing: int | None = setting(None, ge=1, le=4096)
    # Real clock only: wall seconds per emulated second. None = automatic: the fleet's CPU demand (sum of
    # speed x threads) over the host cores x headroom, at least 1. A fixed value below that makes clients
    # CPU-starved; the run then reports how far they fell behind their targets.
    # A round of deadline D emulated seconds may take D x dilation wall seconds: at the bound, 1000,
    # a 60 s deadline is 17 wall hours; the automatic factor is held to the same bound (launch/capacity.py).
    dilation: float | None = setting(None, ge=1, le=1000)
    # Share of the host's cores the automatic factor plans to use. Measured on a 2-core host:
    # 8 duty-cycled clients kept their speed ratios within 2.6 % at 75 % but were 13-14 % off at 94 %.
    # Below 10 % the automatic factor grows tenfold and more for nothing.
    headroom: float = setting(0.75, ge=0.1, le=1)
    host_cores: int | None = setting(None, ge=1, le=4096)  # None = the cores this process may run on

    def problems(self) -> Problems:
        if self.compute == "modeled" and self.clock != "events":
            yield "compute", ("'modeled' needs clock: events (the real clock paces what the work really costs); "
                              "set clock: events or compute: measured")
        if self.clock != "events" and self.max_computing is not None:
            yield "max_computing", ("only applies to clock: events (under the real clock every client computes "
                                    "when its device would); remove it or set clock: events")
        if self.clock == "events" and self.dilation is not None:
            yield "dilation", ("only applies to clock: real (the event clock makes no process wait, so it has "
                               "no host seconds per emulated second); remove it or set clock: real")


@dataclass(frozen=True, kw_only=True)
class FedScaleTrace:
    """FedScale device traces (pickle or JSON) a fleet entry draws its clients from (testbed/config/fedscale.py)."""

    capacity: str                             # client_device_capacity: id -> computation, communication
    behaviour: str | None = None              # client_behave_trace: id -> active, inactive, finish_time;
    #                                           None = the profile's availability
    # Trace `computation` (ms per sample) of a device as fast as one host core (speed 1.0);
    # None = the trace's median device gets the profile's speed.
    # ms per sample, 1 us (an accelerator) to 1000 s (nothing trains that slowly)
    reference_ms_per_sample: float | None = setting(None, ge=0.001, le=1_000_000)


@dataclass(frozen=True, kw_only=True)
class FleetEntry:
    """`count` identical clients of one profile, task and link, or `count` devices drawn from a trace."""

    profile: str                              # profile name (profiles/<name>.yaml) or YAML path
    count: int = setting(1, ge=1, le=MAX_FLEET)  # the whole fleet is bounded too (Scenario.problems)
    task: str = setting("keyword", choices=names.TASKS, what="task")
    link: str | None = None                   # link preset name or path; None = the profile's link
    # Draw `count` devices from FedScale traces: speed, bandwidth and availability from the trace,
    # everything else from `profile`, latency, jitter and loss from `link`.
    fedscale: FedScaleTrace | None = None
    # `testbed run --cluster` only: the Ray custom resource a node must offer to host these clients (a node
    # started with `ray start --resources '{"rpi-nodes": 1}'`); None = any node. A local run ignores it.
    node: str | None = None

    def problems(self) -> Problems:
        if self.node is not None and not _RESOURCE_NAME.fullmatch(self.node):
            yield "node", (f"{self.node!r} is not allowed (allowed: a Ray resource name: letters, digits, '_', '.', "
                           "'-', ':', '/', starting with a letter, at most 64 characters; CPU, GPU and memory are "
                           "Ray's own)")


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """What an experiment is (`scenarios/<name>.yaml`); saved resolved in its run directory."""

    name: str                                 # run directories are runs/<name>-<time>/
    # The one seed; per-client seeds derive from it. Up to 2**32 - 1: what every consumer accepts
    # (NumPy's default_rng and legacy seeding, torch.manual_seed < 2**64, `compare --seeds` adding to it)
    seed: int = setting(0, ge=0, le=2**32 - 1)
    rounds: int = setting(10, ge=1, le=1_000_000)
    # Round deadline, emulated seconds: a round needs at least a download and a step (1 s); a day at most
    deadline_s: float = setting(60.0, ge=1, le=DAY_S)
    eval_every: int = setting(1, ge=1, le=1_000_000)  # evaluate every N rounds (and after the last)
    # The run also ends after the round in which its rounds' emulated seconds (evaluation excluded)
    # reach this: strategies compared on equal time rather than equal rounds. None = `rounds` alone.
    time_budget_s: float | None = setting(None, gt=0, le=YEAR_S)  # emulated seconds
    data: DataSpec = setting(DataSpec)
    backbone: BackboneSpec = setting(BackboneSpec)
    training: TrainingSpec = setting(TrainingSpec)
    strategy: StrategySpec = setting(StrategySpec)
    exit_policy: ExitPolicySpec = setting(ExitPolicySpec)
    emulation: EmulationSpec = setting(EmulationSpec)
    # Round 1 starts once this many clients are ready; later joiners take part from the round after
    # they are. None = wait for the whole fleet (up to the join timeout).
    min_clients: int | None = setting(None, ge=1, le=MAX_FLEET)
    fleet: tuple[FleetEntry, ...] = setting(nonempty=True)  # mandatory: who takes part

    def ending(self, rounds_done: int, spent_s: float, clock: str = "s") -> str | None:
        """Why the run ends after `rounds_done` rounds whose training took `spent_s` seconds of
        `clock` (emulated for a federated run, host seconds for the centralized one); None: it goes on."""
        if self.time_budget_s is not None and spent_s >= self.time_budget_s:
            return f"time budget spent ({spent_s:.1f} of {self.time_budget_s:g} {clock} in {rounds_done} rounds)"
        return "rounds done" if rounds_done >= self.rounds else None

    def problems(self) -> Problems:
        if not _RUN_NAME.fullmatch(self.name):
            yield "name", (f"{self.name!r} is not allowed (allowed: letters, digits, '_', '.', '-', "
                          "starting with a letter or digit: it names run directories)")
        size = sum(entry.count for entry in self.fleet)
        if size > MAX_FLEET:
            yield "fleet", f"{size} clients in all (allowed: at most {MAX_FLEET})"
        if self.min_clients is not None and self.min_clients > size:
            yield "min_clients", f"{self.min_clients} is more than the fleet's {size} clients (allowed: 1..{size})"
