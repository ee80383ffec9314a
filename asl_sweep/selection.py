"""Which trials count and which one wins: pure functions over Optuna FrozenTrials, no I/O,
so every rule can be tested with optuna.trial.create_trial alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from asl_sweep.config import StageConfig
from asl_sweep.errors import GateNotReached
from asl_sweep.space import decode_params

# The metric that breaks ties between trials that reached a stage's target.
SECONDARY = {"train_acc": "val_acc", "val_acc": "train_acc",
             "val_loss": "val_acc", "train_loss": "val_acc"}


@dataclass
class StageResult:
    stage: str
    trial: int
    value: float
    params: dict[str, Any]  # the winner's searched settings, carried into later stages
    metrics: dict[str, float]
    status: str  # best | target reached | target missed
    run_id: str = ""


def counts_toward_budget(t: FrozenTrial) -> bool:
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    # A trial that failed on its own used its turn; one killed, stopped or stale is retried.
    return t.state == TrialState.FAIL and t.user_attrs.get("failure") == "error"


def reached_target(trials: list[FrozenTrial], stage: StageConfig) -> bool:
    return any(t.state == TrialState.COMPLETE and stage.reached(t.value) for t in trials)


def pick_winner(trials: list[FrozenTrial], stage: StageConfig) -> StageResult:
    """With a target: among trials that reached it, the best by the other metric, then the
    fewest parameters. Without: the best by the stage metric, the earlier trial on a tie."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise GateNotReached(f"stage {stage.name}: no trial completed "
                             f"({len(trials)} started); nothing to carry forward")
    sign = 1 if stage.direction == "maximize" else -1
    status = "best"
    if stage.target is not None:
        reached = [t for t in complete if stage.reached(t.value)]
        if reached:
            other = SECONDARY[stage.metric]
            other_sign = -1 if other.endswith("loss") else 1
            winner = min(reached, key=lambda t: (-other_sign * t.user_attrs["metrics"][other],
                                                 t.user_attrs["num_params"], t.number))
            status = "target reached"
        else:
            best = max(complete, key=lambda t: (sign * t.value, -t.number))
            message = (f"stage {stage.name}: no trial reached {stage.metric} "
                       f"{'>=' if sign > 0 else '<='} {stage.target} "
                       f"(best: {best.value:.4f}, trial {best.number})")
            if stage.on_fail == "stop":
                raise GateNotReached(message + "; give it more trials or epochs, or set "
                                     f"on_fail: continue in stage {stage.name}")
            winner, status = best, "target missed"
    else:
        winner = max(complete, key=lambda t: (sign * t.value, -t.number))
    return StageResult(stage=stage.name, trial=winner.number, value=float(winner.value),
                       params=decode_params(winner.params), metrics=winner.user_attrs["metrics"],
                       status=status, run_id=winner.user_attrs.get("mlflow_run_id", ""))
