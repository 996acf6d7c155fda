"""Generic, type-hint-driven conversion between YAML data and the frozen config dataclasses."""

import dataclasses
import functools
import itertools
import math
import numbers
import operator
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin, get_type_hints

from testbed.errors import ConfigError

NoneType = type(None)

# Rules a field may carry (see `setting`). Bounds and choices apply to each scalar value, list
# items and mapping values included; the others apply to the list or mapping itself.
_BOUNDS = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}
_SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
RULES = frozenset(_BOUNDS) | {"choices", "what", "keys", "nonempty", "increasing", "like"}

QUOTE_CHARS = 40  # longest text an error quotes from a file or a value (keys, strings): never the file itself
_NOUNS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_ACCEPTS = {  # YAML value -> field type; bool is not an int, an int is fine where a float is expected
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


class FrozenDict(dict):
    """A read-only dict: keeps frozen config immutable and hashable; pickles and dumps as a dict."""

    def _read_only(self, *args, **kwargs):
        raise TypeError("config mappings are read-only; build a new config instead")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    # dict declares __hash__ = None (unhashable); being hashable is the point of this subclass
    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self):
        return (FrozenDict, (dict(self),))


def setting(default: Any = dataclasses.MISSING, **rules) -> Any:
    """A dataclass field whose validation rules live in its metadata.

    gt/ge/lt/le: numeric bounds; choices: allowed strings, `what` naming them in errors;
    keys: allowed mapping keys; like: a config dataclass whose fields of the same names type and check a
    mapping's values (an override of some of its fields; keys default to its fields); nonempty, increasing:
    for lists. A dataclass default becomes a default_factory; a plain default must be valid under the rules
    (the tests check this).
    """
    unknown = set(rules) - RULES
    if unknown:
        raise TypeError(f"unknown field rule(s) {sorted(unknown)} (allowed: {sorted(RULES)})")
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=rules)
    return dataclasses.field(default=default, metadata=rules)


@functools.cache
def fields_of(cls: type) -> dict[str, tuple[Any, Mapping]]:
    """Field name -> (resolved type hint, rules) of a config dataclass, in declaration order."""
    hints = get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata) for f in dataclasses.fields(cls)}


def members(tp: Any) -> tuple:
    """The member types of a union (`int | None` -> (int, NoneType)), else (tp,)."""
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)


def strip_none(tp: Any) -> Any:
    """`X | None` -> X; other types unchanged."""
    rest = tuple(m for m in members(tp) if m is not NoneType)
    return rest[0] if len(rest) == 1 else functools.reduce(operator.or_, rest)


def join_path(path: str, key: Any) -> str:
    """Field path as users write it: `fleet[2].profile`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def number_text(value: int | float) -> str:
    """A number as errors write it: `1e+300`, `18446744073709551616`; a huge integer by its size."""
    if isinstance(value, int) and value.bit_length() > 128:  # str() of a 5000-digit int is slow, or refused
        return f"{'-' if value < 0 else ''}an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    return str(value) if isinstance(value, int) else f"{value:g}"


def quote(value: Any) -> str:
    """A key or a string as errors quote it: its repr (one line), cut at QUOTE_CHARS characters; other kinds by name."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = number_text(value)
    elif isinstance(value, (str, float, bool)) or value is None:
        text = repr(value)
    else:
        return f"a {type(value).__name__}"
    return text if len(text) <= QUOTE_CHARS + 3 else text[:QUOTE_CHARS] + "..."


def key_text(key: Any) -> str:
    """A mapping key as a field path shows it: the key itself when short and plain, else quoted."""
    plain = isinstance(key, str) and key.isprintable() and len(key) <= QUOTE_CHARS
    return key if plain else quote(key)


def range_text(rules: Mapping) -> str:
    """Human form of the numeric bounds: `0 < x <= 16`, `x >= 1`, or '' when unbounded."""
    low = [k for k in ("gt", "ge") if k in rules]
    high = [k for k in ("lt", "le") if k in rules]
    if low and high:
        mirrored = {"gt": "<", "ge": "<="}[low[0]]
        return f"{number_text(rules[low[0]])} {mirrored} x {_SYMBOLS[high[0]]} {number_text(rules[high[0]])}"
    return " and ".join(f"x {_SYMBOLS[k]} {number_text(rules[k])}" for k in low + high)


def out_of_range(value: int | float, rules: Mapping) -> str | None:
    """The problem of a number outside the bounds in `rules` (`1e+300 is out of range (allowed: ...)`), else None."""
    if all(check(value, rules[k]) for k, check in _BOUNDS.items() if k in rules):
        return None
    return f"{number_text(value)} is out of range (allowed: {range_text(rules)})"


