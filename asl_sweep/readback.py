"""A study read back from its Optuna store for status, leaderboard, report and export:
stages, trials, winners and what each carried. Imports neither torch nor mlflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from asl_sweep.config import StageConfig, StudyConfig
from asl_sweep.selection import StageResult
from asl_sweep.store import load_stage_study, optuna_storage
from asl_sweep.workspace import Workspace


@dataclass
class StageView:
    stage: StageConfig
    trials: list[FrozenTrial]
    winner: StageResult | None
    carried: dict[str, Any]

    def by_state(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        return counts

    def ranked(self) -> list[FrozenTrial]:
        sign = 1 if self.stage.direction == "maximize" else -1
        complete = [t for t in self.trials if t.state == TrialState.COMPLETE]
        return sorted(complete, key=lambda t: (-sign * t.value, t.number))

    def best(self) -> FrozenTrial | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None


def read_stages(cfg: StudyConfig, ws: Workspace) -> list[StageView]:
    storage = optuna_storage(ws.storage)
    views = []
    for stage in cfg.stages:
        study = load_stage_study(cfg, stage, storage)
        if study is None:
            views.append(StageView(stage, [], None, {}))
            continue
        winner = study.user_attrs.get("winner")
        views.append(StageView(stage, study.get_trials(deepcopy=False),
                               StageResult(**winner) if winner else None,
                               study.user_attrs.get("carried", {})))
    return views
