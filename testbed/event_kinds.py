"""Every kind of event in events.jsonl, with its fields and their units: the contract between the processes that
write events (the aggregator, the launcher, the centralized baseline) and those that read them (dashboard,
report, summary.json, console lines, stress checks, compare).

Each kind is a frozen dataclass; an emitter builds one (`events.emit(RoundClosed(...))`, testbed/events.py)
and EventLog adds the envelope every event carries: `seq` (0, 1, ...), `t` (the event clock: EMULATED
seconds since the run started) and `wall` (Unix time, HOST clock).

Two clocks, never mixed: EMULATED seconds are the devices' time (host wall seconds / the run's time
dilation: round lengths, deadlines, link and compute phases); HOST seconds are what this host spent
(evaluation, aggregation, CPU seconds of local training). A field's comment names its clock.

Fields come in three sorts, so that files written by older versions still read:
- `name: T = required()`: always written; an event without it is malformed.
- `name: T`: always written, but readers accept an event without it (files written
  before the field existed, events written by hand).
- `name: T | None = None`: written only when the emitter gives it; absent means what its comment says.
A reader ignores fields it does not know: a newer writer may add some.
"""

from __future__ import annotations

import functools
import sys
import types
import typing
from dataclasses import Field, dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # enum.StrEnum is new in 3.11 and we support 3.10 (requires-python): the same, as far as we use it
    class StrEnum(str, Enum):
        """Members are strs whose str() and format() are their value, as with enum.StrEnum."""

        def __str__(self) -> str:
            return str.__str__(self)

        def __format__(self, format_spec: str) -> str:
            return str.__format__(self, format_spec)


KINDS: dict[str, type[Event]] = {}  # kind -> its declaration, every kind there is
_REQUIRED = "required"  # field metadata key: an event without the field is malformed


def required():
    """A field no event of its kind may lack."""
    return field(metadata={_REQUIRED: True})


class Record:
    """Declared fields, written as a JSON object."""

    # every subclass is a dataclass (this declares it for the type checker; dataclass() sets it)
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def fields(self) -> dict[str, Any]:
        """Its fields as written: an optional field (default None) left as None is left out."""
        return {f.name: _written(getattr(self, f.name)) for f in fields(self)
                if not (f.default is None and getattr(self, f.name) is None)}


def _written(value):
    if isinstance(value, Record):
        return value.fields()
    if isinstance(value, list):
        return [_written(item) for item in value]
    return value


class Event(Record):
    """One kind of event. A subclass names its kind: `class RoundClosed(Event, kind="round_closed")`."""

    kind: ClassVar[str]

    def __init_subclass__(cls, kind: str | None = None, **options):
        super().__init_subclass__(**options)
        if kind is not None:  # None: a base shared by several kinds, not a kind itself
            cls.kind = kind
            KINDS[kind] = cls


class ClientStatus(StrEnum):
    """What became of a client asked to a round (the `status` of its row in round_closed; the dashboard's too)."""

    ASKED = "asked"  # sent ROUND, has not fetched the model yet
    FETCHED = "fetched"  # sent the model at the depth it asked for
    UPDATED = "updated"  # its update was accepted and aggregated
    DISCARDED = "discarded"  # its update came after the round had the updates it needed
    REJECTED = "rejected"  # its update was refused: a check of its claims, or the update screen
    STRAGGLER = "straggler"  # still training when the round closed
    LOST = "lost"  # silent for too long, or said goodbye, mid-round
    SKIPPED = "skipped"  # declined the round (offline by its availability trace)
    LEFT = "left"  # said goodbye mid-round (the dashboard tells it apart from lost; the aggregator's row says lost)


# statuses after which a round no longer waits for the client
FINISHED = frozenset({ClientStatus.UPDATED, ClientStatus.DISCARDED, ClientStatus.REJECTED, ClientStatus.SKIPPED,
                      ClientStatus.LOST, ClientStatus.LEFT})

# the envelope EventLog adds to every event; events written by hand may lack all but `kind`
ENVELOPE: dict[str, Any] = {"seq": int, "t": float, "wall": float}


# ---------------------------------------------------------------- the run
@dataclass(frozen=True, kw_only=True)
class RunStarted(Event, kind="run_started"):
    """A launch of the aggregator (or of the centralized baseline) began; a resumed run has one per launch."""

    scenario: str
    rounds: int  # rounds planned
    exits: list[int]  # layer numbers followed by an exit head
    clients: list[dict]  # the fleet's client specs (`client_id`, `profile`, `task`, `link`, ...); baseline: []
    dilation: dict  # {"factor": wall s per emulated s, "reason": str, ...}
    pid: int | None = None  # the aggregator's process id
    first_round: int | None = None  # the round this launch starts with (> 1: resumed)
    address: str | None = None  # the aggregator's router address
    max_message_bytes: int | None = None  # the largest message the router accepts
    backend: str | None = None  # how devices are emulated (emulation backend)
    clock: str | None = None  # how emulated time passes: real or events (None: a run from before the choice, real)
    auth: str | None = None  # what binds a connection to a client id: tokens, curve or none
    # the centralized baseline only (its clock counts host seconds, undilated)
    strategy: str | None = None  # "centralized"
    train_clips: dict[str, int] | None = None  # task -> clips pooled for training
    steps_per_round: dict[str, int] | None = None  # task -> optimiser steps per round
    batch_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class RunResumed(Event, kind="run_resumed"):
    """A launch continues a run from its last completed round's checkpoint."""

    from_round: int = required()  # the last completed round
    digest: str  # its global state's digest


