"""FedScale device traces as a fleet source: each drawn trace client becomes a profile and a link.

FedScale (Lai et al., "FedScale: Benchmarking Model and System Performance of Federated Learning
at Scale", ICML 2022) ships two traces, each a dict keyed by client id (a pickle; the same
structure as JSON is read too, keys then being strings):

- device capacity (`client_device_capacity`): {'computation': ms per sample, the inference latency
  of its benchmark model on the device; 'communication': kbit/s, one figure for both directions};
- behaviour (`client_behave_trace`): {'active': [s, ...], 'inactive': [s, ...], 'finish_time': s,
  ...}: online from active[i] to inactive[i] (both ends included), the whole pattern repeating every
  finish_time seconds. Other keys ('duration', 'model') are not used.

The mapping onto a base profile and link (the fleet entry's):
- speed = reference_ms_per_sample / computation (the base's per-core speed is replaced; cores and
  threads stay), held within Profile.speed's bounds with a note in the description; without a
  reference, the trace's median computation times the base speed, so the median device runs at the
  base profile's speed;
- link: downlink = uplink = communication / 1000 Mbit/s, held within LinkSpec's bandwidth bounds with
  a note; latency, jitter and loss from the base link (FedScale gives none);
- availability: the behaviour trace's periods exactly, as Availability.intervals repeating every
  finish_time (clipped to it; zero-length periods dropped); online_probability 1, since the trace
  already says when the device is reachable. Without a behaviour trace, the base's availability;
- memory, max_exit, failure: from the base profile.

Clients are drawn from the seed without replacement, capacity and behaviour independently (FedScale
itself pairs them by position, not by a shared client id). Every entry of a trace is checked when
the file is first read; reads are cached per file version. A trace file is at most MAX_TRACE_BYTES,
checked before it is read.
"""

import functools
import json
import math
import numbers
import random
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from testbed.config.convert import fields_of, key_text, number_text, out_of_range, quote, show
from testbed.config.safe_pickle import UnreadablePickleError, UnsafePickleError, load_plain
from testbed.config.schema import Availability, FedScaleTrace, LinkSpec, Profile
from testbed.config.yamlio import read_bounded
from testbed.errors import ConfigError

MIN_SPEED: float = fields_of(Profile)["speed"][1]["ge"]  # the schema's bounds on Profile.speed
MAX_SPEED: float = fields_of(Profile)["speed"][1]["le"]
MIN_MBPS: float = fields_of(LinkSpec)["uplink_mbps"][1]["ge"]  # and on a link's bandwidth, Mbit/s
MAX_MBPS: float = fields_of(LinkSpec)["uplink_mbps"][1]["le"]
PERIOD_RULES = fields_of(Availability)["period_s"][1]  # finish_time's bounds: intervals are clipped to it
# FedScale's own traces are tens of MB (capacity: ~500 k clients x two numbers; behaviour: ~100 k
# clients with their lists of online times). 256 MiB leaves room for bigger ones while bounding what
# a read holds: plain data unpickled or parsed takes several times its file size in Python objects.
MAX_TRACE_BYTES = 256 << 20


class Capacity(NamedTuple):
    ms_per_sample: float  # FedScale 'computation': inference latency, milliseconds per sample
    kbps: float           # FedScale 'communication': kbit/s, both directions


class Behaviour(NamedTuple):
    intervals: tuple[tuple[float, float], ...]  # online (start_s, end_s) within one period
    period_s: float                              # FedScale 'finish_time': the pattern repeats

    @property
    def online_fraction(self) -> float:
        return sum(end - start for start, end in self.intervals) / self.period_s


Device = tuple[Profile, LinkSpec]


def trace_devices(trace: FedScaleTrace, base: Profile, base_link: LinkSpec, *, count: int, seed: str,
                  source: str, path: str) -> list[Device]:
    """`count` devices drawn from the trace files (absolute paths) with `seed`, in draw order.

    `source` and `path` name the fleet entry in errors that are the scenario's fault (`count`).
    """
    capacity = read_capacity(Path(trace.capacity))
    behaviour = read_behaviour(Path(trace.behaviour)) if trace.behaviour is not None else None
    rng = random.Random(f"fedscale:{seed}")  # a str seed is hashed (SHA-512): same draw everywhere
    capacity_ids = _draw(rng, capacity, count, f"capacity trace {trace.capacity}", source, path)
    drawn: list[tuple[str | None, Behaviour | None]] = (  # (behaviour id, its behaviour) per device
        [(bid, behaviour[bid]) for bid in _draw(rng, behaviour, count, f"behaviour trace {trace.behaviour}",
                                                source, path)]
        if behaviour is not None else [(None, None)] * count)
    reference = trace.reference_ms_per_sample
    if reference is None:  # the median device runs at the base profile's speed
        reference = base.speed * statistics.median(c.ms_per_sample for c in capacity.values())
    return [_device(trace, base, base_link, reference, cid, capacity[cid], bid, behaves)
            for cid, (bid, behaves) in zip(capacity_ids, drawn)]