def describe(tp: Any, rules: Mapping | None = None) -> str:
    """What a field accepts, for error messages: `an integer (x >= 1) or null`."""
    rules = rules or {}
    if len(members(tp)) > 1:
        return " or ".join("null" if m is NoneType else describe(m, rules) for m in members(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a type hint: a class, never an instance
        return f"a mapping (keys: {', '.join(fields_of(tp))})"
    origin, args = get_origin(tp), get_args(tp)
    if origin is tuple:
        return f"a list (items: {describe(args[0], rules)})"
    if origin in (dict, Mapping):
        keys = f"keys: {', '.join(rules['keys'])}; " if "keys" in rules else ""
        return f"a mapping ({keys}values: {describe(args[1], rules)})"
    if tp is str and "choices" in rules:
        return "one of " + ", ".join(rules["choices"])
    bounds = range_text(rules) if tp in (int, float) else ""
    return _NOUNS[tp] + (f" ({bounds})" if bounds else "")


def show(value: Any) -> str:
    """A YAML value as quoted in errors: `'ten' (string)`, `true (boolean)`, `a list`.

    Numbers and strings are quoted, at most QUOTE_CHARS characters; anything else is named by its kind
    only (its repr could be huge, nested past Python's recursion limit, or another file's text)."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, bool):
        return f"{str(value).lower()} (boolean)"
    if isinstance(value, (str, numbers.Number)):
        kind = {int: "integer", float: "number", str: "string"}.get(type(value), type(value).__name__)
        text = number_text(value) if isinstance(value, int) else repr(value)
        return f"{text[:QUOTE_CHARS] + '...' if len(text) > QUOTE_CHARS + 3 else text} ({kind})"
    return f"a {type(value).__name__}"


def from_data(tp: Any, value: Any, *, source: str, path: str = "", rules: Mapping | None = None) -> Any:
    """Convert YAML data to type `tp` under `rules`; any problem raises ConfigError(source, path)."""
    rules = rules or {}
    if value is None:
        if NoneType in members(tp):
            return None
        raise ConfigError(source, path, f"expected {describe(tp, rules)}, got null")
    tp = strip_none(tp)
    if hasattr(tp, "variant"):  # a family of dataclasses (stress steps): the value names its member
        tp, value = tp.variant(value, source=source, path=path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a type hint: a class, never an instance
        return _to_dataclass(tp, value, source, path)
    if get_origin(tp) is tuple:
        return _to_tuple(tp, value, source, path, rules)
    if get_origin(tp) in (dict, Mapping):
        return _to_mapping(tp, value, source, path, rules)
    return _to_scalar(tp, value, source, path, rules)


def _to_dataclass(cls: type, value: Any, source: str, path: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(source, path, f"expected {describe(cls)}, got {show(value)}")
    fields = fields_of(cls)
    for key in value:
        if key not in fields:
            raise ConfigError(source, join_path(path, key_text(key)),
                              f"unknown key {quote(key)} (allowed: {', '.join(fields)})")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in value]
    if missing:
        field_type, rules = fields[missing[0]]
        raise ConfigError(source, join_path(path, missing[0]),
                          f"is required (expected {describe(field_type, rules)})")
    obj = cls(**{name: from_data(fields[name][0], item, source=source, path=join_path(path, name),
                                 rules=fields[name][1]) for name, item in value.items()})
    problem = next(iter(getattr(obj, "problems", tuple)()), None)  # cross-field checks
    if problem:
        raise ConfigError(source, join_path(path, problem[0]), problem[1])
    return obj


def _to_tuple(tp: Any, value: Any, source: str, path: str, rules: Mapping) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(source, path, f"expected {describe(tp, rules)}, got {show(value)}")
    item_type = get_args(tp)[0]
    items = tuple(from_data(item_type, item, source=source, path=join_path(path, i), rules=rules)
                  for i, item in enumerate(value))
    if rules.get("nonempty") and not items:
        raise ConfigError(source, path,
                          f"must not be empty (expected {describe(tp, rules)}, with at least one item)")
    if rules.get("increasing") and any(b <= a for a, b in itertools.pairwise(items)):
        shown = ", ".join(map(number_text, items[:8])) + (", ..." if len(items) > 8 else "")
        raise ConfigError(source, path, f"must be strictly increasing, got [{shown}]")
    return items


def _to_mapping(tp: Any, value: Any, source: str, path: str, rules: Mapping) -> FrozenDict:
    if not isinstance(value, Mapping):
        raise ConfigError(source, path, f"expected {describe(tp, rules)}, got {show(value)}")
    like = rules.get("like")  # each value as that dataclass's field of the same name: its type, its rules
    allowed = rules.get("keys") or (tuple(fields_of(like)) if like else None)
    for key in value:
        if not isinstance(key, str) or (allowed and key not in allowed):
            hint = f"allowed: {', '.join(allowed)}" if allowed else "keys must be strings"
            raise ConfigError(source, join_path(path, key_text(key)), f"unknown key {quote(key)} ({hint})")
    typed = {key: fields_of(like)[key] if like else (get_args(tp)[1], rules) for key in value}
    return FrozenDict({key: from_data(typed[key][0], item, source=source, path=join_path(path, key),
                                      rules=typed[key][1]) for key, item in value.items()})


def _to_scalar(tp: Any, value: Any, source: str, path: str, rules: Mapping) -> Any:
    kind = next((m for m in members(tp) if _ACCEPTS[m](value)), None)
    if kind is None:
        raise ConfigError(source, path, f"expected {describe(tp, rules)}, got {show(value)}")
    if kind in (int, float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(source, path, f"expected a finite number, got {value}")
        problem = out_of_range(value, rules)  # before float(): an integer beyond a float's range is just out of it
        if problem:
            raise ConfigError(source, path, problem)
    value = kind(value)  # int -> float where a float is expected
    if kind is str and "choices" in rules and value not in rules["choices"]:
        allowed = ", ".join(rules["choices"]) if tp is str else describe(tp, rules)  # e.g. int or "auto"
        raise ConfigError(source, path, f"unknown {rules.get('what', 'value')} {quote(value)} (allowed: {allowed})")
    return value


def to_data(obj: Any) -> Any:
    """Plain YAML-ready data (dicts, lists, scalars) from config objects; from_data's inverse."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {key: to_data(item) for key, item in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_data(item) for item in obj]
    return obj
