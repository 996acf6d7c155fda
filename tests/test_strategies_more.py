"""The baselines (fedavg_drop, fedavg_min_depth, fedavg_hetero_naive, depthfl) and the
hooks every strategy shares, against hand-computed values on the 4-layer toy state of test_strategies."""

import tracemalloc

import numpy as np
import pytest
from test_strategies import (EMBED, HEADS, KEYS, about, head, layer, toy_state, trained_keys, two_depths, update,
                             value_of)

from testbed.config import names
from testbed.strategies import STRATEGIES, ClientUpdate, make_strategy
from testbed.strategies.fedavg_hetero_naive import HEAD_PREFIX

# ---- declarative attributes ------------------------------------------------------------------


def test_only_fedavg_full_waits_for_everyone():
    assert {name for name, cls in STRATEGIES.items() if cls.waits_for_all} == {"fedavg_full"}


def test_only_depthfl_imposes_a_client_loss():
    assert {name: cls.client_loss for name, cls in STRATEGIES.items() if cls.client_loss} == {
        "depthfl": "self_distill"}
    assert all(cls.client_loss is None or cls.client_loss in names.LOSSES for cls in STRATEGIES.values())


# ---- fedavg_drop -----------------------------------------------------------------------------

def test_fedavg_drop_is_fedavg_over_what_arrived():
    strategy = make_strategy("fedavg_drop")
    assert strategy.client_depth(0, 4) == 4  # everyone trains the full depth
    # n = 1 and 3, values 0 and 4: (1*0 + 3*4) / 4 = 3 on everything both trained
    new = strategy.aggregate(toy_state(), [update("c01", 1, 4, "keyword", 0.0),
                                          update("c02", 3, 4, "keyword", 4.0)])
    for key in [EMBED, *map(layer, range(1, 5)), head("keyword", 2), head("keyword", 4)]:
        assert value_of(new, key) == 3.0
    assert value_of(new, head("speaker", 4)) == -1.0


# ---- fedavg_min_depth ------------------------------------------------------------------------

def test_min_depth_forces_the_shallowest_cap_of_the_fleet():
    strategy = make_strategy("fedavg_min_depth")
    strategy.configure({"c01": 4, "c02": 2, "c03": 6}, exits=(2, 4, 6))
    assert strategy.client_depth(0, 6) == 2  # the announcement forces layer 2 on everybody
    assert strategy.client_depth(6, 6) == 2  # whatever the client would have picked


def test_min_depth_must_be_configured_first():
    with pytest.raises(RuntimeError, match=r"fedavg_min_depth: configure\(fleet_depths, exits\) must be called"):
        make_strategy("fedavg_min_depth").client_depth(0, 4)


def test_min_depth_rejects_a_cap_that_is_not_an_exit_and_an_empty_fleet():
    strategy = make_strategy("fedavg_min_depth")
    with pytest.raises(ValueError, match=r"client c02: depth cap 3 is not an exit \(allowed: 2, 4\)"):
        strategy.configure({"c01": 4, "c02": 3}, exits=(2, 4))
    with pytest.raises(ValueError, match=r"fleet is empty"):
        strategy.configure({}, exits=(2, 4))


def test_min_depth_averages_the_shared_layers_and_leaves_the_rest():
    strategy = make_strategy("fedavg_min_depth")
    strategy.configure({"c01": 2, "c02": 4}, exits=(2, 4))
    depth = strategy.client_depth(0, 4)
    new = strategy.aggregate(toy_state(), [update("c01", 1, depth, "keyword", 0.0),
                                          update("c02", 3, depth, "keyword", 4.0)])
    for key in (EMBED, layer(1), layer(2), head("keyword", 2)):
        assert value_of(new, key) == 3.0  # (1*0 + 3*4) / 4
    for key in (layer(3), layer(4), head("keyword", 4)):
        assert value_of(new, key) == -1.0


# ---- fedavg_hetero_naive ---------------------------------------------------------------------

def naive_round() -> list[ClientUpdate]:
    # global value -1 everywhere
    return [update("c01", 1, 2, "keyword", 1.0),   # layers 1-2, keyword head 2
            update("c02", 3, 4, "keyword", 8.0),   # layers 1-4, keyword heads 2 and 4
            update("c03", 4, 2, "speaker", 0.0)]   # layers 1-2, speaker head 2


def test_hetero_naive_counts_untrained_layers_as_the_global_value():
    state = toy_state()
    new = make_strategy("fedavg_hetero_naive").aggregate(state, naive_round())
    assert value_of(new, layer(1)) == (1 * 1.0 + 3 * 8.0 + 4 * 0.0) / 8  # = 3.125, all trained it
    assert value_of(new, layer(3)) == (1 * -1.0 + 3 * 8.0 + 4 * -1.0) / 8  # = 2.375, diluted by globals
    assert value_of(new, head("keyword", 2)) == (1 * 1.0 + 3 * 8.0) / 4  # = 6.25, keyword clients only
    assert value_of(new, head("keyword", 4)) == (1 * -1.0 + 3 * 8.0) / 4  # = 5.75: c01 adds the global
    assert value_of(new, head("speaker", 2)) == 0.0  # the only speaker client
    assert new[head("speaker", 4)] is state[head("speaker", 4)]  # nobody trained it: untouched


