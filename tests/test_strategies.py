"""Pure strategy tests with hand-computed expectations on a 4-layer toy state."""

import subprocess
import sys

import numpy as np
import pytest

from testbed.config import names
from testbed.strategies import STRATEGIES, WEIGHTINGS, ClientUpdate, make_strategy
from testbed.strategies.server_step import ServerStep

EMBED = "backbone.feature_projection.projection.weight"  # depth 0: every client trains it
LAYERS = 4


def layer(n: int) -> str:
    """Key of transformer layer n (1-based), as the real state dict spells it (0-based)."""
    return f"backbone.encoder.layers.{n - 1}.attention.k_proj.weight"


def head(task: str, exit_layer: int) -> str:
    return f"heads.{task}_{exit_layer}.linear.weight"


HEADS = [head(task, e) for task in ("keyword", "speaker") for e in (2, 4)]
KEYS = [EMBED] + [layer(n) for n in range(1, LAYERS + 1)] + HEADS


def toy_state(value: float = -1.0, dtype=np.float32) -> dict[str, np.ndarray]:
    return {key: np.full((2, 3), value, dtype=dtype) for key in KEYS}


def trained_keys(depth: int, task: str) -> list[str]:
    """What a client uploads: embed + layers <= depth + its task's heads <= depth."""
    return ([EMBED] + [layer(n) for n in range(1, depth + 1)]
            + [head(task, e) for e in (2, 4) if e <= depth])


def update(client: str, samples: int, depth: int, task: str, value: float, dtype=np.float32) -> ClientUpdate:
    tensors = {key: np.full((2, 3), value, dtype=dtype) for key in trained_keys(depth, task)}
    return ClientUpdate(client, samples, depth, task, tensors)


# float32 averages carry about one rounding per element (testbed.strategies.base._average); when the
# clients' values are far apart, as in these toy states, up to two float32 units in the last place
F32_ROUNDING = 2 * 2.0**-23


def about(expected: float):
    return pytest.approx(expected, rel=F32_ROUNDING, abs=0)


def value_of(state: dict, key: str) -> float:
    """The single value a toy array holds (asserts that it is uniform)."""
    array = state[key]
    assert np.all(array == array.flat[0]), key
    return float(array.flat[0])


# ---- fedavg_full ----------------------------------------------------------------------------

def test_fedavg_full_averages_by_samples():
    # n = 1 and 3, values 0 and 4: (1*0 + 3*4) / 4 = 3 on every key both trained
    updates = [update("c01", 1, 4, "keyword", 0.0), update("c02", 3, 4, "keyword", 4.0)]
    new = make_strategy("fedavg_full").aggregate(toy_state(), updates)
    for key in [EMBED, *map(layer, range(1, 5)), head("keyword", 2), head("keyword", 4)]:
        assert value_of(new, key) == 3.0
    assert value_of(new, head("speaker", 2)) == -1.0  # no speaker client: global value kept


def test_client_depth_rules():
    for name in ("fedavg_full", "fedavg_drop"):
        assert make_strategy(name).client_depth(2, 12) == 12  # Homo-FL forces full depth
        assert make_strategy(name).client_depth(0, 8) == 8
    for name in ("depth_aware", "layerwise", "fedavg_hetero_naive", "depthfl"):
        assert make_strategy(name).client_depth(6, 12) == 6  # the client's own choice
        assert make_strategy(name).client_depth(0, 12) == 0  # 0 = let the client decide


# ---- depth_aware (the paper) -----------------------------------------------------------------

def two_depths() -> list[ClientUpdate]:
    # shallow: n=1, L=2, value 1 -> weight 2; deep: n=3, L=4, value 8 -> weight 12
    return [update("c01", 1, 2, "keyword", 1.0), update("c02", 3, 4, "keyword", 8.0)]


def test_depth_aware_weights_by_samples_times_depth():
    new = make_strategy("depth_aware").aggregate(toy_state(), two_depths())
    shared = (1 * 2 * 1.0 + 3 * 4 * 8.0) / (1 * 2 + 3 * 4)  # = 98 / 14 = 7
    assert shared == 7.0
    for key in (EMBED, layer(1), layer(2), head("keyword", 2)):
        assert value_of(new, key) == shared
    for key in (layer(3), layer(4), head("keyword", 4)):  # only the deep client trained these
        assert value_of(new, key) == 8.0


