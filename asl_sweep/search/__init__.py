"""The staged Optuna search, in three rooms:

- the flow: `study` (stages: incumbent, search, race, decision), `trial` (one trial: plan ->
  reuse or train -> value), `pool` (this machine's worker processes), `evaluation` (scoring
  checkpoints; the final test score), `refit` (the final configuration trained again on
  every non-test person, `final_model: refit`);
- the state the workers share: `state` (every shared key, named once and typed; budgets,
  claims, beats, dead workers, requeues), on the stores `store` opens (and `optuna_api`, the
  only module that reaches inside Optuna); the study record `record` and trainings on
  record `reuse` keep theirs through it;
- the mirror in MLflow: `mirror` (one method per event of the search).

Pure rules beside them: `space` (the only caller of `trial.suggest_*`), `selection` and
`racing` (which trials count, what a stage adopts), `intervals` (the 95% intervals of
test scores from bootstrap draws), `pruning` (the incumbent pruner),
`stageview` (a stage seen whole),
`progress` (what the terminal shows), `plan` (what a study will do, before it runs),
`session` (what one process opens once).

This front door is what cli.py and results/ use. Its names load on first use, so reading a
finished study imports neither torch nor the trainer.

May import every layer below: `tracking`, `training`, `models`, `data`, `settings`,
`runtime`."""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module of search/ that defines it
_FRONT_DOOR = {
    # run a study, join one, one training
    "run_study": "study", "run_pool": "pool", "join_study": "pool",
    "resolve_workers": "pool", "train_once": "trial",
    # what a study will do, before it runs
    "plan_lines": "plan", "input_lines": "plan",
    # score stored checkpoints
    "score_trials": "evaluation", "summarize": "evaluation", "breakdown": "evaluation",
    "failure_lines": "evaluation", "confusion": "evaluation", "predict_labels": "evaluation",
    "final_candidates": "evaluation", "final_model_lines": "progress",
    "exported_kind": "progress",
    "load_refits": "evaluation", "refit_candidate": "evaluation",
    "score_final": "evaluation", "earlier_views": "evaluation", "views_lines": "progress",
    "expanded_tail": "intervals",
    "Scored": "evaluation", "TEST_RULE": "evaluation", "open_data": "session",
    # read a study back
    "optuna_storage": "store", "serve_proxy": "store", "load_stage_study": "store",
    "stage_trials": "store", "read": "state", "StageKey": "state", "TrialKey": "state",
    "Role": "state", "Failure": "state", "outcome_of": "state", "SEARCH_ROLES": "state",
    "gone_here": "state", "final_scorer": "state", "STUDY_RECORD": "state",
    "silent_trials": "store", "SummaryKey": "state",
    "StageView": "stageview",
    "StageResult": "selection", "role_of": "selection", "signed": "selection",
    "final_result": "record", "stored_data": "record", "recorded_study": "record",
    "recorded_studies": "record", "shown_settings": "progress",
}
__all__ = sorted(_FRONT_DOOR)


def __getattr__(name: str) -> Any:
    module = _FRONT_DOOR.get(name)
    if module is None:
        raise AttributeError(f"module 'asl_sweep.search' has no attribute {name!r}")
    return getattr(importlib.import_module(f"asl_sweep.search.{module}"), name)