def test_hetero_naive_uses_the_global_array_itself():
    state = toy_state()
    shallow = update("c01", 1, 2, "keyword", 1.0)
    strategy = make_strategy("fedavg_hetero_naive")
    assert strategy.tensor_of(shallow, layer(3), state[layer(3)]) is state[layer(3)]
    assert strategy.tensor_of(shallow, layer(1), state[layer(1)]) is shallow.tensors[layer(1)]


def test_hetero_naive_memory_does_not_grow_with_the_clients_that_skipped_a_layer():
    shape = (256, 256)  # 256 KiB per float32 key
    backbone = lambda depth: [EMBED] + [layer(n) for n in range(1, depth + 1)]  # noqa: E731
    state = {key: np.zeros(shape, np.float32) for key in backbone(4)}
    updates = [ClientUpdate("deep", 1, 4, "keyword", {k: np.ones(shape, np.float32) for k in backbone(4)})]
    updates += [ClientUpdate(f"c{i:02d}", 1, 1, "keyword", {k: np.ones(shape, np.float32) for k in backbone(1)})
                for i in range(12)]
    tracemalloc.start()
    try:
        new = make_strategy("fedavg_hetero_naive").aggregate(state, updates)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    key_bytes = state[EMBED].nbytes
    # the new state (5 keys) + one float64 accumulator and scratch (2 keys' worth each) + slack;
    # a copy of the global per skipping client would add 12 keys' worth on layers 2-4
    assert peak < 5 * key_bytes + 4 * key_bytes + key_bytes
    assert value_of(new, layer(2)) == pytest.approx(1 / 13)  # one trained (1), twelve kept the global (0)


# ---- depthfl ---------------------------------------------------------------------------------

def test_depthfl_is_an_unweighted_partial_mean():
    updates = [update("c01", 1, 2, "keyword", 1.0),
               update("c02", 3, 4, "keyword", 8.0),
               update("c03", 100, 2, "speaker", 0.0)]  # many samples, yet it counts once
    new = make_strategy("depthfl").aggregate(toy_state(), updates)
    assert value_of(new, layer(1)) == about((1.0 + 8.0 + 0.0) / 3)  # = 3
    assert value_of(new, layer(3)) == 8.0  # only c02 trained it
    assert value_of(new, head("keyword", 2)) == (1.0 + 8.0) / 2  # = 4.5, keyword clients only
    assert value_of(new, head("speaker", 2)) == 0.0
    assert value_of(new, head("speaker", 4)) == -1.0


# ---- depth_aware, both weightings, by hand ---------------------------------------------------

@pytest.mark.parametrize("weighting, expected", [
    ("samples_depth", (1 * 2 * 1.0 + 3 * 4 * 8.0) / (1 * 2 + 3 * 4)),  # n_k L_k: 98 / 14 = 7
    ("samples", (1 * 1.0 + 3 * 8.0) / (1 + 3)),                        # n_k: 25 / 4 = 6.25
])
def test_depth_aware_weightings_by_hand(weighting, expected):
    new = make_strategy("depth_aware", weighting).aggregate(toy_state(), two_depths())
    for key in (EMBED, layer(1), layer(2), head("keyword", 2)):
        assert value_of(new, key) == expected
    assert value_of(new, layer(4)) == 8.0


# ---- every strategy --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_heads_are_averaged_per_task(name):
    updates = [update("c01", 1, 4, "keyword", 1.0), update("c02", 2, 4, "keyword", 1.0),
               update("c03", 5, 4, "speaker", 8.0)]
    new = make_strategy(name).aggregate(toy_state(), updates)
    for exit_layer in (2, 4):
        assert value_of(new, head("keyword", exit_layer)) == 1.0  # the speaker client never counts
        assert value_of(new, head("speaker", exit_layer)) == 8.0


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_float32_in_float32_out(name):
    state = toy_state(dtype=np.float32)
    new = make_strategy(name).aggregate(state, [update("c01", 1, 4, "keyword", 0.1, np.float32),
                                                update("c02", 1, 4, "speaker", 0.3, np.float32)])
    assert all(new[key].dtype == np.float32 for key in KEYS)
    assert value_of(new, EMBED) == about((np.float64(np.float32(0.1)) + np.float64(np.float32(0.3))) / 2)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_configure_is_accepted_by_every_strategy(name):
    strategy = make_strategy(name)
    strategy.configure({"c01": 2, "c02": 4}, exits=(2, 4))
    forced = {"fedavg_full": 4, "fedavg_drop": 4, "fedavg_min_depth": 2}  # the others let the client pick (0)
    assert strategy.client_depth(0, 4) == forced.get(name, 0)


def test_head_prefix_matches_the_model_key_naming():
    from testbed.model.state import group_of  # imports torch: only here

    for key in [*HEADS, EMBED, *(layer(n) for n in range(1, 5)), *trained_keys(4, "speaker")]:
        assert key.startswith(HEAD_PREFIX) == (group_of(key).kind == "head"), key
