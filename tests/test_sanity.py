"""UpdateScreen on hand-made updates: non-finite values, wrong shapes, outsized steps, warm-up, a reference no
client can poison, counters."""

import numpy as np
import pytest

from testbed.aggregator.sanity import CHECKS, CHUNK, ScreenLimits, UpdateScreen, check_of

STEP = 1e-3  # per-parameter RMS of an honest update in these tests (parameter units)


def layer_of(key: str) -> str:
    return key.split(".")[0]


@pytest.fixture
def global_state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"layer1.weight": rng.normal(0, 0.05, (64, 32)).astype(np.float32),
            "layer1.bias": rng.normal(0, 0.05, 32).astype(np.float32),
            "head.weight": rng.normal(0, 0.05, (10, 32)).astype(np.float32),
            "layer1.steps": np.array(7, np.int64)}


def moved(global_state: dict, scale: float = 1.0, seed: int = 1, keys=None) -> dict[str, np.ndarray]:
    """An update: every float tensor (or only `keys`) moved by scale × a random honest step."""
    rng = np.random.default_rng(seed)
    update = {}
    for key, array in global_state.items():
        if array.dtype.kind == "f" and (keys is None or key in keys):
            array = (array + scale * rng.normal(0, STEP, array.shape)).astype(array.dtype)
        update[key] = array.copy()
    return update


def decide(screen: UpdateScreen, update: dict, global_state: dict, client: str = "c00") -> str | None:
    """As the aggregator does with an update that passes its other checks: admit it when it passes, else refuse."""
    screening = screen.screen(update, global_state)
    if screening.reason is None:
        screen.admit(client, screening.norms)
    else:
        screen.refuse(screening.reason)
    return screening.reason


def warmed_up(global_state: dict, updates: int = 5) -> UpdateScreen:
    """A screen past its warm-up: one honest update from each of `updates` clients admitted."""
    screen = UpdateScreen(layer_of)
    for seed in range(updates):
        assert decide(screen, moved(global_state, seed=100 + seed), global_state, client=f"c{seed:02d}") is None
    return screen


def test_a_normal_update_is_accepted_and_becomes_its_clients_reference(global_state):
    screen = UpdateScreen(layer_of)
    update = moved(global_state)
    screening = screen.screen(update, global_state)
    expected = np.sqrt(sum(np.sum((update[k].astype(np.float64) - global_state[k]) ** 2)
                           for k in ("layer1.weight", "layer1.bias")))
    assert screening.reason is None and screening.norms["layer1"] == pytest.approx(expected, rel=1e-9)
    assert screen.references == {} and screen.counts() == {"accepted": 0, "rejected": {}}  # screening records nothing
    screen.admit("c07", screening.norms)
    assert set(screen.references) == {"layer1", "head"}
    assert screen.references["layer1"] == {"c07": pytest.approx(expected, rel=1e-9)}
    assert screen.counts() == {"accepted": 1, "rejected": {}}


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_values_are_rejected(global_state, bad, word):
    screen = warmed_up(global_state)
    update = moved(global_state)
    update["layer1.weight"][3, 4] = bad
    reason = screen.screen(update, global_state).reason
    assert reason == f"non_finite: 'layer1.weight' holds {word} (allowed: finite values)"
    assert check_of(reason) == "non_finite"


def test_a_nan_beyond_the_first_chunk_is_found(global_state):
    big = {"layer1.weight": np.zeros(CHUNK * 2 + 7, np.float32)}
    update = {"layer1.weight": big["layer1.weight"].copy()}
    update["layer1.weight"][CHUNK * 2 + 3] = np.nan
    assert check_of(UpdateScreen(layer_of).screen(update, big).reason) == "non_finite"


def test_the_norm_spans_chunks_exactly():
    rng = np.random.default_rng(3)
    reference = {"w": rng.normal(0, 0.05, CHUNK * 3 + 11).astype(np.float32)}
    update = {"w": (reference["w"] + rng.normal(0, STEP, reference["w"].size)).astype(np.float32)}
    screening = UpdateScreen().screen(update, reference)
    exact = np.linalg.norm(update["w"].astype(np.float64) - reference["w"])
    assert screening.reason is None
    assert screening.norms["w"] == pytest.approx(exact, rel=1e-7)  # each difference rounded to float32


