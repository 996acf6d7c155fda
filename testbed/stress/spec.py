"""Stress files (`scenarios/stress/<name>.yaml`): a base scenario, a timed script of injections, checks.

```yaml
name: client_killed
description: one client SIGKILLed mid-round
scenario:                    # the base: a scenario file (relative to this file, then cwd) ...
  path: ../smoke.yaml
  set: [rounds=4]            # ... with --set style overrides; or `inline: {a scenario}` instead of path
script:                      # each step fires once, when its trigger holds
  - name: kill               # optional; a later step may trigger `after: kill`
    when: {event: {kind: client_progress, client: c01, round: 2, step: 2}}
    do: kill
    clients: [c01]           # or fraction: 0.5 (the first half of the fleet, in fleet order)
checks:                      # name: settings ({} or true = the defaults)
  completed: {}
  round_time: {max_deadlines: 1.05}
quick:                       # `testbed stress --quick`: extra overrides and check settings
  set: [backbone.name=debug, rounds=3, emulation.dilation=1]   # the dilation: under --clock real only
  checks: {accuracy: {min: 0.2}}
```
The file maps 1:1 onto the frozen dataclasses below (the script's steps: testbed/stress/steps.py, one class per
action) and is validated by testbed.config's converter: an unknown key, action, check or client is one line
naming the file, the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from testbed.config import names
from testbed.config.convert import fields_of, from_data, join_path, setting
from testbed.config.loader import load_scenario, resolve_fleet
from testbed.config.overrides import SOURCE as OVERRIDE_SOURCE
from testbed.config.overrides import override_path
from testbed.config.schema import MAX_FLEET, Scenario
from testbed.config.yamlio import read_mapping
from testbed.errors import ConfigError
from testbed.event_kinds import KINDS
from testbed.stress.steps import WEEK_S, ImpersonateStep, Step, TargetedStep

Problems = Iterator[tuple[str, str]]

# Events a run writes (testbed/event_kinds.py declares them); triggers match on them.
EVENT_KINDS = tuple(KINDS)
# Events by which the aggregator refuses a message; each names the client the message `claimed` to be.
REFUSAL_KINDS = ("message_dropped", "join_refused")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # names a results directory


# ---------------------------------------------------------------- checks (functions: testbed/stress/checks.py)
@dataclass(frozen=True, kw_only=True)
class Completed:
    """Every planned round aggregated and the run finished."""


@dataclass(frozen=True, kw_only=True)
class RoundTime:
    """No round waits for its clients longer than `max_deadlines` deadlines (emulated seconds); the aggregator's
    handling of an update in hand when the deadline passed is not waiting (see checks.waited_s)."""

    max_deadlines: float = setting(1.05, gt=0, le=1000)


@dataclass(frozen=True, kw_only=True)
class RoundTimeRecovered:
    """The last rounds' mean device time (download + compute at the device's CPU-time pace + upload) is within
    `tolerance` of the rounds' before the first action, and the clients acted on updated in the last rounds."""

    tolerance: float = setting(0.2, gt=0, le=100)    # share: 0.2 = within 20 %
    last: int = setting(2, ge=1, le=1_000_000)       # how many final rounds


@dataclass(frozen=True, kw_only=True)
class NoRoundLost:
    """A resumed run continues after its last completed round and keeps every completed round as it was."""


@dataclass(frozen=True, kw_only=True)
class StatePreserved:
    """Each round's global-state digest equals that of an uninterrupted reference run (same seed)."""


@dataclass(frozen=True, kw_only=True)
class NoOrphans:
    """No process of the run (processes.json, every launch) is left once it is over."""


@dataclass(frozen=True, kw_only=True)
class Accuracy:
    """The final evaluation is finite and each task's best exit reaches `min` (only `task`'s when given)."""

    min: float = setting(0.0, ge=0, le=1)
    task: str | None = setting(None, choices=names.TASKS, what="task")


@dataclass(frozen=True, kw_only=True)
class Dropped:
    """Every malformed message a flood sent was dropped, with the reason its kind calls for."""


@dataclass(frozen=True, kw_only=True)
class DepthChange:
    """After the client was slowed, it trains a shallower exit within `within` rounds."""

    client: str
    within: int = setting(2, ge=1, le=1_000_000)  # rounds