def test_samples_weighting_is_layerwise():
    # layerwise by hand: (1*1 + 3*8) / 4 = 6.25 on layers 1-2; layers 3-4 from the deep client only
    layerwise = make_strategy("layerwise").aggregate(toy_state(), two_depths())
    assert value_of(layerwise, layer(1)) == 6.25 and value_of(layerwise, layer(4)) == 8.0
    rng = np.random.default_rng(0)
    state = {key: rng.standard_normal((2, 3)).astype(np.float32) for key in KEYS}
    updates = [ClientUpdate(f"c{i:02d}", int(rng.integers(1, 50)), depth, task,
                            {key: rng.standard_normal((2, 3)).astype(np.float32)
                             for key in trained_keys(depth, task)})
               for i, (depth, task) in enumerate([(2, "keyword"), (4, "speaker"), (3, "keyword"), (4, "keyword")])]
    by_samples = make_strategy("depth_aware", weighting="samples").aggregate(state, updates)
    plain = make_strategy("layerwise").aggregate(state, updates)
    depth_weighted = make_strategy("depth_aware").aggregate(state, updates)
    assert all(np.array_equal(by_samples[key], plain[key]) for key in KEYS)
    assert not np.allclose(depth_weighted[layer(1)], plain[layer(1)])  # the depth factor matters


def test_heads_are_averaged_only_over_clients_of_their_task():
    updates = [update("c01", 2, 2, "keyword", 1.0),   # weight 4
               update("c02", 1, 4, "keyword", 5.0),   # weight 4
               update("c03", 3, 4, "speaker", 8.0)]   # weight 12
    new = make_strategy("depth_aware").aggregate(toy_state(), updates)
    assert value_of(new, head("keyword", 2)) == (4 * 1.0 + 4 * 5.0) / 8  # = 3, no speaker client in it
    assert value_of(new, head("keyword", 4)) == 5.0
    assert value_of(new, head("speaker", 2)) == value_of(new, head("speaker", 4)) == 8.0
    assert value_of(new, layer(1)) == about((4 * 1.0 + 4 * 5.0 + 12 * 8.0) / 20)  # = 6, backbone is shared


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_layer_nobody_trained_keeps_its_global_value(name):
    state = toy_state()
    before = {key: value.tobytes() for key, value in state.items()}
    updates = [update("c01", 5, 2, "keyword", 1.0), update("c02", 7, 2, "keyword", 2.0)]
    new = make_strategy(name).aggregate(state, updates)
    assert set(new) == set(state) and new is not state
    for key in (layer(3), layer(4), head("keyword", 4), *(h for h in HEADS if "speaker" in h)):
        assert new[key] is state[key] and new[key].tobytes() == before[key]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_weights_sum_to_one(name, weighting):
    strategy = make_strategy(name, weighting)
    updates = two_depths() + [update("c03", 4, 3, "speaker", 0.0)]
    for key in KEYS:
        pairs = strategy.normalised_weights(key, updates)
        if pairs:
            assert sum(w for _, w in pairs) == pytest.approx(1.0, abs=1e-12)
            assert all(w > 0 for _, w in pairs)
    # layer 3: c02 and c03 trained it; hetero_naive also counts c01 (its untrained layer 3 = the global)
    expected = ["c01", "c02", "c03"] if name == "fedavg_hetero_naive" else ["c02", "c03"]
    assert [u.client for u, _ in strategy.normalised_weights(layer(3), updates)] == expected


def test_zero_sample_contributors_leave_the_key_alone():
    state = toy_state()
    new = make_strategy("depth_aware").aggregate(state, [update("c01", 0, 2, "keyword", 9.0)])
    assert new[layer(1)] is state[layer(1)]


# ---- numerics and input handling -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_dtype_is_preserved(dtype):
    new = make_strategy("depth_aware").aggregate(toy_state(dtype=dtype), [
        update("c01", 1, 2, "keyword", 1.0, dtype), update("c02", 3, 4, "keyword", 8.0, dtype)])
    assert all(new[key].dtype == dtype for key in KEYS)
    assert value_of(new, layer(1)) == 7.0


