"""The 95% intervals from bootstrap draws (search/intervals.py)."""

import numpy as np

from asl_sweep.search.intervals import bca_interval, expanded_tail


def test_with_no_bias_and_no_skew_bca_is_the_expanded_percentile_interval():
    draws = np.random.default_rng(0).normal(0.8, 0.05, 4001)
    estimate = float(np.median(draws))  # half the draws below: no bias
    tail = 100.0 * expanded_tail(10)
    assert np.allclose(bca_interval(draws, estimate, np.linspace(0.79, 0.81, 10), 10),
                       np.percentile(draws, [tail, 100.0 - tail]))
    assert round(tail, 2) == 0.86


def test_a_skewed_jackknife_moves_the_interval_toward_its_long_tail():
    """One person far below the rest: leaving them out moves the score up a lot, the others
    down a little (the jackknife's skew). The interval reaches further down than the
    symmetric one, and less far up."""
    draws = np.random.default_rng(1).normal(0.9, 0.03, 4001)
    estimate = float(np.median(draws))
    symmetric = bca_interval(draws, estimate, np.linspace(0.89, 0.91, 20), 20)
    left_out = np.array([0.95] + [0.897] * 19)  # without the one who fails: higher
    skewed = bca_interval(draws, estimate, left_out, 20)
    assert skewed[0] < symmetric[0] and skewed[1] < symmetric[1]


def test_one_unit_gives_the_range_of_the_draws():
    draws = np.array([0.5, 0.7, 0.6])
    assert bca_interval(draws, 0.6, np.array([0.6]), 1) == (0.5, 0.7)
