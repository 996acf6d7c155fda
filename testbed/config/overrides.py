"""`--set KEY=VALUE` overrides, applied to a raw YAML mapping before it is validated."""

import copy
import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any, get_args, get_origin

import yaml

from testbed.config.convert import fields_of, join_path, quote, show, strip_none
from testbed.config.schema import Scenario
from testbed.config.yamlio import parse_value, yaml_problem
from testbed.errors import ConfigError

SOURCE = "--set"  # errors caused by an override name it, not the scenario file
_PART = re.compile(r"([^.\[\]\s]+)((?:\[\d+\])*)")  # `fleet`, `fleet[0]`, `0`


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """`fleet[0].count=3` -> (['fleet', 0, 'count'], 3); the value is parsed as YAML."""
    key, equals, value_text = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise ConfigError(SOURCE, "", f"expected KEY=VALUE (e.g. rounds=5 or fleet[0].count=3), got {quote(text)}")
    keys: list[str | int] = []
    for part in key.split("."):
        match = _PART.fullmatch(part)
        if not match:
            raise ConfigError(SOURCE, key,
                              "malformed key (expected e.g. rounds, backbone.exits, fleet[0].count)")
        keys.append(int(match[1]) if match[1].isdigit() else match[1])
        keys.extend(int(index) for index in re.findall(r"\d+", match[2]))
    try:
        return keys, parse_value(value_text)
    except yaml.YAMLError as error:
        raise ConfigError(SOURCE, key, yaml_problem(error)) from None


def override_path(text: str) -> str:
    """The field path an override sets, written as errors write it: `fleet[0].count`."""
    return functools.reduce(join_path, parse_override(text)[0], "")


def apply_overrides(raw: dict, overrides: Iterable[str], schema: type = Scenario) -> dict:
    """A copy of `raw` with each override applied; keys are checked against `schema`."""
    result = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        _assign(result, keys, value, schema)
    return result


def blame_overrides(error: ConfigError, source: str, overrides: Iterable[str]) -> ConfigError:
    """Relabel an error in `source` as an override's fault when it lies under an overridden path."""
    if error.source != source:
        return error
    for path in map(override_path, overrides):
        if error.path == path or error.path.startswith((path + ".", path + "[")):
            return ConfigError(SOURCE, error.path, error.problem)
    return error


def _assign(raw: dict, keys: list[str | int], value: Any, schema: type) -> None:
    node: Any = raw  # then whatever the data holds at the path so far: _check_container checks it
    field_type, path = schema, ""
    for position, key in enumerate(keys):
        field_type, child_path = _child_type(field_type, key, path)
        _check_container(node, key, path)
        if position == len(keys) - 1:
            node[key] = value
            return
        child = node[key] if isinstance(key, int) else node.get(key)
        if child is None and isinstance(keys[position + 1], str):  # section absent: start it
            child = node[key] = {}
        node, path = child, child_path


def _child_type(field_type: Any, key: str | int, path: str) -> tuple[Any, str]:
    """The type found at `key` inside `field_type`, or a ConfigError for a key the schema lacks."""
    field_type, child_path = strip_none(field_type), join_path(path, key)
    if isinstance(field_type, type) and dataclasses.is_dataclass(field_type):  # a type hint: a class, never an instance
        fields = fields_of(field_type)
        if key not in fields:
            raise ConfigError(SOURCE, child_path, f"unknown key {quote(key)} (allowed: {', '.join(fields)})")
        return fields[key][0], child_path
    if get_origin(field_type) is tuple:
        if not isinstance(key, int):
            raise ConfigError(SOURCE, child_path, f"{path} is a list: index it, e.g. {path}[0]")
        return get_args(field_type)[0], child_path
    if get_origin(field_type) in (dict, Mapping):
        return get_args(field_type)[1], child_path
    raise ConfigError(SOURCE, child_path, f"{path} is a single value, with nothing inside to set")


def _check_container(node: Any, key: str | int, path: str) -> None:
    if isinstance(key, int):
        if not isinstance(node, list):
            raise ConfigError(SOURCE, path, f"is not a list in the file, cannot index [{key}]")
        if key >= len(node):
            allowed = f"0..{len(node) - 1}" if node else "none, the list is empty"
            raise ConfigError(SOURCE, join_path(path, key), f"index out of range (allowed: {allowed})")
    elif not isinstance(node, dict):
        raise ConfigError(SOURCE, path, f"is {show(node)} in the file, not a mapping: cannot set {quote(key)}")