def test_integer_buffers_are_rounded_not_truncated():
    state = {"backbone.encoder.layers.0.counter": np.zeros(1, dtype=np.int64)}
    updates = [ClientUpdate("c01", 1, 1, "keyword", {"backbone.encoder.layers.0.counter": np.array([1])}),
               ClientUpdate("c02", 2, 1, "keyword", {"backbone.encoder.layers.0.counter": np.array([2])})]
    new = make_strategy("layerwise").aggregate(state, updates)  # (1 + 4) / 3 = 1.67 -> 2
    assert new["backbone.encoder.layers.0.counter"].dtype == np.int64
    assert new["backbone.encoder.layers.0.counter"][0] == 2


def test_identical_updates_are_a_fixed_point():
    rng = np.random.default_rng(1)
    weights = {key: rng.standard_normal((4, 5)).astype(np.float32) for key in KEYS}
    updates = [ClientUpdate(f"c{i}", n, 4, "keyword", {k: weights[k] for k in trained_keys(4, "keyword")})
               for i, n in enumerate((3, 17, 101))]
    state = {key: np.zeros((4, 5), np.float32) for key in KEYS}
    new = make_strategy("depth_aware").aggregate(state, updates)
    assert all(np.array_equal(new[k], weights[k]) for k in trained_keys(4, "keyword"))


def test_small_steps_are_averaged_as_a_float64_sum_rounded_once():
    # what a round looks like: every client a small step away from the same weights, many weights
    # (several blocks), different weights per client
    rng = np.random.default_rng(2)
    start = rng.standard_normal(300_000).astype(np.float32)
    arrays = [start + np.float32(1e-3) * rng.standard_normal(start.size).astype(np.float32) for _ in range(7)]
    samples = [5, 40, 17, 300, 1, 64, 8]
    updates = [ClientUpdate(f"c{i}", n, 4, "keyword", {EMBED: a}) for i, (n, a) in enumerate(zip(samples, arrays))]
    new = make_strategy("layerwise").aggregate({EMBED: start}, updates)[EMBED]
    exact = sum(n * a.astype(np.float64) for n, a in zip(samples, arrays)) / sum(samples)
    assert new.dtype == np.float32
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    steps = max(float(np.max(np.abs(a - arrays[0]))) for a in arrays)  # the steps are summed in float32
    assert np.all(np.abs(new - exact) <= spacing + 8 * 2.0**-24 * steps)  # one rounding + the steps' own
    assert np.mean(new == exact.astype(np.float32)) > 0.99  # and almost always the nearest float32
    reference = sum(np.float32(n / sum(samples)) * a for n, a in zip(samples, arrays))  # float32, by hand
    assert np.mean(np.abs(new - exact)) < 0.75 * np.mean(np.abs(reference - exact))  # optimal: ~0.5


def test_read_only_inputs_are_accepted_and_not_mutated():
    state = toy_state()
    updates = two_depths()
    for array in [*state.values(), *(a for u in updates for a in u.tensors.values())]:
        array.flags.writeable = False  # as if they were views of received network buffers
    snapshot = [a.tobytes() for u in updates for a in u.tensors.values()]
    global_snapshot = {k: v.tobytes() for k, v in state.items()}
    new = make_strategy("depth_aware").aggregate(state, updates)
    assert value_of(new, layer(1)) == 7.0
    assert [a.tobytes() for u in updates for a in u.tensors.values()] == snapshot
    assert {k: v.tobytes() for k, v in state.items()} == global_snapshot


def test_empty_updates_leave_the_state_unchanged():
    state = toy_state()
    new = make_strategy("depth_aware").aggregate(state, [])
    assert new is not state and all(new[key] is state[key] for key in KEYS)