def read_capacity(file: Path) -> dict[str, Capacity]:
    """Client id -> Capacity from a FedScale device capacity trace (pickle or JSON)."""
    return _read(file, _capacity_entry, "{computation, communication}")


def read_behaviour(file: Path) -> dict[str, Behaviour]:
    """Client id -> Behaviour from a FedScale behaviour (availability) trace (pickle or JSON)."""
    return _read(file, _behaviour_entry, "{active, inactive, finish_time}")


def _draw(rng: random.Random, trace: dict, count: int, what: str, source: str, path: str) -> list[str]:
    if count > len(trace):
        raise ConfigError(source, f"{path}.count", f"{count} clients asked for, but the FedScale {what} "
                                                   f"has {len(trace)} (allowed: count <= {len(trace)})")
    return rng.sample(sorted(trace), count)  # ids are strings: a pickle and its JSON draw alike


def _device(trace: FedScaleTrace, base: Profile, base_link: LinkSpec, reference: float, cid: str,
            capacity: Capacity, bid: str | None, behaviour: Behaviour | None) -> Device:
    speed = reference / capacity.ms_per_sample
    note = f"speed {speed:.4g}" + (f", capped at {MAX_SPEED:g} (the profile bound)" if speed > MAX_SPEED else
                                   f", raised to {MIN_SPEED:g} (the profile bound)" if speed < MIN_SPEED else "")
    mbps = min(max(capacity.kbps / 1000, MIN_MBPS), MAX_MBPS)  # the link bounds; the description keeps the trace's
    link = replace(base_link, name=f"{base_link.name}-fedscale-{cid}", downlink_mbps=mbps, uplink_mbps=mbps,
                   source=f"FedScale capacity trace {trace.capacity}, client {cid}: {capacity.kbps:g} kbit/s "
                          f"both ways; latency, jitter and loss of link {base_link.name!r}")
    description = (f"FedScale client {cid} on {base.name}: {capacity.ms_per_sample:g} ms/sample "
                   f"({note}), {capacity.kbps:g} kbit/s")
    availability = base.availability
    if behaviour is not None:
        availability = Availability(intervals=behaviour.intervals, period_s=behaviour.period_s)
        description += (f"; behaviour trace client {bid}: online {behaviour.online_fraction:.0%} "
                        f"of every {behaviour.period_s:g} s")
    traces = ", ".join(Path(file).name for file in (trace.capacity, trace.behaviour) if file)
    profile = replace(base, name=f"{base.name}-fedscale-{cid}", description=description,
                      source=f"FedScale traces ({traces}); other figures: {base.name} ({base.source})",
                      speed=min(max(speed, MIN_SPEED), MAX_SPEED), availability=availability)
    return profile, link


# --- reading and checking trace files --------------------------------------------------------------

def _read(file: Path, parse_entry, fields: str) -> dict:
    try:
        stat = file.stat()
    except OSError as error:
        raise ConfigError(str(file), "", f"cannot read: {error.strerror or error}") from None
    return _read_version(str(file), stat.st_mtime_ns, stat.st_size, parse_entry, fields)


@functools.lru_cache(maxsize=8)  # a scenario is resolved several times per run; real traces are large
def _read_version(file: str, mtime_ns: int, size: int, parse_entry, fields: str) -> dict:
    data = _load(Path(file))
    if not isinstance(data, dict) or not data:
        got = "an empty mapping" if isinstance(data, dict) else show(data)
        raise ConfigError(file, "", f"expected a mapping of client id -> {fields} (a FedScale trace), got {got}")
    entries = {}
    for key, entry in data.items():
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise ConfigError(file, "", f"client id {quote(key)} is not an integer or a string")
        cid = str(key) if isinstance(key, str) else number_text(key)
        if cid in entries:
            raise ConfigError(file, f"client {key_text(cid)}", "appears twice (as an integer and as a string)")
        if not isinstance(entry, dict):
            raise ConfigError(file, f"client {key_text(cid)}", f"expected a mapping {fields}, got {show(entry)}")
        entries[cid] = parse_entry(entry, file, f"client {key_text(cid)}")
    return entries