@dataclass(frozen=True, kw_only=True)
class Gone:
    """Killed clients are marked lost and never asked again afterwards."""


@dataclass(frozen=True, kw_only=True)
class Rejoined:
    """The client was lost (frozen), came back, and contributed an update after it came back."""

    client: str


@dataclass(frozen=True, kw_only=True)
class LateJoin:
    """The client became ready after round 1 started and trained from the next round on."""

    client: str


@dataclass(frozen=True, kw_only=True)
class Churn:
    """The share of selected clients that sat a round out (offline) lies in [min, max]."""

    min: float = setting(0.0, ge=0, le=1)
    max: float = setting(1.0, ge=0, le=1)


@dataclass(frozen=True, kw_only=True)
class Updates:
    """Every round aggregated at least `min` updates."""

    min: int = setting(1, ge=0, le=MAX_FLEET)


@dataclass(frozen=True, kw_only=True)
class Straggles:
    """After its link was changed the client was still asked, straggled, and was never lost."""

    client: str


@dataclass(frozen=True, kw_only=True)
class UpdatesRejected:
    """Every update the client sent after it was corrupted (or began to lie) was rejected by the
    aggregator, each logged with its reason (by the `check` named, when given) and counted in the run's
    summary; no update of another client was."""

    client: str
    check: str | None = None                 # e.g. samples, norm: the check that must refuse each


@dataclass(frozen=True, kw_only=True)
class Impersonation:
    """Clients posing as another (`do: impersonate`) had every such message refused with an event, none
    of their updates counted afterwards, and the victim was never locked out: it updated in every round it
    was asked in."""


