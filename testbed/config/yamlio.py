"""YAML reading for config files: safe, strict (duplicate keys are errors), bounded, one-line errors.

Bounded: a file is at most MAX_CONFIG_BYTES (checked before it is read), nesting at most MAX_NESTING
levels deep (checked as it is parsed, before PyYAML's recursive composer could exhaust Python's
stack), integers at most Python's digit limit. An error names the file and the line; it never quotes
the file's text (a profile path may point at any file: /etc/passwd, a key file).
"""

import re
import sys
from pathlib import Path
from typing import Any

import yaml

from testbed.config.convert import quote
from testbed.errors import ConfigError

# The largest shipped config is ~3 KB and a 256-client fleet written out one entry per line ~20 KB;
# 1 MiB is ample, and bounds what a mistaken path (a log, a dataset) costs: PyYAML builds ~100x its
# input in Python objects, and a 50 MB file took over a minute.
MAX_CONFIG_BYTES = 1 << 20
MAX_NESTING = 32  # levels of mappings and lists; the schema's deepest value is 5 (fleet[0].fedscale...)
_MAX_PROBLEM_CHARS = 120  # PyYAML's messages quote tags and characters of the file: keep them short
_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list"}


def read_bounded(path: Path, limit: int, what: str, source: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; a ConfigError at `source` otherwise."""
    try:
        size = path.stat().st_size
        if not path.is_file():  # a FIFO or a device (/dev/zero) never ends
            raise ConfigError(source, "", f"is not a regular file (allowed: {what})")
        if size > limit:
            raise ConfigError(source, "", f"is {size / (1 << 20):.1f} MiB, too large for {what} "
                                          f"(allowed: at most {limit >> 20} MiB)")
        with path.open("rb") as handle:
            data = handle.read(limit + 1)  # the size may lie (/proc files say 0) or grow meanwhile
    except OSError as error:
        raise ConfigError(source, "", f"cannot read: {error.strerror or type(error).__name__}") from None
    if len(data) > limit:
        raise ConfigError(source, "", f"is more than {limit >> 20} MiB, too large for {what} "
                                      f"(allowed: at most {limit >> 20} MiB)")
    return data


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, reads `5e-4` as a float and only true/false as booleans
    (YAML 1.2), and refuses nesting deeper than MAX_NESTING."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_NESTING} levels (allowed: at most {MAX_NESTING})",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:  # before merge keys (<<) are flattened: those may repeat
        key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {quote(key_node.value)}", key_node.start_mark)
        if key is not None and key_node.tag != "tag:yaml.org,2002:merge":
            seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


def _construct_int(loader: StrictLoader, node: yaml.ScalarNode) -> int:
    try:
        return loader.construct_yaml_int(node)
    except ValueError:  # Python refuses to convert more than sys.get_int_max_str_digits() digits
        digits = sum(char.isdigit() for char in node.value)
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer of {digits} digits (allowed: at most {sys.get_int_max_str_digits()})",
            node.start_mark) from None


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
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
    problem = " ".join(str(problem).split())
    if len(problem) > _MAX_PROBLEM_CHARS:
        problem = problem[:_MAX_PROBLEM_CHARS] + "..."
    return f"invalid YAML: {problem}{where}"


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
    data = read_bounded(path, MAX_CONFIG_BYTES, "a config file", source)
    try:
        data = yaml.load(data.decode("utf-8"), Loader=StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(source, "", yaml_problem(error)) from None
    except UnicodeDecodeError as error:
        raise ConfigError(source, "", f"cannot read: not UTF-8 text (byte {error.start})") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else _KINDS.get(type(data), f"a {type(data).__name__}")  # not its text
        raise ConfigError(source, "", f"top level must be a mapping (key: value lines), got {got}")
    return data
