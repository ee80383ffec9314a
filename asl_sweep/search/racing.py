"""The racing rule for confirmation (the idea of F-Race / irace, on paired repeats): pure
functions over numbers, no Optuna and no I/O, so the rule is proved by simulation alone.

Repeats run in rounds. Round r trains every surviving candidate and the incumbent once more
with seed r on fold r, so each candidate has paired differences d_1..d_n to the incumbent
(n fresh repeats; the search trial that put a candidate forward is shown but is never
evidence: it was picked because it scored high). From n >= min_repeats on, each candidate
gets a one-sided paired t interval whose error rate is (1 - level) split by Bonferroni's
union bound over the k candidates the race started with and over the looks it may take: half
of it at the last look (n = max_repeats), the other half evenly over the earlier ones, so a
race that looks six times still adopts a candidate with no true gain at most 1 - level of the
time, and keeps most of its power for the last look.

    lower = mean(d) - t * sd(d) / sqrt(n),   upper = mean(d) + t * sd(d) / sqrt(n)

A candidate whose upper bound (at `level`, uncorrected: dropping can never adopt anything
wrongly, it can only cost power, which the simulation counts) is not above min_gain is
dropped: clearly not better by a gain worth having. So is a candidate whose race is futile
(stochastic curtailment): if the rounds still to run went on as its repeats so far (true gain
= their mean, spread = their sd), the last look would adopt it with a chance (its conditional
power) below `futility`. A near-tie is then dropped after two or three rounds instead of
running to max_repeats; like any drop it can only cost power, never adopt wrongly. The stage
adopts the best surviving candidate (by mean difference) whose lower bound is above
min_gain. The race ends there, when every candidate is dropped, or after max_repeats
rounds, keeping the incumbent.

An accuracy counts images: on N validation images it moves in steps of 1/N, so two repeats
can agree to the image by chance, and their sd of 0 made any gain "certain" at the first
look (a t quantile of 25 times nothing). A value known only to its step carries the
rounding's variance, step^2 / 12, on top of what the repeats show (Sheppard's correction,
taken the safe way), so a candidate's spread is sqrt(s^2 + step^2 / 12), with `step` the
least change one validation image makes to the metric (0 for a loss). Simulated with every
score a whole number of images, a candidate with no true gain was adopted 6.0-7.2% of the
time on 24-60 images without it, against the 5% promised (3.5% on continuous values), and
1.3-3.2% with it (the simulation's `step`; benchmarks/racing.py).

The values raced are each repeat's best epoch cross-fitted over halves of its validation
people (the epoch one half picks, scored on the other, over 20 splits in halves;
training.train.crossfit; selection.compared_value), not the best epoch on the people that
picked it: that counts a curve's luck, the more the more it wavers, and adopted an equal
candidate with a more wavering curve 12-24% of the time (benchmarks/best_epoch.py)."""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field, replace

from asl_sweep.search.intervals import t_quantile

TEST_NAME = ("one-sided paired t interval on fresh repeats, Bonferroni over the candidates and "
             "the looks")


@dataclass(frozen=True)
class RaceRule:
    min_repeats: int = 2
    max_repeats: int = 6
    level: float = 0.95
    min_gain: float = 0.0
    futility: float = 0.05  # drop a candidate whose conditional power is below this


@dataclass(frozen=True)
class Bounds:
    n: int
    mean: float
    sd: float
    lower: float  # at the corrected confidence (adopting)
    upper: float
    plain_upper: float = math.inf  # at `level`, uncorrected (dropping)
    power: float = 1.0  # conditional power at max_repeats (futility)


@dataclass
class Verdict:
    adopt: int | None  # the candidate to adopt, once one is clearly better
    alive: list[int]  # candidates still in the race
    dropped: dict[int, int] = field(default_factory=dict)  # candidate -> round it fell out
    bounds: dict[int, Bounds] = field(default_factory=dict)
    done: bool = False
    rounds: int = 0  # fresh repeats run so far (the longest pairing)


def looks(rule: RaceRule) -> int:
    """How many times a race may look at its evidence: once a round from min_repeats on."""
    return max(1, rule.max_repeats - max(2, rule.min_repeats) + 1)


def confidence(rule: RaceRule, candidates: int, n: int) -> float:
    """The one-sided confidence of a look after n fresh repeats (see the module's text)."""
    alpha = (1.0 - rule.level) / max(1, candidates)
    if looks(rule) == 1:
        return 1.0 - alpha
    if n >= rule.max_repeats:
        return 1.0 - alpha / 2
    return 1.0 - alpha / 2 / (looks(rule) - 1)


def stepped_sd(values: list[float], step: float = 0.0) -> float:
    """The sd of two or more values measured in steps of `step`: their sample variance plus
    the rounding's, step^2 / 12 (the module's text)."""
    return math.sqrt(statistics.variance(values) + step * step / 12.0)


def bounds(diffs: list[float], confidence: float, step: float = 0.0) -> Bounds:
    n = len(diffs)
    mean = statistics.fmean(diffs)
    sd = stepped_sd(diffs, step) if n >= 2 else math.inf
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n) if n >= 2 else math.inf
    return Bounds(n, mean, sd if n >= 2 else 0.0, mean - half, mean + half)


