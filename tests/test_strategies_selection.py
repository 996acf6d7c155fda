"""Round rules (testbed.strategies.selection): who is asked, which updates are kept, when a round closes."""

import math

import numpy as np
import pytest

from testbed.strategies import STRATEGIES, make_strategy
from testbed.strategies.selection import Deadline, OverSelection, WaitForAll, round_rule

CLIENTS = [f"c{i:02d}" for i in range(10)]


def play_round(rule, selected: list[str], arrivals: list[tuple[str, float]]) -> tuple[list[str], float]:
    """The aggregator's loop of the module docstring, on updates arriving at given seconds.

    Returns the updates kept and the second the round closed (inf: it never would)."""
    kept: list[str] = []
    for client, elapsed_s in sorted(arrivals, key=lambda arrival: arrival[1]):
        if rule.deadline_s is not None and elapsed_s > rule.deadline_s:
            break  # the serve loop stopped polling at the deadline
        if rule.accept(len(kept), elapsed_s):
            kept.append(client)
        if rule.complete(selected, kept, elapsed_s):
            return kept, elapsed_s
    closed = math.inf if rule.deadline_s is None else rule.deadline_s
    assert closed == math.inf or rule.complete(selected, kept, closed)
    return kept, closed


# ---- WaitForAll ------------------------------------------------------------------------------

def test_wait_for_all_asks_everyone_and_keeps_everything():
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    rule = WaitForAll()
    assert rule.select(CLIENTS, rng) == CLIENTS and rng.bit_generator.state == before  # no draw
    assert rule.deadline_s is None and rule.accept(99, 1e9)
    arrivals = [("c00", 1.0), ("c01", 500.0), ("c02", 3600.0)]
    assert play_round(rule, CLIENTS[:3], arrivals) == (["c00", "c01", "c02"], 3600.0)
    assert not rule.complete(CLIENTS[:3], ["c00", "c01"], 1e9)


def test_duplicate_candidates_are_refused():
    with pytest.raises(ValueError, match=r"round candidates must be distinct client ids"):
        WaitForAll().select(["c00", "c01", "c00"], np.random.default_rng(0))


# ---- Deadline --------------------------------------------------------------------------------

def test_deadline_keeps_what_arrived_in_time():
    rule = Deadline(10.0)
    arrivals = [("c00", 2.0), ("c01", 9.5), ("c02", 10.5)]
    assert play_round(rule, CLIENTS[:3], arrivals) == (["c00", "c01"], 10.0)
    assert rule.accept(5, 10.0) and not rule.accept(0, 10.01)  # late: discarded, whatever came before


def test_deadline_closes_early_when_everyone_is_in():
    assert play_round(Deadline(10.0), CLIENTS[:2], [("c01", 3.0), ("c00", 4.0)]) == (["c01", "c00"], 4.0)
    assert not Deadline(10.0).complete(CLIENTS[:2], ["c00"], 9.99)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_deadline_must_be_positive_and_finite(bad):
    with pytest.raises(ValueError, match=r"deadline_s must be a finite number of seconds > 0"):
        Deadline(bad)


# ---- OverSelection ---------------------------------------------------------------------------

def test_over_selection_asks_ceil_k_times_factor_at_random_in_candidate_order():
    rule = OverSelection(WaitForAll(), k=4, factor=1.3)  # ceil(5.2) = 6
    first = rule.select(CLIENTS, np.random.default_rng(7))
    assert len(first) == 6 == len(set(first)) and set(first) <= set(CLIENTS)
    assert first == sorted(first, key=CLIENTS.index)
    assert rule.select(CLIENTS, np.random.default_rng(7)) == first  # seeded: deterministic
    rng = np.random.default_rng(7)
    rounds = [rule.select(CLIENTS, rng) for _ in range(30)]  # one generator across a run's rounds
    assert rounds[0] == first and len({tuple(chosen) for chosen in rounds}) > 1
    assert set().union(*rounds) == set(CLIENTS)  # nobody is left out for ever


def test_over_selection_count_is_not_fooled_by_float_rounding():
    assert 50 * 1.1 > 55  # 55.00000000000001
    candidates = [f"c{i:03d}" for i in range(100)]
    assert len(OverSelection(WaitForAll(), k=50, factor=1.1).select(candidates, np.random.default_rng(0))) == 55


def test_over_selection_takes_everyone_from_a_small_fleet_without_drawing():
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    assert OverSelection(WaitForAll(), k=4).select(CLIENTS[:5], rng) == CLIENTS[:5]  # ceil(5.2) > 5
    assert rng.bit_generator.state == before


def test_over_selection_keeps_the_first_k_updates():
    rule = OverSelection(Deadline(10.0), k=3, factor=2.0)
    selected = CLIENTS[:6]
    arrivals = [("c04", 1.0), ("c00", 2.0), ("c05", 4.0), ("c01", 5.0), ("c02", 6.0)]
    assert play_round(rule, selected, arrivals) == (["c04", "c00", "c05"], 4.0)
    assert [rule.accept(n, 1.0) for n in range(5)] == [True, True, True, False, False]  # surplus: discarded


def test_over_selection_still_honours_the_deadline():
    rule = OverSelection(Deadline(10.0), k=3, factor=2.0)
    arrivals = [("c04", 1.0), ("c00", 9.0), ("c05", 12.0)]
    assert play_round(rule, CLIENTS[:6], arrivals) == (["c04", "c00"], 10.0)
    assert rule.deadline_s == 10.0 and not rule.accept(0, 10.5)


def test_over_selection_completes_with_everyone_when_fewer_than_k_were_asked():
    rule = OverSelection(WaitForAll(), k=4)
    assert play_round(rule, CLIENTS[:2], [("c00", 1.0), ("c01", 2.0)]) == (["c00", "c01"], 2.0)
    assert not rule.complete(CLIENTS[:2], ["c00"], 1e9)


@pytest.mark.parametrize("k, factor, problem", [
    (0, 1.3, r"k \(updates a round needs\) must be an integer >= 1 \(got 0\)"),
    (2.5, 1.3, r"must be an integer >= 1 \(got 2\.5\)"),
    (True, 1.3, r"must be an integer >= 1 \(got True\)"),
    (3, 0.9, r"factor must be a finite number >= 1 \(got 0\.9\)"),
    (3, math.nan, r"factor must be a finite number >= 1"),
])
def test_over_selection_refuses_bad_settings(k, factor, problem):
    with pytest.raises(ValueError, match=problem):
        OverSelection(WaitForAll(), k=k, factor=factor)


# ---- the rule for a strategy -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_round_rule_follows_the_strategy(name):
    strategy = make_strategy(name)
    rule = round_rule(strategy, deadline_s=60.0)
    if name == "fedavg_full":
        assert isinstance(rule, WaitForAll) and not isinstance(rule, Deadline) and rule.deadline_s is None
    else:
        assert isinstance(rule, Deadline) and rule.deadline_s == 60.0
    over = round_rule(strategy, deadline_s=60.0, over_selection_k=2, factor=1.5)
    assert isinstance(over, OverSelection) and (over.k, over.factor) == (2, 1.5)
    assert type(over.inner) is type(rule) and over.deadline_s == rule.deadline_s
