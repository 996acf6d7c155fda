"""The stress-step registry: each `do:` action is its own class, parsed from the YAML by its name, with errors
naming the step, the field and what is allowed; a link override is checked as a link preset is."""

import dataclasses

import pytest

from testbed.config.convert import fields_of, from_data
from testbed.config.schema import LinkSpec
from testbed.errors import ConfigError
from testbed.stress.injector import Injector
from testbed.stress.steps import STEPS, LinkStep, SlowStep, Step, TargetedStep

WHEN = {"t": 5}
SETTINGS = {  # the least each action needs besides `when`
    "slow": {"slowdown": 10}, "link": {"link": {"uplink_mbps": 0.1}}, "corrupt": {"scale": 100},
    "lie": {"samples": 1000}, "impersonate": {"victim": "c00"}}


def step(do: str, **fields):
    """A step parsed as a stress file's `script[0]`."""
    return from_data(tuple[Step, ...], [{"do": do, "when": WHEN, **fields}], source="s.yaml", path="script")[0]


def refusal(do: str, **fields) -> str:
    with pytest.raises(ConfigError) as caught:
        step(do, **fields)
    return str(caught.value)


@pytest.mark.parametrize("do", list(STEPS))
def test_every_action_parses_into_its_own_frozen_class_and_has_an_injector_method(do):
    targets = {"clients": ["c01"]} if issubclass(STEPS[do], TargetedStep) else {}
    parsed = step(do, **targets, **SETTINGS.get(do, {}))
    assert type(parsed) is STEPS[do] and parsed.do == do and parsed.when.t == 5
    assert dataclasses.is_dataclass(parsed) and STEPS[do].__dataclass_params__.frozen
    assert STEPS[do].__doc__ and callable(getattr(Injector, f"_{do}"))


def test_the_registry_keeps_the_shipped_action_names_in_order():
    assert list(STEPS) == ["kill", "stop", "cont", "slow", "link", "corrupt", "lie", "impersonate", "flood",
                           "kill_aggregator"]


@pytest.mark.parametrize("do, fields, expected", [
    ("freeze", {"clients": ["c01"]},
     "s.yaml: script[0].do: unknown action 'freeze' (allowed: kill, stop, cont, slow, link, corrupt, lie, "
     "impersonate, flood, kill_aggregator)"),
    ("kill", {"clients": ["c01"], "slowdown": 2}, "s.yaml: script[0].slowdown: only goes with do: slow"),
    ("flood", {"clients": ["c01"]},
     "s.yaml: script[0].clients: only goes with do: kill, stop, cont, slow, link, corrupt, lie, impersonate"),
    ("kill", {"clients": ["c01"], "speed": 2},
     "s.yaml: script[0].speed: unknown key 'speed' (allowed: do, when, name, clients, fraction)"),
    ("slow", {"clients": ["c01"]},
     "s.yaml: script[0].slowdown: is required with do: slow (The clients compute `slowdown` times slower than "
     "their profile; expected a number (1 <= x <= 1000))"),
    ("slow", {"clients": ["c01"], "slowdown": 0.5}, "s.yaml: script[0].slowdown: 0.5 is out of range"),
    ("stop", {}, "s.yaml: script[0].clients: do: stop needs either clients: [ids] or fraction"),
    ("lie", {"fraction": 0.5}, "s.yaml: script[0].samples: do: lie needs samples"),
    ("impersonate", {"clients": ["c01"], "victim": "c01"}, "s.yaml: script[0].victim: 'c01' is one of the impostors"),
    ("flood", {"attacks": ["shout"]}, "s.yaml: script[0].attacks[0]: unknown attack 'shout'"),
])
def test_a_bad_step_names_the_step_the_field_and_what_is_allowed(do, fields, expected):
    assert refusal(do, **fields).startswith(expected)


def test_a_link_override_is_checked_by_the_link_presets_own_fields():
    parsed = step("link", fraction=0.5, link={"uplink_mbps": 0.1, "latency_ms": 800, "loss": 0.02})
    assert isinstance(parsed, LinkStep) and dict(parsed.link) == {"uplink_mbps": 0.1, "latency_ms": 800.0, "loss": 0.02}
    for key, bad in (("uplink_mbps", 0), ("latency_ms", -1), ("loss", 0.9), ("jitter_ms", 1e9)):
        bounds = fields_of(LinkSpec)[key][1]
        message = refusal("link", clients=["c01"], link={key: bad})
        assert message.startswith(f"s.yaml: script[0].link.{key}: ") and "out of range" in message
        assert str(bounds["le"]) in message.replace(",", "")
    assert refusal("link", clients=["c01"], link={"name": "x"}).startswith(
        "s.yaml: script[0].link.name: unknown key 'name' (allowed: downlink_mbps, uplink_mbps, latency_ms, "
        "jitter_ms, loss)")


def test_a_step_without_do_lists_the_actions():
    with pytest.raises(ConfigError, match=r"script\[0\]\.do: is required \(allowed: kill, stop, .*kill_aggregator\)"):
        from_data(tuple[Step, ...], [{"when": WHEN}], source="s.yaml", path="script")
    assert SlowStep(when=step("kill", clients=["c01"]).when, clients=("c01",), slowdown=2.0).slowdown == 2.0
