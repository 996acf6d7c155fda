"""The exit-policy registry: every registered policy builds, keeps the worker's interface and picks an exit;
the scenario language allows exactly the registered names. (What each policy picks: tests/test_emulation.py.)"""

import inspect
import subprocess
import sys

import pytest

from testbed.client.costs import DepthCost
from testbed.client.policies import POLICIES, DeviceModel, ExitPolicy, make_policy
from testbed.config import names
from testbed.config.convert import fields_of
from testbed.config.schema import ExitPolicySpec, LinkSpec
from testbed.emulation.link import LinkModel
from testbed.emulation.memory import MemoryBudget

EXITS = (2, 4, 6, 8)


def device(memory_limit_mb: float = 4096.0) -> DeviceModel:
    """Round time at depth d: 10 steps x 0.1 d s + d MB down at 80 Mbit/s + d MB up at 10 Mbit/s = 2 d s."""
    costs = {d: DepthCost(d, step_cpu_s=0.1 * d, peak_mb=200.0 + 50 * d, state_bytes=1_000_000 * d) for d in EXITS}
    link = LinkModel(LinkSpec(name="l", downlink_mbps=80.0, uplink_mbps=10.0, latency_ms=0.0), 0)
    memory = MemoryBudget(memory_limit_mb, {d: c.peak_mb for d, c in costs.items()})
    return DeviceModel(EXITS, costs, 1.0, link, memory, local_steps=10)


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_builds_keeps_the_interface_and_picks_an_exit(name):
    policy = make_policy(name, device(), max_exit=None, preferred=None, ema=0.5)
    assert isinstance(policy, ExitPolicy) and type(policy) is POLICIES[name] and policy.name == name
    for method in ("choose", "observe"):  # what the worker calls, with the base class's parameters
        assert inspect.signature(getattr(type(policy), method)) == inspect.signature(getattr(ExitPolicy, method))
    assert type(policy).choose is not ExitPolicy.choose
    for deadline_s in (1.0, 12.0, 1e6):
        depth = policy.choose(deadline_s)
        assert depth in EXITS
        policy.observe(depth, device().predicted(depth))  # timings as the worker measures them
        assert policy.choose(deadline_s, preferred=4) in EXITS
    cramped = make_policy(name, device(memory_limit_mb=460.0), None, None, 0.5)  # 200 + 50 d MiB fits d <= 4
    assert cramped.choose(1e6) in (2, 4)


def test_an_unknown_policy_lists_the_registered_ones():
    with pytest.raises(ValueError) as error:
        make_policy("greedy", device(), None, None, 0.5)
    assert str(error.value) == "unknown exit policy 'greedy' (allowed: static, budget, task, adaptive)"


def test_the_scenario_allows_exactly_the_registered_names():
    assert names.EXIT_POLICIES == tuple(POLICIES)
    assert fields_of(ExitPolicySpec)["name"][1]["choices"] == tuple(POLICIES)
    assert ExitPolicySpec().name in POLICIES
    for name, cls in POLICIES.items():
        assert cls.name == name and issubclass(cls, ExitPolicy) and cls.__doc__.startswith(f"`{name}`")


def test_the_config_imports_the_registry_without_torch():
    code = "import sys, testbed.config; print(sorted({'torch', 'zmq'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
