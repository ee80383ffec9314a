"""The few places asl-sweep reaches inside Optuna, in one adapter.

Optuna's public API has no way to get at a study's storage and id, a trial's id, the class
that says a storage keeps heartbeats of its own, the trials whose heartbeats stopped (short
of failing them), or a tell that does not read the trial back; asl-sweep needs them to keep
its own attributes on studies and trials
(search/state.py), to beat where Optuna does not, and to spare a storage call a trial. Every
call here has a test (tests/search/test_optuna_api.py) that fails when Optuna changes it."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat  # not exported; Optuna checks it so
from optuna.study._tell import _tell_with_warning  # Study.tell, less its read-back


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes."""
    return study._storage


def study_id_of(study: optuna.Study) -> int:
    """The study's id in its storage."""
    return study._study_id


def trial_id_of(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its storage (a running Trial's or a FrozenTrial's)."""
    return trial._trial_id


def frozen_of(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """A running trial as it was read when it was taken (its attributes then, its retry
    history among them), without reading the storage again."""
    return trial._cached_frozen_trial


def tell(study: optuna.Study, trial: optuna.Trial, value: float | None = None,
         state: optuna.trial.TrialState | None = None) -> None:
    """Study.tell (the sampler's after_trial, a pruned trial's last value as its value, the
    state change), without reading the trial back to return it: the caller's next read of
    the study has it (a storage call a trial)."""
    _tell_with_warning(study, trial, value, state)


def keeps_heartbeats(storage: Any) -> bool:
    """Whether the storage records Optuna's heartbeats itself (the RDB storage does; the
    gRPC proxy does not)."""
    return isinstance(storage, BaseHeartbeat)


def stale_trial_ids(storage: Any, study_id: int) -> list[int]:
    """The ids of a study's RUNNING trials whose heartbeats stopped for the storage's grace
    period, by the storage's own clock (the check fail_stale_trials makes before it fails
    them; a storage that keeps heartbeats)."""
    return storage._get_stale_trial_ids(study_id)


def engine_of(storage: optuna.storages.RDBStorage) -> Any:
    """The SQLAlchemy engine of an RDB storage."""
    return storage.engine