def test_unknown_key_raises():
    bad = update("c01", 1, 2, "keyword", 1.0)
    tensors = dict(bad.tensors, **{"backbone.encoder.layers.7.attention.k_proj.weight": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"c01: unknown state key 'backbone\.encoder\.layers\.7"):
        make_strategy("layerwise").aggregate(toy_state(), [ClientUpdate("c01", 1, 2, "keyword", tensors)])


def test_wrong_shape_raises():
    tensors = dict(update("c01", 1, 2, "keyword", 1.0).tensors, **{layer(1): np.zeros((3, 2), np.float32)})
    with pytest.raises(ValueError, match=r"shape \(3, 2\), expected \(2, 3\)"):
        make_strategy("depth_aware").aggregate(toy_state(), [ClientUpdate("c01", 1, 2, "keyword", tensors)])


# ---- registry --------------------------------------------------------------------------------

def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        make_strategy("fedprox")
    assert str(error.value) == ("unknown strategy 'fedprox' (allowed: depth_aware, depthfl, fedavg_drop, "
                                "fedavg_full, fedavg_hetero_naive, fedavg_min_depth, layerwise)")


def test_unknown_weighting_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown weighting 'depth' \(allowed: samples, samples_depth\)"):
        make_strategy("depth_aware", weighting="depth")


def test_registry_matches_the_config_names():
    assert tuple(STRATEGIES) == names.STRATEGIES  # every name the scenario language allows is implemented
    assert set(WEIGHTINGS) == set(names.WEIGHTINGS)
    for name, cls in STRATEGIES.items():
        assert cls.name == name and cls.cites and sys.modules[cls.__module__].__doc__


def test_strategies_import_neither_zmq_nor_torch():
    code = "import sys, testbed.strategies; print(sorted({'zmq', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- the server step ------------------------------------------------------------------------
def test_the_plain_server_step_returns_the_strategys_average_itself():
    averaged = make_strategy("depth_aware").aggregate(toy_state(), [update("c0", 10, 4, "keyword", 1.0)])
    assert ServerStep(1.0, 0.0).apply(toy_state(), averaged) is averaged


def test_the_server_step_scales_the_pseudo_gradient_and_keeps_the_velocity_of_keys_nobody_trained():
    step = ServerStep(learning_rate=2.0, momentum=0.5)
    strategy = make_strategy("depth_aware")
    state = toy_state(0.0)
    state["backbone.masked_spec_embed_count"] = np.array([3])  # an integer buffer: takes the average as it is
    # round 1: a depth-2 client moves the embedding and layers 1-2 to 1.0: Δ = 1, v = 1, θ = 0 + 2 × 1 = 2
    state = step.apply(state, strategy.aggregate(state, [update("c0", 10, 2, "keyword", 1.0)]))
    assert value_of(state, EMBED) == 2.0 and value_of(state, layer(2)) == 2.0
    assert value_of(state, layer(3)) == 0.0 and layer(3) not in step.velocity  # nobody trained it
    assert int(state["backbone.masked_spec_embed_count"][0]) == 3
    # round 2: a depth-4 client uploads 3.0: Δ = 1 and v = 0.5 × 1 + 1 = 1.5 where round 1 moved, θ = 2 + 3 = 5;
    # layers 3-4 move for the first time: Δ = 3, v = 3, θ = 0 + 6
    state = step.apply(state, strategy.aggregate(state, [update("c1", 10, 4, "keyword", 3.0)]))
    assert value_of(state, EMBED) == 5.0 and value_of(step.velocity, EMBED) == 1.5
    assert value_of(state, layer(4)) == 6.0 and value_of(step.velocity, layer(4)) == 3.0
    # round 3: only a depth-2 client, which leaves layers 3-4 and their velocity as they were
    velocity_4 = step.velocity[layer(4)]
    state = step.apply(state, strategy.aggregate(state, [update("c0", 10, 2, "keyword", 5.0)]))
    assert value_of(state, layer(4)) == 6.0 and step.velocity[layer(4)] is velocity_4


def test_a_server_step_that_overshoots_to_infinity_fails_naming_the_key_and_the_cure():
    step = ServerStep(learning_rate=10.0, momentum=0.0)
    state = toy_state(0.0)
    averaged = {**state, EMBED: np.full((2, 3), 1e38, dtype=np.float32)}
    with pytest.raises(ValueError, match=f"server step diverged: {EMBED} is no longer finite.*1 and 0 are FedAvg"):
        step.apply(state, averaged)


@pytest.mark.parametrize("rate, momentum, problem", [(0.0, 0.0, "learning rate 0.0: allowed a finite number > 0"),
                                                     (1.0, 1.0, "momentum 1.0: allowed 0 <= momentum < 1")])
def test_the_server_step_refuses_rates_it_cannot_apply(rate, momentum, problem):
    with pytest.raises(ValueError, match=problem):
        ServerStep(rate, momentum)