@dataclass(frozen=True, kw_only=True)
class RunEnded(Event):
    """How a launch ended (the three kinds below: ENDINGS)."""

    reason: str | None  # e.g. "rounds done", "time budget spent (...)", an error
    dropped_messages: int | None = None  # messages refused during the launch; the baseline: absent
    recorded_by: str | None = None  # "launcher": the aggregator died before recording its end; absent: itself


@dataclass(frozen=True, kw_only=True)
class RunFinished(RunEnded, kind="run_finished"):
    pass


@dataclass(frozen=True, kw_only=True)
class RunInterrupted(RunEnded, kind="run_interrupted"):
    pass


@dataclass(frozen=True, kw_only=True)
class RunFailed(RunEnded, kind="run_failed"):
    pass


# the events that end a launch, and the status each leaves the run in
ENDINGS = {RunFinished.kind: "finished", RunInterrupted.kind: "interrupted", RunFailed.kind: "failed"}


@dataclass(frozen=True, kw_only=True)
class DilationChanged(Event, kind="dilation_changed"):
    """From now on one emulated second lasts `factor` wall seconds."""

    factor: float = required()  # wall seconds per emulated second
    previous: float  # the factor before
    reason: str


# ---------------------------------------------------------------- clients
@dataclass(frozen=True, kw_only=True)
class ClientJoined(Event, kind="client_joined"):
    client: str = required()
    pid: int  # the client's process id
    profile: str  # its device profile's name
    task: str
    link: str  # its link preset's name


@dataclass(frozen=True, kw_only=True)
class ClientReady(Event, kind="client_ready"):
    """The client loaded its data and model and measured itself: it can be asked to rounds."""

    client: str = required()
    device: dict  # what it measured about itself (at most a few KB of JSON), or {"invalid": why}


@dataclass(frozen=True, kw_only=True)
class ClientState(Event, kind="client_state"):
    """A heartbeat told a new state (joining, loading, ready, idle, offline, downloading, training, uploading)."""

    client: str = required()
    state: str = required()
    round: int  # the round the client is in (0: none)


@dataclass(frozen=True, kw_only=True)
class ClientProgress(Event, kind="client_progress"):
    """One local optimiser step done."""

    client: str = required()
    round: int = required()
    step: int  # steps done
    steps: int  # steps planned
    layer: int  # the exit layer it trains to


@dataclass(frozen=True, kw_only=True)
class ClientSkipped(Event, kind="client_skipped"):
    client: str = required()
    round: int = required()
    reason: str  # e.g. "offline"


@dataclass(frozen=True, kw_only=True)
class ClientLeft(Event, kind="client_left"):
    """The client said goodbye (BYE)."""

    client: str = required()
    reason: str


@dataclass(frozen=True, kw_only=True)
class ClientLost(Event, kind="client_lost"):
    """No heartbeat for too long: the client is taken for dead."""

    client: str = required()


@dataclass(frozen=True, kw_only=True)
class ClientRejoined(Event, kind="client_rejoined"):
    """A client taken for lost is heard from again."""

    client: str = required()


# ---------------------------------------------------------------- rounds
@dataclass(frozen=True, kw_only=True)
class RoundStarted(Event, kind="round_started"):
    round: int = required()
    selected: list[str]  # client ids asked
    deadline_s: float | None  # emulated s; None: the round waits for every selected client


@dataclass(frozen=True, kw_only=True)
class ModelSent(Event, kind="model_sent"):
    client: str = required()
    round: int = required()
    depth: int  # the exit layer the client fetched the model up to
    bytes: int  # size of the MODEL message


@dataclass(frozen=True, kw_only=True)
class UpdateReceived(Event, kind="update_received"):
    """An update passed every check and counts in the round."""

    client: str = required()
    round: int = required()
    depth: int
    bytes: int  # size of the UPDATE message
    samples: int  # clips trained on
    loss: float  # mean training loss
    download_s: float  # emulated s
    compute_s: float  # emulated s
    upload_s: float  # emulated s
    peak_mb: float | None  # the client's peak memory, MB
    cpu_s: float | None  # HOST CPU seconds of its local training
    overshoot: float | None  # achieved / target wall time of its training: > 1 = CPU-starved


@dataclass(frozen=True, kw_only=True)
class UpdateRejected(Event, kind="update_rejected"):
    """An update refused by a check of its claims or by the update screen; the client is done for the round."""

    client: str = required()
    round: int = required()
    depth: int
    check: str  # which check refused it: depth, timings, loss, samples, tensors, non_finite, norm, ...
    reason: str


