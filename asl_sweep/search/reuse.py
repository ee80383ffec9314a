"""Trainings a study has already done, found again by what determines them.

A stage's incumbent is the configuration the stage before it carried: the same settings,
seeds and validation folds that stage trained as its own incumbent or as the candidate it
adopted. Training them again measures nothing new, so a trial whose training is already on
record (the same resolved settings, seed included, on the same images at the same size and
fold, its best epoch chosen by the same metric) takes that training's result and checkpoint
instead of training. Only finished trainings whose checkpoint is still kept are on record.

The entries live on the study record (one attribute per training, so workers that finish
at once do not overwrite each other); a checkpoint deleted once its stage has decided takes
its entry with it. The study setting `reuse_trainings: false` trains every trial afresh."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna

from asl_sweep.search.state import TRAINED_PREFIX, read, write


def training_key(settings: str, image_size: int, fold: int, subset: int | None,
                 metric: str, direction: str, folds: int = 1) -> str:
    """What determines a training's result: its resolved settings (`settings_digest`, the
    seed included), its images (size, validation fold, subset), how its best epoch is
    chosen, and over how many folds its value is the mean. The study record is bound to the
    data, so the data itself is the same."""
    what = [settings, image_size, fold, subset, metric, direction]
    what = json.dumps(what if folds == 1 else [*what, folds])  # keys before `folds` hold
    return hashlib.sha256(what.encode()).hexdigest()[:20]


def done_before(record: optuna.Study, key: str) -> dict[str, Any] | None:
    """The training on record under `key`, if its checkpoint is still kept."""
    return read(record).get(TRAINED_PREFIX + key) or None


def remember(record: optuna.Study, key: str, entry: dict[str, Any]) -> None:
    write(record, TRAINED_PREFIX + key, entry)


def forget(record: optuna.Study, key: str) -> None:
    """Its checkpoint is gone: no later trial may stand on it."""
    write(record, TRAINED_PREFIX + key, None)


def forget_runs(record: optuna.Study, run_ids: set[str]) -> None:
    """The trainings of these MLflow runs, whose checkpoints are being deleted: forgotten
    (one read of the record, a write for each one on record)."""
    for name, entry in read(record).items():
        if name.startswith(TRAINED_PREFIX) and entry and entry.get("run_id") in run_ids:
            write(record, name, None)