def conditional_power(diffs: list[float], candidates: int, rule: RaceRule,
                      step: float = 0.0) -> float:
    """The chance that the last look (n = max_repeats) would adopt this candidate if the
    rounds still to run went on as its repeats so far (the current trend: true gain = their
    mean, spread = their sd with the rounding of `step`), by the normal approximation of
    stochastic curtailment."""
    n, last = len(diffs), rule.max_repeats
    if n >= last or n < 2:
        return 1.0
    mean, sd = statistics.fmean(diffs), stepped_sd(diffs, step)
    needed = rule.min_gain + t_quantile(confidence(rule, candidates, last), last - 1) * sd / \
        math.sqrt(last)  # the final mean that the last look adopts above
    if sd == 0.0:
        return 1.0 if mean > needed else 0.0
    z = last * (needed - mean) / (sd * math.sqrt(last - n))
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def judge(diffs: dict[int, list[float]], started_with: int, rule: RaceRule,
          dropped: dict[int, int] | None = None, rounds: int | None = None,
          steps: dict[int, float] | None = None) -> Verdict:
    """One look at the race. `diffs`: candidate -> its paired differences so far (sign
    applied: positive is better than the incumbent); `dropped`: candidates out since an
    earlier look (they stay out); `rounds`: rounds run (default: the longest pairing; a
    repeat that failed on its own leaves a candidate one short); `steps`: candidate -> the
    step its differences are measured in (the module's text; none: 0)."""
    dropped = dict(dropped or {})
    steps = steps or {}
    alive = [c for c in diffs if c not in dropped]
    if rounds is None:
        rounds = max((len(diffs[c]) for c in diffs), default=0)
    level = confidence(rule, started_with, rounds)
    verdict = Verdict(adopt=None, alive=alive, dropped=dropped, rounds=rounds)
    for c in alive:
        if len(diffs[c]) >= 1:
            verdict.bounds[c] = bounds(diffs[c], level, steps.get(c, 0.0))
    looked = [c for c in alive if len(diffs[c]) >= max(2, rule.min_repeats)]
    for c in looked:
        # Dropping cannot adopt anything wrongly, so it needs no correction: the plain
        # one-sided bound at `level`.
        upper = bounds(diffs[c], rule.level, steps.get(c, 0.0)).upper
        power = conditional_power(diffs[c], started_with, rule, steps.get(c, 0.0))
        verdict.bounds[c] = replace(verdict.bounds[c], plain_upper=upper, power=power)
        if upper <= rule.min_gain or power < rule.futility:  # a tie is not better
            verdict.dropped[c] = rounds
    verdict.alive = [c for c in alive if c not in verdict.dropped]
    winners = [c for c in verdict.alive if c in looked
               and verdict.bounds[c].lower > rule.min_gain]
    if winners:
        verdict.adopt = max(winners, key=lambda c: (verdict.bounds[c].mean, -c))
    verdict.done = (verdict.adopt is not None or not verdict.alive
                    or rounds >= rule.max_repeats)
    return verdict


def next_round(verdict: Verdict, rule: RaceRule) -> int:
    """How many more rounds to queue before the next look: up to min_repeats at the start
    (no look before it can decide anything), then one."""
    if verdict.done:
        return 0
    return max(1, rule.min_repeats - verdict.rounds)


# ---- simulation: the rule on values with known true effects -------------------------------

@dataclass(frozen=True)
class SimulationRow:
    scenario: str
    adopted_any: float  # share of races that adopted some candidate
    adopted_best: float  # share that adopted the candidate with the largest true gain
    mean_rounds: float  # fresh repeats per configuration, on average
    mean_trainings: float  # trainings of the confirmation, on average (incumbent included)


def race(effects: list[float], spread: float, rule: RaceRule, rng: random.Random,
         step: float = 0.0, rounding: bool = True) -> tuple[int | None, int, int]:
    """One simulated race. `spread` is the standard deviation of one paired difference: on
    repeat r the incumbent scores e_0 and candidate i scores effects[i] + e_i, every e ~
    N(0, spread / sqrt 2) independent (what every configuration shares on a fold and seed
    cancels in the difference). `step`: accuracies on 1/step images, every score rounded
    to a whole number of them from 0.7 (0: continuous); the race counts the rounding's
    variance unless not `rounding`. Returns (adopted candidate or None, rounds run,
    trainings)."""
    diffs: dict[int, list[float]] = {i: [] for i in range(len(effects))}
    dropped: dict[int, int] = {}
    trainings = 0

    def scored(x: float) -> float:
        return round((0.7 + x) / step) * step if step else x

    steps = {i: step for i in diffs} if rounding else None
    while True:
        alive = [i for i in diffs if i not in dropped]
        noise = spread / math.sqrt(2.0)
        incumbent = scored(rng.gauss(0.0, noise))
        for i in alive:
            diffs[i].append(scored(effects[i] + rng.gauss(0.0, noise)) - incumbent)
        trainings += 1 + len(alive)
        verdict = judge({i: diffs[i] for i in alive}, len(effects), rule, dropped,
                        steps=steps)
        dropped = verdict.dropped
        if verdict.done:
            return verdict.adopt, verdict.rounds, trainings


def simulate(effects: list[float], spread: float, rule: RaceRule, runs: int = 2000,
             seed: int = 0, scenario: str = "", step: float = 0.0,
             rounding: bool = True) -> SimulationRow:
    rng = random.Random(seed)
    best = max(range(len(effects)), key=lambda i: effects[i])
    adopted = right = rounds = trainings = 0
    for _ in range(runs):
        pick, n, cost = race(effects, spread, rule, rng, step, rounding)
        adopted += pick is not None
        right += pick == best and effects[best] > 0
        rounds += n
        trainings += cost
    return SimulationRow(scenario, adopted / runs, right / runs, rounds / runs,
                         trainings / runs)