@dataclass(frozen=True, kw_only=True)
class UpdateDiscarded(Event, kind="update_discarded"):
    """An update that came after the round had the updates it needed."""

    client: str = required()
    round: int = required()
    reason: str


@dataclass(frozen=True, kw_only=True)
class LateUpdate(Event, kind="late_update"):
    """An update for a round already closed (dropped too: a message_dropped event follows)."""

    client: str = required()
    round: int = required()


@dataclass(frozen=True, kw_only=True)
class RoundClientRow(Record):
    """A client's row in round_closed's `clients` (and in clients.csv)."""

    round: int
    client: str = required()
    profile: str
    task: str
    status: str  # a ClientStatus
    depth: int  # 0: it fetched nothing
    download_s: float | None  # emulated s
    compute_s: float | None  # emulated s
    upload_s: float | None  # emulated s
    idle_s: float | None  # emulated s from its update's arrival to the round's close
    bytes_down: int
    bytes_up: int
    samples: int
    loss: float | None
    peak_mb: float | None
    cpu_s: float | None  # HOST CPU seconds of its local training
    overshoot: float | None


@dataclass(frozen=True, kw_only=True)
class RoundClosed(Event, kind="round_closed"):
    round: int = required()
    started_t: float  # the event clock when the round started, emulated s
    wall_s: float = required()  # EMULATED seconds the round took, on the event clock (despite the name)
    deadline_s: float | None  # emulated s; None: no deadline
    selected: int
    updates: int
    stragglers: int
    lost: int
    discarded: int
    rejected: int
    bytes_down: int
    bytes_up: int
    dilation: float  # wall seconds per emulated second during the round
    clients: list[RoundClientRow]  # one per client asked


@dataclass(frozen=True, kw_only=True)
class RoundAggregated(Event, kind="round_aggregated"):
    round: int = required()
    digest: str  # the new global state's digest
    aggregate_s: float  # HOST seconds aggregating


@dataclass(frozen=True, kw_only=True)
class Evaluated(Event, kind="evaluated"):
    round: int = required()
    accuracy: dict[str, dict] = required()  # task -> exit layer (a JSON key: "4") -> accuracy in [0, 1]
    eval_s: float  # HOST seconds evaluating


# ---------------------------------------------------------------- refusals (testbed/aggregator/refusals.py)
@dataclass(frozen=True, kw_only=True)
class Refusal(Event):
    """A refusal; `count` present: a summary standing for that many alike refusals over `over_s` seconds."""

    reason: str = required()
    identity: str | None = None  # the connection it came from ("*": many senders together)
    client: str | None = None  # whom the connection proved to be (its JOIN), if anyone
    claimed: str | None = None  # whom the message claimed to be
    count: int | None = None  # absent: 1
    over_s: float | None = None  # HOST seconds the count covers


@dataclass(frozen=True, kw_only=True)
class MessageDropped(Refusal, kind="message_dropped"):
    pass


@dataclass(frozen=True, kw_only=True)
class JoinRefused(Refusal, kind="join_refused"):
    pass


@dataclass(frozen=True, kw_only=True)
class HandshakeFailed(Refusal, kind="handshake_failed"):
    pass


@dataclass(frozen=True, kw_only=True)
class ConnectionClosed(Refusal, kind="connection_closed"):
    channel: str | None = None  # the client's connection that closed: main or heartbeat


# ---------------------------------------------------------------- reading
def problems(event: dict) -> list[str]:
    """What makes `event` not fit its kind's declaration (empty: it fits). An unknown kind fits: a newer writer's."""
    if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
        return ["not an object with a kind"]
    found = [f"{name}: {event[name]!r:.60} is not {_name(tp)}" for name, tp in ENVELOPE.items()
             if name in event and not _fits(event[name], tp)]
    declaration = KINDS.get(event["kind"])
    return found + (_misfits(event, declaration) if declaration is not None else [])


def _misfits(data: dict, declaration: type) -> list[str]:
    found = []
    hints = _hints(declaration)
    for declared in fields(declaration):
        name = declared.name
        if name not in data:
            found += [f"{name} missing"] if declared.metadata.get(_REQUIRED) else []
        elif not _fits(data[name], hints[name]):
            found.append(f"{name}: {data[name]!r:.60} is not {_name(hints[name])}")
    return found


@functools.cache
def _hints(declaration: type) -> dict[str, Any]:
    return typing.get_type_hints(declaration)


def _fits(value, tp) -> bool:
    """Whether a JSON value is of the declared type (a record's fields recursively; dict keys are JSON strings)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if tp is type(None):
        return value is None
    if isinstance(value, bool):  # a JSON true is no number
        return tp is bool
    if tp is float:
        return isinstance(value, (int, float))
    if origin is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(item, args[1]) for item in value.values())
    if isinstance(tp, type) and issubclass(tp, Record):
        return isinstance(value, dict) and not _misfits(value, tp)
    return isinstance(value, tp)


def _name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp)