@pytest.mark.parametrize("key, array, reason", [
    ("layer1.weight", np.zeros((32, 64), np.float32), "shape: 'layer1.weight' is [32, 64], expected [64, 32]"),
    ("layer1.weight", np.zeros((64, 32), np.float16), "dtype: 'layer1.weight' is float16, expected float32"),
    ("layer9.weight", np.zeros(3, np.float32), "unknown_tensor: 'layer9.weight' is not a tensor of the global model"),
])
def test_wrong_shapes_dtypes_and_names_are_rejected(global_state, key, array, reason):
    screen = UpdateScreen(layer_of)
    update = moved(global_state)
    update[key] = array
    assert screen.screen(update, global_state).reason == reason


def test_a_step_1000_times_the_fleet_median_is_rejected(global_state):
    screen = warmed_up(global_state)
    references = {group: dict(norms) for group, norms in screen.references.items()}
    reason = decide(screen, moved(global_state, scale=1000, keys={"head.weight"}), global_state, client="c09")
    assert reason.startswith("norm: group 'head' moved ") and "10 x median" in reason
    assert "over 5 clients" in reason
    allowed = float(reason.split("allowed ")[1].split(" ")[0])
    assert allowed == pytest.approx(10 * np.median(list(references["head"].values())), rel=1e-3)
    assert screen.references == references  # rejected: not recorded
    assert decide(screen, moved(global_state, scale=3, seed=9), global_state) is None  # a larger honest step passes


def test_the_group_furthest_beyond_its_bound_is_named(global_state):
    screen = warmed_up(global_state)
    update = moved(global_state, scale=20, keys={"head.weight"})
    update["layer1.weight"] = moved(global_state, scale=1000, keys={"layer1.weight"})["layer1.weight"]
    assert screen.screen(update, global_state).reason.startswith("norm: group 'layer1' ")


def test_warm_up_uses_the_global_norm_then_the_fleet_median(global_state):
    screen = UpdateScreen(layer_of, ScreenLimits(warmup=3))
    absurd = {**global_state, "head.weight": global_state["head.weight"] * 1e4}
    reason = decide(screen, absurd, global_state)
    assert reason.startswith("norm: group 'head' moved ") and "warm-up (0 of 3 clients) max(10 x global norm" in reason
    # no reference yet: a step 50x the honest one is within 10x the group's own norm, so it passes ...
    assert decide(screen, moved(global_state, scale=50, seed=2), global_state, client="c00") is None
    assert decide(screen, moved(global_state, seed=3), global_state, client="c01") is None
    assert decide(screen, moved(global_state, seed=4), global_state, client="c02") is None
    # ... but once three clients are in (median of 50x, 1x, 1x = 1x), the same step is 50x the median
    assert "x median" in decide(screen, moved(global_state, scale=50, seed=5), global_state, client="c03")


def test_a_group_the_fleet_leaves_alone_still_allows_float_noise(global_state):
    screen = UpdateScreen(layer_of)
    for client in ("c00", "c01", "c02"):  # the head never moves
        assert decide(screen, moved(global_state, keys={"layer1.weight"}), global_state, client) is None
    assert decide(screen, moved(global_state, scale=1e-3, keys={"head.weight"}), global_state) is None
    assert "1e-05 x sqrt(320)" in decide(screen, moved(global_state, scale=10, keys={"head.weight"}), global_state)


def test_integer_tensors_are_checked_for_shape_only(global_state):
    screen = warmed_up(global_state)
    update = moved(global_state)
    update["layer1.steps"] = np.array(10**12, np.int64)
    assert screen.screen(update, global_state).reason is None


