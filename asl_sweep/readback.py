"""A study read back from its Optuna store for status, leaderboard, report, evaluate and
export: stages, trials, decisions, what each stage carried, the final test score. Imports
neither torch nor mlflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from asl_sweep.errors import ConfigError
from asl_sweep.record import final_result
from asl_sweep.selection import StageResult, role_of
from asl_sweep.spec import StageConfig, StudyConfig
from asl_sweep.store import attrs, load_stage_study, optuna_storage
from asl_sweep.workspace import Workspace


@dataclass
class StageView:
    stage: StageConfig
    trials: list[FrozenTrial]
    result: StageResult | None  # the stage's decision, once it finished
    carried: dict[str, Any]  # what it started from
    plan: dict[str, Any] | None = None  # the confirmation plan, once made

    def by_state(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        return counts

    def ranked(self, roles=("incumbent", "seed", "search")) -> list[FrozenTrial]:
        sign = 1 if self.stage.direction == "maximize" else -1
        complete = [t for t in self.trials
                    if t.state == TrialState.COMPLETE and role_of(t) in roles]
        return sorted(complete, key=lambda t: (-sign * t.value, t.number))

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


def read_stages(cfg: StudyConfig, ws: Workspace) -> list[StageView]:
    storage = optuna_storage(ws.storage)
    views = []
    for stage in cfg.stages:
        study = load_stage_study(cfg, stage, storage)
        if study is None:
            views.append(StageView(stage, [], None, {}))
            continue
        a = attrs(study)
        views.append(StageView(stage, study.get_trials(deepcopy=False),
                               StageResult(**a["result"]) if "result" in a else None,
                               a.get("carried", {}), a.get("plan")))
    return views


def finished_stage(cfg: StudyConfig, views: list[StageView], name: str | None) -> StageView:
    """The stage called `name`, or the last finished one."""
    if name is not None:
        chosen = [v for v in views if v.stage.name == name]
        if not chosen:
            raise ConfigError(f"--stage {name}: no such stage in {cfg.study} "
                              f"(stages: {', '.join(s.name for s in cfg.stages)})")
        if chosen[0].result is None:
            raise ConfigError(f"--stage {name}: that stage has not finished yet")
        return chosen[0]
    finished = [v for v in views if v.result is not None]
    if not finished:
        raise ConfigError(f"study {cfg.study}: no finished stage yet; run it first")
    return finished[-1]


def read_final(cfg: StudyConfig, ws: Workspace) -> dict | None:
    return final_result(optuna_storage(ws.storage), cfg.study)
