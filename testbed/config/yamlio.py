"""YAML reading for config files: safe, strict (duplicate keys are errors), one-line errors."""

import re
from pathlib import Path
from typing import Any

import yaml

from testbed.config.convert import show
from testbed.errors import ConfigError


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, reads `5e-4` as a float and only true/false as booleans (YAML 1.2)."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:  # before merge keys (<<) are flattened: those may repeat
        key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
        if key is not None and key_node.tag != "tag:yaml.org,2002:merge":
            seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.2 booleans: only true/false. In YAML 1.1 `yes`, `no`, `on`, `off` are booleans too, which
# would turn Speech Commands words (`words: [yes, no, on, off]`) into true/false.
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
StrictLoader.add_implicit_resolver(  # YAML 1.1 needs a dot ("5.0e-4"); people write 5e-4
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def yaml_problem(error: yaml.YAMLError) -> str:
    """One line describing a YAML error, with its line and column when known."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"invalid YAML: {' '.join(str(problem).split())}{where}"


def parse_value(text: str) -> Any:
    """A YAML scalar or flow value (`5`, `0.3`, `[2, 4]`, `{a: 1}`, `null`); raises yaml.YAMLError."""
    return yaml.load(text, Loader=StrictLoader)


def read_mapping(path: Path | str, source: str | None = None) -> dict:
    """The top-level mapping of a YAML file; every failure is a ConfigError naming `source`."""
    source = source or str(path)
    path = Path(path)
    if not path.exists():
        raise ConfigError(source, "", "file not found")
    if path.is_dir():
        raise ConfigError(source, "", "is a directory, expected a YAML file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(source, "", yaml_problem(error)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(source, "", f"cannot read: {error}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else show(data)
        raise ConfigError(source, "", f"top level must be a mapping (key: value lines), got {got}")
    return data
