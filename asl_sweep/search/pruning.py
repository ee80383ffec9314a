"""The pruners a stage can name. Optuna's median, hyperband and successive halving compare a
trial with other search trials; `incumbent` compares it with the stage's incumbent, trained
on the same fold and seed as every search trial (trial 0), epoch by epoch: a search trial
is stopped once it is behind the incumbent's curve at the same epoch by more than the
noise of that curve, so what a stage cannot beat stops early, and what could beat it
trains on to the race (which always trains at full fidelity).

The margin at epoch e is the larger of a floor (`floor`, 2 points of accuracy by default)
and `width` times the incumbent's own spread at e: the standard deviation, over the
incumbent's repeats (other folds and seeds) that have reached e, of their values at e, where
two or more exist in the stage (a resumed stage, or after the race), else the noise of the
incumbent's single curve (the standard deviation of its epoch-to-epoch changes up to e,
over sqrt(2)). A trial is never stopped before `warmup` epochs.

Behind is not enough: a trial is stopped only while it is not closing the gap. The gap is
read as a mean over a window of `window` epochs, the last `window` against the `window`
before: a trial whose gap over the last window is still above the margin and no smaller
than over the window before has stopped gaining on what it is compared with, and stops;
one whose gap is shrinking trains on. A setting that learns slower early (a stronger
augmentation, a lower rate, a longer warmup) trails the incumbent at first whatever it
ends at; compared at one epoch it was stopped there (the live cnn.yaml run of issue 35
stopped every augmentation lever at epochs 8-10 of 80, and the replay of recorded curves
stopped two thirds of the trials that ended above the incumbent); read as a trend it trains
on for as long as it gains. Until 2 x `window` epochs are reported no trend exists and the
trial trains on. `window` 0 reads the gap at the one epoch, without a trend (the rule
before; benchmarks/pruning_replay.py replays both).

`best` (IncumbentPruner with against="best") compares a trial the same way with the stage's
best trial so far instead: the best finished trial of the incumbent, the seed trials and the
search trials (all trained on the same fold and seed; race repeats are not), ranked by
final value, or with a race of the top k (confirm.top), the k-th best; never one the
incumbent beats. A trial behind it by more than the margin would not be raced, so it stops
(the incumbent's noise is the margin: every one of those curves has the same fold and
seed). What can still pass it trains on."""

from __future__ import annotations

import math
import statistics

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from asl_sweep.search.state import Role, TrialKey


class IncumbentPruner(BasePruner):
    def __init__(self, direction: str, warmup: int = 2, floor: float = 0.02,
                 width: float = 2.0, against: str = "incumbent", top: int = 1,
                 window: int = 2):
        self.sign = 1.0 if direction == "maximize" else -1.0
        self.warmup, self.floor, self.width, self.window = warmup, floor, width, window
        self.against, self.top = against, top  # "incumbent" or "best" (the top-th best)
        self.reason = ""  # what the last pruned trial was compared with, for its record

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.warmup:
            return False
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        incumbent = next((t for t in trials
                          if t.user_attrs.get(TrialKey.ROLE) == Role.INCUMBENT), None)
        if incumbent is None or step not in incumbent.intermediate_values:
            return False  # nothing to compare with at this epoch: trains on
        reference = incumbent if self.against == "incumbent" else self.leader(
            trials, incumbent, step)
        mine = trial.intermediate_values[step]
        theirs = reference.intermediate_values[step]
        margin = max(self.floor, self.width * self.spread(trials, incumbent, step))
        gaps = self.gaps(trial, reference, step)
        if len(gaps) < max(1, 2 * self.window):
            return False  # no trend yet
        if self.window == 0:  # the gap at this epoch alone, no trend (the rule before)
            now, before = gaps[-1], -math.inf
        else:
            now = statistics.fmean(gaps[-self.window:])
            before = statistics.fmean(gaps[-2 * self.window:-self.window])
        if now > margin and now >= before:
            whom = (f"the incumbent (trial {incumbent.number})" if reference is incumbent
                    else f"trial {reference.number}, the stage's "
                    + ("best" if self.top == 1 else f"number {self.top}") + " so far")
            self.reason = (f"behind {whom} at epoch {step}: {mine:.3f} vs {theirs:.3f}; "
                           f"behind by {now:.3f} on average over its last {self.window} "
                           f"epochs, more than the margin {margin:.3f} (the incumbent's own "
                           f"spread at that epoch), and not closing ({before:.3f} over the "
                           f"{self.window} before)")
            return True
        return False

    def gaps(self, trial: FrozenTrial, reference: FrozenTrial, step: int) -> list[float]:
        """How far the trial is behind the reference (positive: behind) at each epoch up to
        `step` that both reported, oldest first."""
        theirs = reference.intermediate_values
        return [self.sign * (theirs[e] - v) for e, v in sorted(trial.intermediate_values.items())
                if e <= step and e in theirs]

    def leader(self, trials: list[FrozenTrial], incumbent: FrozenTrial,
               step: int) -> FrozenTrial:
        """The finished trial a search trial must keep up with at `step`: the top-th best
        by final value of those trained on the search's fold and seed (the incumbent, seed
        and search trials) that reached `step`, or the incumbent where it ranks higher."""
        paired = [t for t in trials
                  if t.user_attrs.get(TrialKey.ROLE) in (Role.INCUMBENT, Role.SEED, Role.SEARCH)
                  and not t.user_attrs.get(TrialKey.REPEAT) and t.value is not None
                  and step in t.intermediate_values]
        ranked = sorted(paired, key=lambda t: (-self.sign * t.value, t.number))
        return ranked[min(self.top, ranked.index(incumbent) + 1) - 1]

    @staticmethod
    def spread(trials: list[FrozenTrial], incumbent: FrozenTrial, step: int) -> float:
        repeats = [t.intermediate_values[step] for t in trials
                   if t.user_attrs.get(TrialKey.CONFIRMS) == incumbent.number
                   and step in t.intermediate_values]
        values = [incumbent.intermediate_values[step], *repeats]
        if len(values) >= 2:
            return statistics.stdev(values)
        curve = [incumbent.intermediate_values[e] for e in sorted(incumbent.intermediate_values)
                 if e <= step]
        changes = [b - a for a, b in zip(curve, curve[1:], strict=False)]
        return statistics.stdev(changes) / math.sqrt(2) if len(changes) >= 2 else 0.0
