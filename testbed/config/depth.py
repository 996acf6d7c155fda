"""What a scenario asks of its backbone's depth, checked before any process starts.

`backbone.exits` are layer numbers and `exit_policy.preferred_exits` exit indices: a scenario whose
backbone lacks them would only fail inside the aggregator, so both are checked against the depth.
That depth is known without loading anything for the presets and a local checkpoint directory (its
config.json), and for a Hugging Face id already in the local cache; otherwise the run checks it once
it has loaded the backbone (launch/run.py prepare_assets). A profile's `max_exit` is not checked: it
is a cap meant to be portable across backbones, meaning the deepest exit beyond a backbone's exits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from testbed.config.schema import Scenario
from testbed.errors import ConfigError
from testbed.model.architecture import PRESET_GEOMETRY
from testbed.model.geometry import default_exits

_MAX_CONFIG_JSON_BYTES = 1 << 20  # a checkpoint's config.json is a few KB


def known_depth(name: str) -> int | None:
    """Transformer layers of backbone `name` when known without loading or downloading it, else None."""
    if name in PRESET_GEOMETRY:
        layers = PRESET_GEOMETRY[name]["num_hidden_layers"]  # typed object: the geometry mixes ints and tuples
        assert isinstance(layers, int)  # every preset's is a literal int (testbed/model/architecture.py)
        return layers
    local = Path(name).expanduser()
    if local.is_dir():
        return _layers_in(local / "config.json")
    try:  # a Hugging Face id: only what the cache already holds
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:
        return None
    return _layers_in(Path(cached)) if isinstance(cached, str) else None


def depth_problems(scenario: Scenario, depth: int) -> Iterator[tuple[str, str]]:
    """(field path, problem) for each exit the scenario asks of a backbone `depth` layers deep."""
    name = scenario.backbone.name
    for index, layer in enumerate(scenario.backbone.exits or ()):
        if layer > depth:
            yield (f"backbone.exits[{index}]",
                   f"layer {layer} is beyond the {depth} layers of backbone {name!r} (allowed: 1 <= x <= {depth})")
    exits = scenario.backbone.exits or default_exits(depth)
    for task, preferred in scenario.exit_policy.preferred_exits.items():
        if isinstance(preferred, int) and preferred > len(exits):
            yield (f"exit_policy.preferred_exits.{task}",
                   f"exit {preferred} is beyond the {len(exits)} exits of backbone {name!r} (exits at layers "
                   f"{', '.join(map(str, exits))}) (allowed: 1 <= x <= {len(exits)} or auto)")


def check_depth(scenario: Scenario, depth: int, source: str) -> None:
    """Raise a ConfigError at (`source`, field) for the first exit a backbone `depth` layers deep lacks."""
    problem = next(depth_problems(scenario, depth), None)
    if problem:
        raise ConfigError(source, *problem)


def _layers_in(config_json: Path) -> int | None:
    """`num_hidden_layers` of a transformers config.json; None when it cannot be read (the load will say why)."""
    try:
        with config_json.open("rb") as handle:
            layers = json.loads(handle.read(_MAX_CONFIG_JSON_BYTES)).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return layers if isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1 else None
