"""The steps of a stress script: when a step fires (`Trigger`) and what it does, one small class per `do:` action.

Each action is a frozen dataclass holding its own settings; STEPS, the registry, maps each `do:` name to its
class, and the config converter picks the class from that name (`Step.variant`). The injector
(testbed/stress/injector.py) carries out each action with its method `_<do>`.

A new action: a subclass of Step (or TargetedStep, when it acts on clients) with its `do` name, its settings
and their bounds, listed in STEPS; then `Injector._<do>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from testbed.config.convert import describe, fields_of, from_data, join_path, key_text, quote, setting, show
from testbed.config.schema import YEAR_S, LinkSpec
from testbed.emulation.injection import LINK_FIELDS
from testbed.errors import ConfigError
from testbed.stress.flood import ATTACKS

Problems = Iterator[tuple[str, str]]
WEEK_S = 604_800  # seconds: the longest a stressed run (wall time) may be given


@dataclass(frozen=True, kw_only=True)
class Trigger:
    """When a step fires: exactly one of event, t, wall_s, after, start; then after the delays.

    An event's `kind` is checked against the kinds a run writes by the stress file (spec.StressFile)."""

    event: Mapping[str, str | int | float | bool] | None = None  # the first event with all these fields
    t: float | None = setting(None, ge=0, le=YEAR_S)        # emulated seconds since the run started
    wall_s: float | None = setting(None, ge=0, le=WEEK_S)   # wall seconds since the run was launched
    after: str | None = None                      # when the earlier step of this name was carried out
    start: bool = False                           # as soon as the step's clients have processes
    delay_s: float = setting(0.0, ge=0, le=YEAR_S)          # then wait this many emulated seconds
    delay_deadlines: float = setting(0.0, ge=0, le=1_000_000)  # ... plus this many round deadlines

    def problems(self) -> Problems:
        given = [key for key in ("event", "t", "wall_s", "after") if getattr(self, key) is not None]
        given += ["start"] if self.start else []
        if len(given) != 1:
            yield (given[1] if given else "event"), (
                f"give exactly one of event, t, wall_s, after, start (got {', '.join(given) or 'none'})")


