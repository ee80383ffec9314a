"""95% intervals from bootstrap draws over units (people, or images where there are none):
the final test score's and `compare`'s paired difference.

Two corrections of the plain 2.5% and 97.5% percentiles, both for what few units and a
skewed spread of people do to them:

- Expanded (Hesterberg's small-sample fix): resampling n units gives a spread too narrow by
  sqrt((n - 1) / n), with normal tails where t's are due, so the tails are taken at
  Phi(-sqrt(n / (n - 1)) t_{0.975, n-1}) instead of 2.5% (0.86% for 10 units).
- Bias-corrected and accelerated (Efron's BCa): people's accuracies are skewed (most near
  the top, a minority that fails far below), so the resampled score is skewed and its
  percentiles sit on the wrong side of the estimate; BCa moves both tails by the share of
  draws below the estimate (bias) and by the skew of the leave-one-unit-out estimates
  (acceleration).

Simulated test splits (benchmarks/interval_cover.py, 2,000 a row) where a quarter of the
people fail: expanded alone missed the people's mean accuracy 9.8% of the time over 20
people and 8.2% over 30; with BCa too, 6.7% and 5.9%, against the 5% a 95% interval allows
(where accuracies spread as Beta(4, 1): 5.9% and 5.1% against 5.2% and 4.3%). `compare`'s
paired difference stays expanded only: there BCa excluded 0 more often with no true
difference (8.5% against 6.5% over 10 people; a paired difference is near symmetric, and
the bias estimate only adds noise)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    # Student's t inverse CDF from scipy.special (what scipy.stats.t.ppf calls), loaded only
    # when needed: scipy.stats takes 0.6 s to import, scipy.special 0.2 s.
    from scipy.special import stdtrit

    return float(stdtrit(df, p))


def expanded_tail(n: int) -> float:
    """The share in each tail of a 95% expanded percentile interval over n resampled units
    (the module's text): 0.86% for 10 units, 2.5% as n grows. One unit: 0, the whole range
    of the draws."""
    if n < 2:
        return 0.0
    from scipy.special import ndtr

    return float(ndtr(-math.sqrt(n / (n - 1)) * t_quantile(0.975, n - 1)))


def bca_interval(draws: np.ndarray, estimate: float, left_out: np.ndarray,
                 units: int) -> tuple[float, float]:
    """The 95% expanded BCa interval (the module's text) of a statistic: `draws` its values
    on the bootstrap's resamples, `estimate` its value on the units as they are, `left_out`
    its value without each unit in turn (the jackknife), `units` how many units were
    resampled (on validation, the fewest of a fold's). One unit: the range of the draws."""
    if units < 2:
        return float(draws.min()), float(draws.max())
    from scipy.special import ndtr, ndtri

    below = np.mean(draws < estimate) + 0.5 * np.mean(draws == estimate)
    bias = float(ndtri(np.clip(below, 1.0 / (len(draws) + 1), len(draws) / (len(draws) + 1))))
    d = left_out.mean() - left_out
    spread = float((d ** 2).sum())
    skew = float((d ** 3).sum()) / (6.0 * spread ** 1.5) if spread > 0 else 0.0
    z = float(ndtri(expanded_tail(units)))
    tails = []
    for side in (z, -z):
        moved = bias + (bias + side) / max(1.0 - skew * (bias + side), 1e-9)
        tails.append(100.0 * float(ndtr(moved)))
    lo, hi = np.percentile(draws, tails)
    return float(lo), float(hi)
