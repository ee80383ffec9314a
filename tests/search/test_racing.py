"""The racing rule, proved by simulation (no training): values with known true effects and
noise go through the same `judge` the stages use."""

import random

import pytest

from asl_sweep.search.racing import (
    RaceRule,
    conditional_power,
    confidence,
    judge,
    looks,
    simulate,
)

DEFAULT = RaceRule()  # what `confirm: {}` races with (settings.spec.ConfirmConfig)


def test_the_shipped_defaults_meet_their_goals():
    # 2,000 races a scenario; the README's table (benchmarks/racing.py) runs 20,000.
    null = simulate([0.0], 0.02, DEFAULT, runs=2000, seed=1)
    power = simulate([0.03], 0.02, DEFAULT, runs=2000, seed=2)
    assert null.adopted_any <= 0.05  # a candidate with no true gain: adopted at most 5%
    assert power.adopted_best >= 0.80  # a true +3 pt at a 2 pt spread: adopted at least 80%
    clear = simulate([-0.10], 0.02, DEFAULT, runs=500, seed=3)
    assert clear.adopted_any == 0 and clear.mean_rounds < 2.5  # mostly dropped at the first look


def test_accuracies_that_count_images_keep_the_promise_with_their_rounding():
    """On 60 validation images an accuracy moves in steps of 1/60; two repeats agree to the
    image often enough that, with the spread they show (0), a candidate with no true gain was
    adopted about 8% of the time. Counting the rounding's variance (step^2 / 12) in the
    spread brings it under 5%, and a true +10 pt gain is still found."""
    step = 1 / 60
    bare = simulate([0.0], 0.03, DEFAULT, runs=2000, seed=6, step=step, rounding=False)
    counted = simulate([0.0], 0.03, DEFAULT, runs=2000, seed=6, step=step)
    assert bare.adopted_any > 0.06 and counted.adopted_any <= 0.05
    assert simulate([0.10], 0.03, DEFAULT, runs=300, seed=7, step=step).adopted_best > 0.95


def test_a_clear_gain_is_adopted_at_the_first_look_and_a_tie_is_dropped_as_futile():
    sure = simulate([0.10], 0.02, DEFAULT, runs=300, seed=4)
    assert sure.adopted_best > 0.95 and sure.mean_rounds < 3.6
    # No evidence either way: without the futility rule it keeps looking, up to 6 rounds;
    # with it, a tie is dropped after two or three, at no cost in false adoptions.
    endless = simulate([0.0], 0.02, RaceRule(futility=0.0), runs=300, seed=5)
    assert endless.mean_rounds > 4.5
    tie = simulate([0.0], 0.02, DEFAULT, runs=300, seed=5)
    assert tie.mean_rounds < 3.0 and tie.adopted_any <= endless.adopted_any


def test_conditional_power_follows_the_trend():
    rule = RaceRule(max_repeats=6, futility=0.05)
    # A gain that shows already: its trend would be adopted at the last look.
    assert conditional_power([0.03, 0.028, 0.035], 1, rule) > 0.9
    # A tie with noise: no trend to follow, so hopeless.
    assert conditional_power([0.01, -0.012, 0.004], 1, rule) < 0.05
    # At max_repeats nothing is left to predict; two identical repeats are certain.
    assert conditional_power([0.0] * 6, 1, rule) == 1.0
    assert conditional_power([0.02, 0.02], 1, rule) == 1.0
    assert conditional_power([-0.02, -0.02], 1, rule) == 0.0
    v = judge({1: [0.01, -0.012, 0.004]}, 1, rule)
    assert v.dropped == {1: 3} and v.done and v.adopt is None
    assert v.bounds[1].plain_upper > 0  # dropped as futile, not on its upper bound
    assert not judge({1: [0.01, -0.012, 0.004]}, 1, RaceRule(futility=0.0)).done


def test_judge_adopts_drops_and_stops():
    rule = RaceRule(min_repeats=2, max_repeats=4, level=0.95, min_gain=0.0, futility=0.0)
    # One repeat: no look yet, whatever it says.
    v = judge({1: [0.5]}, 1, rule)
    assert not v.done and v.adopt is None and v.alive == [1]
    # Two repeats drop what is clearly worse (a plain 95% bound), but a t interval on one
    # degree of freedom after the corrections is too wide to adopt anything yet.
    v = judge({1: [0.10, 0.11], 2: [-0.10, -0.11]}, 2, rule)
    assert v.adopt is None and v.dropped == {2: 2} and v.alive == [1] and not v.done
    assert v.bounds[2].plain_upper <= 0 < v.bounds[2].upper  # dropped on the plain bound
    v = judge({1: [0.10, 0.11, 0.105], 2: [-0.10, -0.11]}, 2, rule, dropped=v.dropped)
    assert v.adopt == 1 and v.done
    # A tie is not a gain: dropped, not carried to max_repeats.
    v = judge({1: [0.0, 0.0]}, 1, rule)
    assert v.dropped == {1: 2} and v.done and v.adopt is None
    # Noisy: neither; at max_repeats the race ends keeping the incumbent.
    v = judge({1: [0.05, -0.04, 0.03]}, 1, rule)
    assert not v.done and v.alive == [1]
    v = judge({1: [0.05, -0.04, 0.03, -0.02]}, 1, rule)
    assert v.done and v.adopt is None
    # A candidate dropped at an earlier look stays out.
    v = judge({1: [0.05, -0.04, 0.03], 2: [-0.2, -0.2]}, 2, rule, dropped={2: 2})
    assert v.dropped == {2: 2} and v.alive == [1]


def test_min_gain_is_the_smallest_gain_worth_adopting():
    diffs = {1: [0.031, 0.029, 0.030]}
    assert judge(diffs, 1, RaceRule(min_gain=0.0)).adopt == 1
    v = judge(diffs, 1, RaceRule(min_gain=0.05))
    assert v.adopt is None and v.dropped == {1: 3}  # clearly below a 5-point gain


def test_the_error_budget_is_split_over_candidates_and_looks():
    rule = RaceRule(min_repeats=2, max_repeats=6, level=0.95)
    assert looks(rule) == 5
    # Half of the 5% at the last look, the other half over the four before it; per candidate.
    assert confidence(rule, 1, 6) == pytest.approx(1 - 0.025)
    assert confidence(rule, 1, 3) == pytest.approx(1 - 0.025 / 4)
    assert confidence(rule, 2, 6) == pytest.approx(1 - 0.0125)
    # The union bound holds: the per-look error rates add up to at most 1 - level.
    spent = sum(1 - confidence(rule, 1, n) for n in range(2, 7))
    assert spent == pytest.approx(0.05)


def test_simulation_is_repeatable():
    a = simulate([0.03, 0.0], 0.02, DEFAULT, runs=200, seed=7)
    b = simulate([0.03, 0.0], 0.02, DEFAULT, runs=200, seed=7)
    assert a == b
    assert a != simulate([0.03, 0.0], 0.02, DEFAULT, runs=200, seed=8)
    random.seed(0)  # the simulation owns its generator: the global one is untouched