def test_float16_updates_are_screened_in_float32_and_float64():
    reference = {"w": np.full(100, 60000, np.float16)}  # -60000 - 60000 overflows float16 to -Inf
    screening = UpdateScreen().screen({"w": np.full(100, -60000, np.float16)}, reference)
    assert screening.reason is None  # within 10x its own norm
    assert screening.norms["w"] == pytest.approx(120000 * 10)


def test_a_finite_step_too_large_for_float32_is_a_norm_rejection_not_a_non_finite_one():
    reference = {"w": np.full(4, 3e38, np.float32)}
    reason = UpdateScreen().screen({"w": np.full(4, -3e38, np.float32)}, reference).reason
    assert reason.startswith("norm: group 'w' moved inf (L2)")


def test_counters_per_check(global_state):
    screen = warmed_up(global_state, updates=3)
    nan = moved(global_state)
    nan["head.weight"][0, 0] = np.nan
    bad_shape = {**moved(global_state), "head.weight": np.zeros((32, 10), np.float32)}
    for update in (nan, nan, bad_shape, moved(global_state, scale=1000), moved(global_state, seed=7)):
        decide(screen, update, global_state)
    screen.screen(moved(global_state, seed=8), global_state)  # screened, then discarded by the round: not counted
    screen.refuse("samples: claimed 4611686018427387904 clips, allowed 1..24")  # the aggregator's own check
    assert screen.counts() == {"accepted": 4, "rejected": {"non_finite": 2, "norm": 1, "samples": 1, "shape": 1}}
    assert set(screen.rejected) <= set(CHECKS)


@pytest.mark.parametrize("limits", [dict(median_ratio=0.5), dict(warmup=0), dict(warmup=10, window=5),
                                    dict(fallback_rms=0), dict(noise_rms=0)])
def test_limits_out_of_range_are_refused(limits):
    with pytest.raises(ValueError, match="screen limits"):
        ScreenLimits(**limits)


# ---------------------------------------------------------------- a reference no client can poison
def test_updates_screened_but_never_admitted_cannot_move_the_reference(global_state):
    screen = warmed_up(global_state, updates=3)
    references = {group: dict(norms) for group, norms in screen.references.items()}
    for seed in range(4):  # tiny steps that pass the screen, then are dropped by the aggregator's other checks
        screening = screen.screen(moved(global_state, scale=1e-4, seed=200 + seed), global_state)
        assert screening.reason is None
        screen.refuse("samples: claimed 4611686018427387904 clips, allowed 1..24")
    assert screen.references == references
    assert decide(screen, moved(global_state, seed=9), global_state, client="c05") is None  # honest: still accepted


def test_one_client_cannot_form_the_median_alone(global_state):
    screen = UpdateScreen(layer_of)
    for seed in range(3):  # one client's three accepted tiny steps: one reference, still warming up
        assert decide(screen, moved(global_state, scale=1e-4, seed=200 + seed), global_state, client="c01") is None
    assert {group: list(norms) for group, norms in screen.references.items()} == {"layer1": ["c01"], "head": ["c01"]}
    assert decide(screen, moved(global_state, seed=9), global_state, client="c02") is None  # honest: accepted
    absurd = screen.screen(moved(global_state, scale=1e5, seed=9), global_state).reason
    assert "warm-up (2 of 3 clients)" in absurd  # two clients so far: the median rule waits for a third


def test_the_median_is_over_clients_their_latest_admitted_norm_each(global_state):
    screen = UpdateScreen(layer_of, ScreenLimits(warmup=2, window=3))
    for seed, (client, scale) in enumerate((("c00", 1.0), ("c01", 1.0), ("c00", 1e-4), ("c00", 1e-4), ("c02", 1.0))):
        assert decide(screen, moved(global_state, scale=scale, seed=seed), global_state, client) is None
    assert list(screen.references["layer1"]) == ["c01", "c00", "c02"]  # one each, the latest admitted last
    assert screen.references["layer1"]["c00"] < 1e-3 * screen.references["layer1"]["c01"]  # c00's latest: tiny
    decide(screen, moved(global_state, seed=3), global_state, client="c03")  # a fourth client: c01 leaves the window
    assert list(screen.references["layer1"]) == ["c00", "c02", "c03"]
