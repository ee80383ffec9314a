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
                 width: float = 2.0, against: str = "incumbent", top: int = 1):
        self.sign = 1.0 if direction == "maximize" else -1.0
        self.warmup, self.floor, self.width = warmup, floor, width
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
        behind = self.sign * (theirs - mine)
        if behind > margin:
            whom = (f"the incumbent (trial {incumbent.number})" if reference is incumbent
                    else f"trial {reference.number}, the stage's "
                    + ("best" if self.top == 1 else f"number {self.top}") + " so far")
            self.reason = (f"behind {whom} at epoch {step}: {mine:.3f} vs {theirs:.3f}, "
                           f"more than the margin {margin:.3f} (the incumbent's own spread "
                           "at that epoch)")
            return True
        return False

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
