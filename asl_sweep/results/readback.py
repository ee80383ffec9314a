"""A study read back from its Optuna store for status, leaderboard, report, evaluate and
export: stages, trials, decisions, what each stage carried, the final test score. Imports
neither torch nor mlflow."""

from __future__ import annotations

from asl_sweep.runtime.errors import ConfigError
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search import (
    Failure,
    StageKey,
    StageResult,
    StageView,
    TrialKey,
    final_result,
    final_scorer,
    load_stage_study,
    optuna_storage,
    read,
    silent_trials,
    stage_trials,
)
from asl_sweep.settings.spec import StudyConfig


def read_stages(cfg: StudyConfig, ws: Workspace) -> list[StageView]:
    storage = optuna_storage(ws.storage)
    views = []
    for stage in cfg.stages:
        study = load_stage_study(cfg, stage, storage)
        if study is None:
            views.append(StageView(stage, [], None, {}))
            continue
        shared = read(study)
        trials = [t for t in stage_trials(study)  # a search slot the stage did not need: none
                  if t.user_attrs.get(TrialKey.FAILURE) != Failure.UNUSED]
        result = shared.get(StageKey.RESULT)
        views.append(StageView(stage, trials, StageResult(**result) if result else None,
                               shared.get(StageKey.CARRIED, {}), shared.get(StageKey.PLAN),
                               shared.get(StageKey.BUDGET),
                               None if result else shared.get(StageKey.STOPPED),
                               silent_trials(study, trials)))
    return views


def stopped_stage(views: list[StageView]) -> StageView | None:
    """The stage whose gate stopped the study, where one did."""
    return next((v for v in views if v.stopped), None)


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
    stopped = stopped_stage(views)
    if stopped is not None:  # its gate stopped the study: say why, not "not finished"
        named = (f", or name a finished stage: --stage {finished[-1].stage.name}"
                 if finished else "")
        raise ConfigError(f"study {cfg.study} stopped at stage {stopped.stage.name} "
                          f"({stopped.stopped}), so it has no final configuration: mend that "
                          f"and run it again{named}")
    if not finished:
        started = next((v for v in views if v.trials), None)
        if started is None:
            raise ConfigError(f"study {cfg.study}: no finished stage yet; run it first")
        done = sum(t.state.is_finished() for t in started.trials)
        raise ConfigError(f"study {cfg.study}: no stage has decided yet (stage "
                          f"{started.stage.name}: {done} of the {len(started.trials)} trials "
                          "it has started have finished); let the run finish (asl-sweep "
                          "status shows how far it is), or run it again if it was stopped")
    if finished[-1] is not views[-1]:  # the final configuration is not decided yet
        waiting = next(v for v in views if v.result is None).stage.name
        raise ConfigError(f"study {cfg.study} is not finished (stage {waiting} has not "
                          "decided), so it has no final configuration yet; let the run "
                          f"finish, or name a finished stage: --stage {finished[-1].stage.name}")
    return finished[-1]


def read_final(cfg: StudyConfig, ws: Workspace) -> dict | None:
    return final_result(optuna_storage(ws.storage), cfg.study)


def final_in_progress(cfg: StudyConfig, ws: Workspace) -> str | None:
    """Which worker is scoring the study on test now (with final_model: refit, training its
    refits first), or None."""
    study = load_stage_study(cfg, cfg.stages[-1], optuna_storage(ws.storage))
    return final_scorer(study) if study is not None else None
