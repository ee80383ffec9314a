"""The pruners a stage can name. Optuna's median, hyperband and successive halving compare a
trial with other search trials; `incumbent` compares it with the stage's incumbent, trained
on the same fold and seed as every search trial (trial 0), along the curve: a search trial
is stopped once it is behind the incumbent's curve by more than the noise of that curve and
is not closing the gap, so what a stage cannot beat stops early, and what could beat it
trains on to the race (which always trains at full fidelity).

Three things decide it, each against a way the rule can stop what would win:
- The margin, against noise: at reference epoch r the larger of a floor (`floor`, 2 points
  of accuracy by default) and `width` times the incumbent's own spread at r: the standard
  deviation, over the incumbent's repeats (other folds and seeds) that have reached r, of
  their values at r, where two or more exist in the stage (a resumed stage, or after the
  race), else the noise of the incumbent's single curve (the standard deviation of its
  epoch-to-epoch changes up to r, over sqrt(2)).
- The pace, against slow starters: a trial at epoch e is compared with the reference at
  epoch ceil(`pace` x e) (make_pruner: 2/3), so a setting that learns at least that fast
  is never behind; a stronger augmentation, a lower rate or a longer warmup learns slower
  early whatever it ends at, and compared at the same epoch every augmentation lever of a
  live cnn.yaml run was stopped at epochs 8-10 of 80.
- The trend, against a gap that is shrinking: the gap is read as a mean over the last
  `window` epochs against the `window` before; a trial is stopped only where the last
  window's gap is above the margin and no smaller than the one before. Until 2 x `window`
  epochs are reported no trend exists and the trial trains on.
A trial is never stopped before `warmup` epochs. `pace` 1 and `window` 0 give the first
version of this rule (the gap at one epoch, the same epoch, which stopped slow starters);
benchmarks/pruning_replay.py replays each variant on recorded curves.

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
                 window: int = 2, pace: float = 1.0):
        self.sign = 1.0 if direction == "maximize" else -1.0
        self.warmup, self.floor, self.width, self.window = warmup, floor, width, window
        self.pace = pace  # a trial at epoch e is compared with the reference at ~pace x e
        self.against, self.top = against, top  # "incumbent" or "best" (the top-th best)
        self.reason = ""  # what the last pruned trial was compared with, for its record

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.warmup:
            return False
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        incumbent = self.incumbent(trials)
        at = self.paced(step)  # the reference's epoch this one is compared with
        if incumbent is None or at not in incumbent.intermediate_values:
            return False  # nothing to compare with at this epoch: trains on
        reference = incumbent if self.against == "incumbent" else self.leader(
            trials, incumbent, at)
        mine = trial.intermediate_values[step]
        theirs = reference.intermediate_values[at]
        margin = max(self.floor, self.width * self.spread(trials, incumbent, at))
        gaps = self.gaps(trial, reference)
        if len(gaps) < max(1, 2 * self.window):
            return False  # no trend yet
        if self.window == 0:  # the gap at this epoch alone, no trend (the rule before)
            now, before = gaps[-1], -math.inf
        else:
            now, before = self.windows(gaps)
        if now > margin and now >= before:
            whom = (f"the incumbent (trial {incumbent.number})" if reference is incumbent
                    else f"trial {reference.number}, the stage's "
                    + ("best" if self.top == 1 else f"number {self.top}") + " so far")
            where = (f"at epoch {step}: {mine:.3f} vs {theirs:.3f}" if at == step else
                     f"{mine:.3f} at epoch {step} vs {theirs:.3f} at its epoch {at} "
                     f"({self.pace:.2f} of the trial's epochs)")
            self.reason = (f"behind {whom}: {where}; "
                           f"behind by {now:.3f} on average over its last {self.window} "
                           f"epochs, more than the margin {margin:.3f} (the incumbent's own "
                           f"spread at its epoch {at}), and not closing ({before:.3f} over "
                           f"the {self.window} before)")
            return True
        return False

    @staticmethod
    def incumbent(trials: list[FrozenTrial]) -> FrozenTrial | None:
        """The stage's incumbent among finished trials, if it has finished."""
        return next((t for t in trials
                     if t.user_attrs.get(TrialKey.ROLE) == Role.INCUMBENT), None)

    def windows(self, values: list[float]) -> tuple[float, float]:
        """The mean of the last `window` values and of the `window` before them."""
        return (statistics.fmean(values[-self.window:]),
                statistics.fmean(values[-2 * self.window:-self.window]))

    def gaps(self, trial: FrozenTrial, reference: FrozenTrial) -> list[float]:
        """How far the trial is behind the reference (positive: behind) at each epoch it
        reported whose paced epoch the reference reported, oldest first."""
        theirs = reference.intermediate_values
        return [self.sign * (theirs[self.paced(e)] - v)
                for e, v in sorted(trial.intermediate_values.items())
                if self.paced(e) in theirs]

    def paced(self, epoch: int) -> int:
        """The reference's epoch a trial's `epoch` is compared with: `pace` of it, rounded
        up (at pace 1, the same epoch)."""
        return max(1, math.ceil(self.pace * epoch - 1e-9))

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