@dataclass(frozen=True, kw_only=True)
class Checks:
    """The checks of a stress test; each present one runs (its settings, or {} / true for the defaults)."""

    completed: Completed | None = None
    round_time: RoundTime | None = None
    round_time_recovered: RoundTimeRecovered | None = None
    no_round_lost: NoRoundLost | None = None
    state_preserved: StatePreserved | None = None
    no_orphans: NoOrphans | None = None
    accuracy: Accuracy | None = None
    dropped: Dropped | None = None
    depth_change: DepthChange | None = None
    gone: Gone | None = None
    rejoined: Rejoined | None = None
    late_join: LateJoin | None = None
    churn: Churn | None = None
    updates: Updates | None = None
    straggles: Straggles | None = None
    rejected: UpdatesRejected | None = None
    impersonation: Impersonation | None = None

    def enabled(self) -> dict[str, object]:
        """Check name -> its settings, for the checks that run, in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


# ---------------------------------------------------------------- the file
@dataclass(frozen=True, kw_only=True)
class BaseScenario:
    path: str | None = None           # scenario YAML (or `inline:` a scenario mapping instead)
    set: tuple[str, ...] = ()         # --set style overrides: [rounds=4, ...] or {rounds: 4, ...}


@dataclass(frozen=True, kw_only=True)
class Quick:
    """What `--quick` changes: extra overrides (debug backbone, fewer rounds, dilation 1 under the real clock),
    check settings."""

    set: tuple[str, ...] = ()
    checks: Checks | None = None      # these checks' settings replace the full run's
    timeout_s: float | None = setting(None, gt=0, le=WEEK_S)


@dataclass(frozen=True, kw_only=True)
class StressFile:
    name: str                         # results go to <results>/<name>/
    description: str = ""
    scenario: BaseScenario
    script: tuple[Step, ...] = ()
    checks: Checks
    quick: Quick = setting(Quick)
    timeout_s: float = setting(3600.0, gt=0, le=WEEK_S)  # wall seconds the stressed run may take, resumes included

    def problems(self) -> Problems:
        if not _NAME.fullmatch(self.name):
            yield "name", f"{self.name!r} is not allowed (allowed: letters, digits, '_', '.', '-')"
        seen: set[str] = set()
        for index, step in enumerate(self.script):
            event = step.when.event  # checked here, next to EVENT_KINDS, rather than in steps.Trigger
            if event is not None and event.get("kind") not in EVENT_KINDS:
                yield f"script[{index}].when.event.kind", (f"unknown event kind {event.get('kind')!r} "
                                                           f"(allowed: {', '.join(EVENT_KINDS)})")
            if step.when.after is not None and step.when.after not in seen:
                yield f"script[{index}].when.after", (f"no earlier step named {step.when.after!r} "
                                                      f"(allowed: {', '.join(sorted(seen)) or 'none'})")
            if step.name is not None:
                if step.name in seen:
                    yield f"script[{index}].name", f"{step.name!r} is used twice (allowed: unique names)"
                seen.add(step.name)
        if not self.checks.enabled():
            yield "checks", f"no check given (allowed: {', '.join(fields_of(Checks))})"


@dataclass(frozen=True)
class StressTest:
    """A stress file resolved for one variant (full or quick): what the runner needs."""

    name: str
    file: Path
    description: str
    scenario: Scenario
    steps: tuple[Step, ...]
    checks: Checks
    timeout_s: float
    quick: bool
    clients: tuple[str, ...]          # the fleet's client ids, fleet order

    def targets(self, step: Step) -> list[str]:
        """The client ids a step acts on ([] for an action on the aggregator)."""
        if not isinstance(step, TargetedStep):
            return []
        if step.clients is not None:
            return list(step.clients)
        if step.fraction is not None:
            return list(self.clients[:math.ceil(step.fraction * len(self.clients) - 1e-9)])
        return []


def load_stress(path: Path | str, quick: bool = False, clock: str | None = "events") -> StressTest:
    """Read and validate a stress file for the full or the quick variant; any fault is a ConfigError.

    `clock` (real or events; by default events, as `testbed stress`) runs the test under that emulated clock
    whatever its scenario says (None: the scenario's own); under `events` the dilation the scenario or its quick
    variant sets is dropped, since that clock has none, and under `real` it applies."""
    path, source = Path(path), str(path)
    raw = read_mapping(path, source)
    base = raw.get("scenario")
    inline = base.get("inline") if isinstance(base, Mapping) else None
    if isinstance(base, Mapping):
        raw = {**raw, "scenario": {key: value for key, value in base.items() if key != "inline"}}
    raw = _overrides_as_text(_defaults_for_true(raw))
    spec = from_data(StressFile, raw, source=source)
    if (spec.scenario.path is None) == (inline is None):
        raise ConfigError(source, "scenario", "give either path: SCENARIO.yaml or inline: {a scenario} (one of them)")
    scenario = _base_scenario(path, spec, inline, quick, clock)
    checks = spec.checks
    if quick and spec.quick.checks is not None:
        checks = dataclasses.replace(checks, **spec.quick.checks.enabled())
    clients = tuple(client.client_id for client in resolve_fleet(scenario))
    test = StressTest(name=spec.name, file=path, description=spec.description, scenario=scenario,
                      steps=spec.script, checks=checks, timeout_s=(spec.quick.timeout_s if quick else None)
                      or spec.timeout_s, quick=quick, clients=clients)
    _check_client_ids(test, source)
    return test


def _defaults_for_true(raw: dict) -> dict:
    """`completed: true` means `completed: {}`; `false` leaves the check out (in checks and quick.checks)."""
    def fix(checks):
        if not isinstance(checks, Mapping):
            return checks
        return {key: {} if value is True else None if value is False else value for key, value in checks.items()}

    raw = {**raw, "checks": fix(raw.get("checks"))}
    if isinstance(raw.get("quick"), Mapping) and "checks" in raw["quick"]:
        raw["quick"] = {**raw["quick"], "checks": fix(raw["quick"]["checks"])}
    return raw


def _overrides_as_text(raw: dict) -> dict:
    """`set` may be a mapping (`rounds: 4`, `backbone: {name: debug}`) as well as a list of KEY=VALUE
    strings; a mapping becomes the strings (values as JSON, which is YAML)."""
    for section in ("scenario", "quick"):
        if isinstance(raw.get(section), Mapping) and isinstance(raw[section].get("set"), Mapping):
            overrides = [f"{key}={json.dumps(value)}" for key, value in raw[section]["set"].items()]
            raw = {**raw, section: {**raw[section], "set": overrides}}
    return raw


def clock_overrides(clock: str | None) -> list[str]:
    """The overrides that put a scenario under `clock` (None: none). The event clock has no dilation (it makes
    no process wait), so a dilation the scenario or its quick variant sets is dropped rather than refused."""
    if clock is None:
        return []
    if clock not in names.CLOCKS:
        raise ConfigError("--clock", "", f"unknown clock {clock!r} (allowed: {', '.join(names.CLOCKS)})")
    return [f"emulation.clock={clock}"] + (["emulation.dilation=null"] if clock == "events" else [])


def _base_scenario(path: Path, spec: StressFile, inline, quick: bool, clock: str | None) -> Scenario:
    """The base scenario with its overrides (the quick ones), each layer put under the clock's; errors name the
    stress file's field (or --clock)."""
    source = str(path)
    layers = [("scenario.set", list(spec.scenario.set))] + ([("quick.set", list(spec.quick.set))] if quick else [])
    # every layer is checked under the clock the test runs under: a dilation the base or its quick variant sets
    # is only dropped by the event clock's overrides, so a layer loaded without them would be refused. Since
    # those overrides replace the dilation, under the event clock each layer is first read under the real
    # clock too, with the settings only the event clock has reset: a dilation out of range is refused, not
    # silently dropped, and an event-only setting (compute: modeled, max_computing) is not.
    clocked = clock_overrides(clock)
    dilation_check = [*clock_overrides("real"), "emulation.compute=measured", "emulation.max_computing=null"]
    readings = ([dilation_check] if clock == "events" else []) + [clocked]
    if inline is not None and not isinstance(inline, Mapping):
        raise ConfigError(source, "scenario.inline", "expected a mapping (a scenario)")
    base: Mapping | Path  # the scenario inline, or its file
    if inline is not None:
        base = inline
    else:
        assert spec.scenario.path is not None  # load_stress: exactly one of scenario.path and scenario.inline
        base = _find(spec.scenario.path, path.parent, source)
    inline_source = f"{source}: scenario.inline"  # what the loader names; rewritten below as a field of this file
    overrides: list[str] = []
    for field, extra in layers:  # one layer at a time, so that an error names the layer it is in
        overrides += extra
        try:
            for reading in readings:
                if isinstance(base, Mapping):  # inline: relative paths are tried beside the stress file, as in a file
                    scenario = load_scenario(base, overrides + reading, source=inline_source, base_dir=path.parent)
                else:
                    scenario = load_scenario(base, overrides + reading)
        except ConfigError as error:
            if error.source == OVERRIDE_SOURCE:
                where = "--clock" if error.path in {override_path(text) for text in reading} else field
                raise ConfigError(source, where, f"{error.path}: {error.problem}") from None
            if error.source == inline_source:
                raise ConfigError(source, join_path("scenario.inline", error.path), error.problem) from None
            raise
    return scenario


def _find(ref: str, base_dir: Path, source: str) -> Path:
    """The base scenario file: relative to the stress file's directory first, then the working directory."""
    candidates = [Path(ref)] if Path(ref).is_absolute() else [base_dir / ref, Path.cwd() / ref]
    found = next((file for file in candidates if file.is_file()), None)
    if found is None:
        raise ConfigError(source, "scenario.path", f"scenario file {ref!r} not found "
                                                   f"(tried: {', '.join(str(c) for c in candidates)})")
    return found


def _check_client_ids(test: StressTest, source: str) -> None:
    """Every client a step, trigger or check names is in the (variant's) fleet."""
    allowed = f"allowed: {', '.join(test.clients)}" + (" in the quick variant" if test.quick else "")
    named: list[tuple[str, object]] = []  # (where, client id)
    for index, step in enumerate(test.steps):
        if isinstance(step, TargetedStep):
            named += [(f"script[{index}].clients[{i}]", cid) for i, cid in enumerate(step.clients or ())]
        if isinstance(step, ImpersonateStep):
            named.append((f"script[{index}].victim", step.victim))
        if step.when.event is not None and "client" in step.when.event:
            named.append((f"script[{index}].when.event.client", step.when.event["client"]))
    for name, settings in test.checks.enabled().items():
        if hasattr(settings, "client"):
            named.append((f"checks.{name}.client", settings.client))
    for where, cid in named:
        if cid not in test.clients:
            raise ConfigError(source, where, f"unknown client {cid!r} ({allowed})")
