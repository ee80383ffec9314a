"""Stage orchestration: each stage is an Optuna study that starts from `base` plus the
winners of the stages before it. Optuna holds the truth (trials, states, winners); MLflow
mirrors it as study -> stage -> trial runs. A rerun continues where the last one stopped;
several workers may run this at once on one storage, sharing each stage's budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from asl_sweep.config import METRICS, StudyConfig, apply_overrides
from asl_sweep.errors import GateNotReached
from asl_sweep.selection import StageResult, counts_toward_budget, pick_winner, reached_target
from asl_sweep.session import Session, open_session
from asl_sweep.space import encode_params
from asl_sweep.store import create_stage_study, fail_dead_trials, optuna_storage
from asl_sweep.trial import TrialFailed, TrialRunner
from asl_sweep.workspace import Workspace


def run_study(cfg: StudyConfig, ws: Workspace, log: Callable[[str], None] = print,
              worker: int = 0) -> list[StageResult]:
    """Run (or join, or resume) the staged search. Several workers may run this at once on
    one storage: they share each stage's budget and agree on its winner."""
    session = open_session(cfg, ws, log)
    session.worker = worker
    storage = optuna_storage(ws.storage)
    status = "FAILED"
    try:
        carried: dict[str, Any] = {}
        decided_by: dict[str, str] = {}
        for index, stage in enumerate(cfg.stages):
            result = run_stage(session, index, storage, carried, decided_by)
            session.results.append(result)
            carried.update(result.params)
            decided_by.update({name: stage.name for name in result.params})
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        session.tracker.end(session.study_run, status)
    return session.results


def run_stage(s: Session, index: int, storage, carried: dict[str, Any],
              decided_by: dict[str, str]) -> StageResult:
    cfg, stage = s.cfg, s.cfg.stages[index]
    study, created = create_stage_study(cfg, index, storage, s.worker)
    if created or not _wait_for(study, "carried"):
        _initialize_stage(s, study, index, carried, decided_by)
    stage_run = study.user_attrs["mlflow_stage_run"]
    if "winner" in study.user_attrs:  # finished in an earlier run: keep its winner as it was
        result = StageResult(**study.user_attrs["winner"])
        s.log(f"stage {stage.name}: finished earlier, winner trial {result.trial} "
              f"({stage.metric} {result.value:.3f})")
        return result
    s.tracker.reopen(stage_run)
    status = "FAILED"
    try:
        result = _search(s, index, study, stage_run)
        status = "FINISHED"
    except GateNotReached:
        s.tracker.end(stage_run, "FAILED", outcome="target missed")
        raise
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":  # never leave the stage's run RUNNING
            s.tracker.end(stage_run, status)
    study.set_user_attr("winner", asdict(result))
    s.tracker.log_params(stage_run, {"winner": result.params})
    s.tracker.log_metrics(stage_run, {f"winner_{k}": v for k, v in result.metrics.items()
                                      if k in METRICS})
    s.tracker.end(stage_run, outcome=result.status, winner_trial=result.trial,
                  winner_run=result.run_id)
    s.log(f"stage {stage.name}: winner trial {result.trial} ({result.status}): "
          f"{stage.metric} {result.value:.3f}  {result.params}")
    return result


def _search(s: Session, index: int, study: optuna.Study, stage_run: str) -> StageResult:
    cfg, stage = s.cfg, s.cfg.stages[index]
    base = apply_overrides(cfg.base, {**study.user_attrs["carried"], **stage.fixed})
    data = s.data.subset(stage.subset, cfg.data.seed) if stage.subset else s.data
    runner = TrialRunner(s, stage, study, stage_run, base, data, study.user_attrs["decided_by"])
    s.log(f"stage {stage.name}: {stage.goal or ''} [{stage.trials} trials, {stage.metric}]")
    # `timeout` bounds the stage's search across reruns: the seconds spent by earlier runs are
    # kept in the study (time between runs does not count; workers share one clock).
    spent, started = study.user_attrs.get("search_seconds", 0.0), time.monotonic()

    def elapsed() -> float:
        return spent + time.monotonic() - started

    with tqdm(total=stage.trials, desc=stage.name, unit="trial", leave=False,
              mininterval=1.0, disable=None) as bar:  # disable=None: no bar off a terminal
        while True:
            _close_lost_runs(s, study)
            trials = study.get_trials(deepcopy=False)
            done = sum(counts_toward_budget(t) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            bar.n = done
            bar.refresh()
            if reached_target(trials, stage) or done >= stage.trials:
                if running == 0:
                    break
            elif done + running < stage.trials and not (stage.timeout and elapsed() > stage.timeout):
                try:
                    study.optimize(runner.objective, n_trials=1, catch=(TrialFailed,))
                finally:
                    study.set_user_attr("search_seconds", max(
                        elapsed(), study.user_attrs.get("search_seconds", 0.0)))
                continue
            elif running == 0:
                break
            time.sleep(1.0)  # other workers still run trials of this stage
    return pick_winner(study.get_trials(deepcopy=False), stage)


def _close_lost_runs(s: Session, study: optuna.Study) -> None:
    """Trials whose worker died without a word: say so in MLflow instead of leaving RUNNING."""
    for t in fail_dead_trials(study):
        run_id = t.user_attrs["mlflow_run_id"]
        if run_id not in s.closed_runs and s.tracker.status(run_id) == "RUNNING":
            s.tracker.end(run_id, "FAILED", state="FAIL", error="worker lost (killed or crashed)")
        s.closed_runs.add(run_id)


def _initialize_stage(s: Session, study: optuna.Study, index: int, carried: dict[str, Any],
                      decided_by: dict[str, str]) -> None:
    """Done once per stage, by the worker that created its study; `carried` goes last, as
    the sign for the other workers that the stage is ready."""
    stage = s.cfg.stages[index]
    stage_run = s.tracker.new_run(s.experiment_id, stage.name, parent=s.study_run,
                                  kind="stage", stage=stage.name, goal=stage.goal, index=index)
    s.tracker.log_params(stage_run, {"carried": carried, "metric": stage.metric,
                                     "trials": stage.trials, "target": stage.target})
    study.set_user_attr("mlflow_stage_run", stage_run)
    study.set_user_attr("index", index)
    study.set_user_attr("goal", stage.goal)
    study.set_user_attr("decided_by", decided_by)
    if not any(t.user_attrs.get("seed_trial") for t in study.get_trials(deepcopy=False)):
        for seeded in stage.seed_trials:
            study.enqueue_trial(encode_params(seeded), user_attrs={"seed_trial": True})
    study.set_user_attr("carried", carried)


def _wait_for(study: optuna.Study, attr: str, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while attr not in study.user_attrs:
        if time.monotonic() > deadline:
            return False  # its creator died before finishing: take over
        time.sleep(0.5)
    return True