@dataclass(frozen=True, kw_only=True)
class Step:
    """One injection: when it fires (`when`) and an optional name a later step's `after` may refer to.
    Subclasses are the actions; each sets `do`, the name a stress file gives it."""

    do: ClassVar[str]
    when: Trigger
    name: str | None = None

    @classmethod
    def variant(cls, value: Any, *, source: str, path: str) -> tuple[type[Step], dict]:
        """The action class a step's YAML mapping names in `do:`, and the mapping without `do`; a key that
        belongs to another action, or a missing setting, is an error naming the action."""
        if not isinstance(value, Mapping):
            raise ConfigError(source, path, f"expected a mapping (a step: do, when, ...), got {show(value)}")
        if "do" not in value:
            raise ConfigError(source, join_path(path, "do"), f"is required (allowed: {', '.join(STEPS)})")
        do = from_data(str, value["do"], source=source, path=join_path(path, "do"),
                       rules={"choices": tuple(STEPS), "what": "action"})
        action, rest = STEPS[do], {key: item for key, item in value.items() if key != "do"}
        fields = fields_of(action)  # type: ignore[arg-type]  # mypy#11470: a type[X] is not seen as Hashable
        for key in rest:
            if key not in fields:
                owners = [name for name, other in STEPS.items()
                          if key in fields_of(other)]  # type: ignore[arg-type]  # mypy#11470, as above
                problem = (f"only goes with do: {', '.join(owners)}" if owners
                           else f"unknown key {quote(key)} (allowed: do, {', '.join(fields)})")
                raise ConfigError(source, join_path(path, key_text(key)), problem)
        missing = [f.name for f in dataclasses.fields(action) if f.name not in rest
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            field_type, rules = fields[missing[0]]
            raise ConfigError(source, join_path(path, missing[0]), f"is required with do: {do} "
                              f"({(action.__doc__ or '').rstrip('.')}; expected {describe(field_type, rules)})")
        return action, rest


@dataclass(frozen=True, kw_only=True)
class TargetedStep(Step):
    """An action on clients: the ones listed in `clients`, or the first `fraction` of the fleet."""

    clients: tuple[str, ...] | None = setting(None, nonempty=True)  # client ids, e.g. [c01, c02]
    fraction: float | None = setting(None, gt=0, le=1)  # or the first ceil(fraction x fleet) clients, fleet order

    def problems(self) -> Problems:
        if (self.clients is None) == (self.fraction is None):
            yield "clients", f"do: {self.do} needs either clients: [ids] or fraction: share of the fleet (one of them)"


@dataclass(frozen=True, kw_only=True)
class KillStep(TargetedStep):
    """SIGKILL the clients' processes: no goodbye, as on a power loss."""

    do: ClassVar[str] = "kill"


@dataclass(frozen=True, kw_only=True)
class StopStep(TargetedStep):
    """SIGSTOP the clients: frozen, no heartbeats, no messages."""

    do: ClassVar[str] = "stop"


@dataclass(frozen=True, kw_only=True)
class ContStep(TargetedStep):
    """SIGCONT the clients: a frozen client carries on."""

    do: ClassVar[str] = "cont"


@dataclass(frozen=True, kw_only=True)
class SlowStep(TargetedStep):
    """The clients compute `slowdown` times slower than their profile."""

    do: ClassVar[str] = "slow"
    slowdown: float = setting(ge=1, le=1000)  # 1 = the profile's speed; 1000 turns a 0.1 s step into 100 s


@dataclass(frozen=True, kw_only=True)
class LinkStep(TargetedStep):
    """Override fields of the clients' links, e.g. {uplink_mbps: 0.1, downlink_mbps: 0.1}."""

    do: ClassVar[str] = "link"
    # each field as a link preset (profiles/links/*.yaml) has it: LinkSpec's type, unit and bounds
    link: Mapping[str, float] = setting(keys=LINK_FIELDS, like=LinkSpec)


@dataclass(frozen=True, kw_only=True)
class CorruptStep(TargetedStep):
    """The clients multiply the weights they upload by `scale`: a broken or hostile client."""

    do: ClassVar[str] = "corrupt"
    scale: float = setting(gt=0, le=1e6)  # factor on the uploaded weights


@dataclass(frozen=True, kw_only=True)
class LieStep(TargetedStep):
    """The clients misreport their updates: claim `samples` clips each, upload `step_scale` x their step."""

    do: ClassVar[str] = "lie"
    samples: int | None = setting(None, ge=1, le=2**63 - 1)  # clips claimed per update (int64 at most)
    step_scale: float | None = setting(None, ge=0, le=1e6)  # factor on the uploaded step (0: none at all)

    def problems(self) -> Problems:
        yield from super().problems()
        if self.samples is None and self.step_scale is None:
            yield "samples", "do: lie needs samples (clips claimed), step_scale (factor on the step) or both"


@dataclass(frozen=True, kw_only=True)
class ImpersonateStep(TargetedStep):
    """The clients upload as `victim` (another client of the fleet), with their own credentials."""

    do: ClassVar[str] = "impersonate"
    victim: str  # the client id claimed

    def problems(self) -> Problems:
        yield from super().problems()
        if self.victim in (self.clients or ()):
            yield "victim", f"{self.victim!r} is one of the impostors (allowed: another client of the fleet)"


@dataclass(frozen=True, kw_only=True)
class FloodStep(Step):
    """Malformed messages at the aggregator's router (`attacks`, each `repeat` times)."""

    do: ClassVar[str] = "flood"
    attacks: tuple[str, ...] | None = setting(None, nonempty=True, choices=tuple(ATTACKS), what="attack")  # None: all
    repeat: int = setting(1, ge=1, le=10_000)  # send the attacks this many times


@dataclass(frozen=True, kw_only=True)
class KillAggregatorStep(Step):
    """SIGKILL the aggregator, then continue the run with `testbed run --resume`."""

    do: ClassVar[str] = "kill_aggregator"


# The registry: `do:` name -> its step class, in the order errors list the actions.
STEPS: dict[str, type[Step]] = {cls.do: cls for cls in (
    KillStep, StopStep, ContStep, SlowStep, LinkStep, CorruptStep, LieStep, ImpersonateStep, FloodStep,
    KillAggregatorStep)}