def _load(file: Path) -> Any:
    """JSON when the file starts with '{' or '[' (never a pickle's first byte), else a pickle of plain data."""
    data = read_bounded(file, MAX_TRACE_BYTES, "a FedScale trace", str(file))
    if data.lstrip()[:1] in (b"{", b"["):
        try:
            return json.loads(data)
        except json.JSONDecodeError as error:
            raise ConfigError(str(file), "", f"invalid JSON: {error.msg} (line {error.lineno}, "
                                             f"column {error.colno})") from None
        except UnicodeDecodeError as error:
            raise ConfigError(str(file), "", f"invalid JSON: not UTF-8 text ({error.reason})") from None
        except RecursionError:  # json's parser recurses per level; a trace is 3 levels deep
            raise ConfigError(str(file), "", "invalid JSON: nested too deeply to parse (a FedScale trace is "
                                             "3 levels deep: client id -> figures -> list of times)") from None
    try:
        return load_plain(data)
    except UnsafePickleError as error:
        raise ConfigError(str(file), "", str(error)) from None
    except UnreadablePickleError as error:  # the error's text is not shown: it may quote the file's bytes
        raise ConfigError(str(file), "", f"not a FedScale trace: neither JSON nor a readable pickle "
                                         f"({error})") from None


def _capacity_entry(entry: dict, file: str, where: str) -> Capacity:
    return Capacity(ms_per_sample=_number(entry, "computation", file, where, "ms per sample, > 0"),
                    kbps=_number(entry, "communication", file, where, "kbit/s, > 0"))


def _behaviour_entry(entry: dict, file: str, where: str) -> Behaviour:
    period = _number(entry, "finish_time", file, where, "seconds, > 0")
    problem = out_of_range(period, PERIOD_RULES)  # it becomes Availability.period_s, which clients validate
    if problem:
        raise ConfigError(file, f"{where}.finish_time", f"{problem} seconds")
    active = _times(entry, "active", file, where)
    inactive = _times(entry, "inactive", file, where)
    if len(active) != len(inactive):
        raise ConfigError(file, f"{where}.inactive", f"has {len(inactive)} times but active has "
                                                     f"{len(active)} (one inactive time per active time)")
    intervals, previous_end = [], 0.0
    for index, (start, end) in enumerate(zip(active, inactive)):
        if end < start:
            raise ConfigError(file, f"{where}.inactive[{index}]", f"{end:g} is before active[{index}] "
                                                                  f"({start:g}) (allowed: active <= inactive)")
        if start < previous_end:
            raise ConfigError(file, f"{where}.active[{index}]", f"{start:g} is before inactive[{index - 1}] "
                                                                f"({previous_end:g}) (allowed: periods in "
                                                                "time order, not overlapping)")
        previous_end = end
        end = min(end, period)  # FedScale looks at time modulo finish_time: later parts never count
        if start < end:
            intervals.append((start, end))
    if not intervals:
        raise ConfigError(file, f"{where}.active", f"no online period of positive length before "
                                                   f"finish_time ({period:g} s)")
    return Behaviour(intervals=tuple(intervals), period_s=period)


def _number(entry: dict, key: str, file: str, where: str, unit: str) -> float:
    """entry[key] as a finite float > 0 (NumPy scalars included)."""
    if key not in entry:
        raise ConfigError(file, f"{where}.{key}", f"missing (expected a number: {unit})")
    value = entry[key]
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(file, f"{where}.{key}", f"expected a finite number ({unit}), got {show(value)}")
    return float(value)


def _times(entry: dict, key: str, file: str, where: str) -> list[float]:
    """entry[key] as a list of finite times >= 0, seconds."""
    values = entry.get(key)
    if not isinstance(values, (list, tuple)):
        got = "nothing" if key not in entry else show(values)
        raise ConfigError(file, f"{where}.{key}", f"expected a list of times (seconds, >= 0), got {got}")
    for index, value in enumerate(values):
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise ConfigError(file, f"{where}.{key}[{index}]",
                              f"expected a finite time (seconds, >= 0), got {show(value)}")
    return [float(value) for value in values]


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
