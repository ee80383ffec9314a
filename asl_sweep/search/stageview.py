"""One stage seen whole: its trials, its decision and what it started from, with the views
every reader needs (ranking, the carried repeats, the trial to export). Pure: no I/O, so the
search (the final test score) and the results (status, report, export) share it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from asl_sweep.search.selection import StageResult, role_of
from asl_sweep.search.state import (
    LOST_ATTEMPTS,
    Failure,
    Role,
    TrialKey,
    ends_losses,
    outcome_of,
    retries_of,
)
from asl_sweep.settings.spec import StageConfig

_LOST = "lost"  # a trial whose worker died: found by the next look, queued again
_LOST_UNFOUND = "lost (not found yet)"  # RUNNING, its worker gone: the next run finds it
# How by_state says its lost trials: for one, for several.
_LOST_SAID = {
    f"{_LOST} (queued again)": ("lost with its worker (queued again)",
                                "lost with their workers (queued again)"),
    _LOST_UNFOUND: ("lost with its worker (the next run queues it again)",
                    "lost with their workers (the next run queues them again)")}


@dataclass
class StageView:
    stage: StageConfig
    trials: list[FrozenTrial]
    result: StageResult | None  # the stage's decision, once it finished
    carried: dict[str, Any]  # what it started from
    plan: dict[str, Any] | None = None  # the confirmation plan, once made
    ran_budget: int | None = None  # the `trials` the stage last ran with (--trials included)
    stopped: str | None = None  # why its gate stopped the study, where it did (undecided)
    # RUNNING trials whose worker stopped beating (state.silent_trials), on any machine
    silent: frozenset[int] = frozenset()

    @property
    def budget(self) -> int:
        return self.ran_budget if self.ran_budget is not None else self.stage.trials

    def by_state(self, gone: Callable[[str], bool] = lambda _: False) -> dict[str, int]:
        """Trials counted by state, as a person reads it: a FAIL trial that was queued to run
        again (a Ctrl-C, a fault that was not its own, a worker that died) is counted as that,
        not as a failure; `fail` is a trial's own failure, which used its turn. `gone`: whether
        a RUNNING trial's worker (its worker_id) is known to be gone (a process of this
        machine that no longer exists): such a trial is lost, not running (after a run killed
        outright, `status` said `1 running` with nothing running), as is one in `silent` (its
        worker, here or on another machine, stopped beating)."""
        retried = {n for t in self.trials for n in retries_of(t)}
        # The record that ends a chain of losses (state.Requeue): its own failure, counted
        # in place of the last loss, which was not queued again.
        ended = {retries_of(t)[-1]: t for t in self.trials if ends_losses(t)}
        counts: dict[str, int] = {}
        for t in self.trials:
            name = t.state.name.lower()
            if t.state == TrialState.RUNNING and (
                    t.number in self.silent or gone(t.user_attrs.get(TrialKey.WORKER, ""))):
                name = _LOST_UNFOUND
            if t.state == TrialState.FAIL:
                why = t.user_attrs.get(TrialKey.FAILURE)
                if ends_losses(t):
                    continue  # counted in place of the loss it ends
                if t.number in ended:
                    name = (f"fail (lost with its worker "
                            f"{ended[t.number].system_attrs[LOST_ATTEMPTS]} times)")
                elif t.number in retried:
                    name = f"{why or _LOST} (queued again)"
                elif why in (Failure.SURPLUS, Failure.UNUSED):
                    name = str(why)
            counts[name] = counts.get(name, 0) + 1
        for key, (one, many) in _LOST_SAID.items():
            lost = counts.pop(key, 0)
            if lost:
                counts[one if lost == 1 else many] = lost
        return counts

    def ranked(self, roles=("incumbent", "seed", "search")) -> list[FrozenTrial]:
        sign = 1 if self.stage.direction == "maximize" else -1
        complete = [t for t in self.trials
                    if t.state == TrialState.COMPLETE and role_of(t) in roles]
        return sorted(complete, key=lambda t: (-sign * t.value, t.number))

    @property
    def folds(self) -> int:
        """Over how many folds its search trials' values are the mean, as they ran: the
        stage's `folds` where the split had that many (fewer where it had fewer; one where
        validation stays on one fold). Before any trial finished: the stage's `folds`."""
        if self.stage.folds == 1:
            return 1
        done = [outcome_of(t) for t in self.trials if role_of(t) != Role.CONFIRM]
        counts = [len(o.fold_values or [0]) for o in done if o is not None]
        return max(counts) if counts else self.stage.folds

    @property
    def ranked_apart(self) -> bool:
        """Whether its trials are ranked by a value their accuracies do not show: another
        metric, or the mean over several folds (then shown beside them)."""
        return self.folds > 1 or self.stage.shown_metric not in ("train_acc", "val_acc")

    def best(self) -> FrozenTrial | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def trial(self, number: int) -> FrozenTrial:
        return next(t for t in self.trials if t.number == number)

    def repeats(self) -> list[FrozenTrial]:
        """The trials that trained the configuration the stage carries (its seeds/folds)."""
        return [self.trial(n) for n in self.result.repeats]

    def export_trial(self) -> FrozenTrial:
        """The carried configuration's best repeat by validation (never chosen by test)."""
        sign = 1 if self.stage.direction == "maximize" else -1
        return max(self.repeats(), key=lambda t: (sign * t.value, -t.number))
