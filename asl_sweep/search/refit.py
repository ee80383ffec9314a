"""The final configuration trained again on every non-test person (`final_model: refit`).

Once validation has chosen the configuration (and its epochs and test-time views), its
people have done their job: each repeat's settings and seed train once more on its fold's
training and validation people, for all its epochs (with early_stop, as many as its
best epoch), the last epoch kept (nothing is left that could choose one). Each is an
MLflow run under the study's (kind: refit), its checkpoint kept as a trial's; a rerun
reads a finished one back instead of training it again. evaluation.py scores and averages
them."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from asl_sweep.runtime import signals
from asl_sweep.search.session import Session
from asl_sweep.settings.config import TrainConfig
from asl_sweep.training.checkpoint import ModelFile
from asl_sweep.training.train import Monitor, train

log = logging.getLogger(__name__)

LAST_EPOCH = Monitor("epoch")  # the last epoch counts as best: no validation left to choose
TRAIN_METRICS = ("train_loss", "train_acc", "images_per_s")  # validation is in its training


def refit_runs(session: Session, repeats: list[tuple[int, int, ModelFile]]) -> list[str]:
    """For each repeat (trial, fold, its model file): the MLflow run of its refit, trained
    here unless a finished one is on record."""
    runs = []
    for trial, fold, file in repeats:
        signals.check()  # Ctrl-C / SIGTERM: stop between two refits; each finished one kept
        found = session.mirror.refit_run(trial)
        runs.append(found if found is not None else _train(session, trial, fold, file))
    return runs


def refit_config(file: ModelFile) -> TrainConfig:
    """The settings a repeat is trained again with: its own, except that where it stopped
    early (`early_stop`) the refit trains for its best epoch's count, as the usual refit
    after early stopping does: with nothing left to stop it, it trained every epoch (a
    repeat stopped at 12 of 200 epochs was refit for all 200)."""
    cfg = file.config
    if cfg.early_stop is None:
        return cfg
    return cfg.model_copy(update={"epochs": file.epoch, "early_stop": None})


def _train(session: Session, trial: int, fold: int, file: ModelFile) -> str:
    cfg = refit_config(file)
    data = session.data.split(file.spec.image_size, fold).every_person()
    mirror = session.mirror
    whose = "people" if session.data.groups is not None else "images"  # no group_pattern
    threads = torch.get_num_threads()
    run = mirror.refit_opened(trial, cfg, len(data.train_index), fold, whose, threads)
    epochs = (f"{cfg.epochs} epochs (its repeat's best epoch: early_stop)"
              if file.config.early_stop is not None else f"{cfg.epochs} epochs")
    session.log(f"refit of trial {trial} (final_model: refit): seed {cfg.seed}, {epochs} on "
                f"{len(data.train_index)} images, the training and validation {whose} of "
                f"fold {fold}; the last epoch kept; {threads} CPU thread"
                f"{'s' if threads != 1 else ''}")
    identity = {"study": session.cfg.study, "refit_of": str(trial)}
    try:
        with tempfile.TemporaryDirectory() as tmp, mirror.training(run):
            result = train(cfg, data, session.device,
                           lambda s: run.epochs.add(s.epoch, asdict(s), TRAIN_METRICS),
                           Path(tmp), LAST_EPOCH, session.ws.cache, identity)
            mirror.refit_finished(run, cfg, result, Path(tmp))
    except BaseException:
        # Stopped (a signal, a fault, a bug): its run closed, not left RUNNING; a rerun
        # trains it again. The close itself may meet the same fault: the first one counts.
        with contextlib.suppress(Exception):
            mirror.run_ended(run.run_id, "KILLED")
        raise
    log.debug("refit of trial %d: run %s", trial, run.run_id)
    return run.run_id
