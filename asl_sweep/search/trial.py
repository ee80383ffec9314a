"""One trial: suggest -> train -> record, mirrored into an MLflow run; and the `train`
command, which is one tracked training outside any search.

The exception policy of a trial lives here. Only the trial's own failures end it as FAIL
while the search goes on: a loss that is no longer finite, running out of memory, or
settings that cannot be built. Anything else stops the run and leaves the trial queued to
be retried on rerun: a signal (exit 130), an error the user can fix (one line, exit 2) or a
bug (its traceback, printed and saved on the trial's MLflow run, exit 1)."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from asl_sweep.data.studydata import SplitData
from asl_sweep.runtime.errors import SettingsError, environment_fault
from asl_sweep.search.progress import EpochProgress
from asl_sweep.search.reuse import done_before, remember, training_key
from asl_sweep.search.selection import SEARCH_ROLES, counts_toward_budget, role_of
from asl_sweep.search.session import Session, open_session
from asl_sweep.search.space import suggest
from asl_sweep.search.store import Requeue, beating, origin_of, worker_id
from asl_sweep.settings.config import METRICS, TrainConfig, apply_overrides
from asl_sweep.settings.spec import StageConfig, StudyConfig
from asl_sweep.settings.studyfile import dump_resolved
from asl_sweep.tracking.tracker import Tracker
from asl_sweep.training.train import EpochStats, Monitor, TrainResult, train

# The trial's own failures: numbers that left the finite range, memory it could not get,
# settings that cannot be built. Everything else is not a search result.
OWN_FAILURES = (FloatingPointError, torch.OutOfMemoryError, SettingsError)
log = logging.getLogger(__name__)


class TrialFailed(Exception):
    """A trial failed on its own (see OWN_FAILURES); the search goes on."""


def stage_image_size(cfg: StudyConfig, stage: StageConfig | None, train_cfg: TrainConfig) -> int:
    """The size a trial's images are decoded at (each size once, into its own cache): the
    value this stage searches, else the stage's own `image_size`, else the trainer's
    (`image_size` in base, carried from an earlier stage, or fixed), else a transfer model's
    input size (the originals, not another stage's images upsampled), else data's."""
    searched = stage is not None and "image_size" in stage.space
    if searched and train_cfg.image_size:
        return train_cfg.image_size
    if stage is not None and stage.image_size:
        return stage.image_size
    if train_cfg.image_size:
        return train_cfg.image_size
    if train_cfg.model == "transfer":
        from asl_sweep.models.backbones import input_size

        return input_size(train_cfg.transfer.backbone)
    return cfg.data.image_size


def settings_digest(cfg: TrainConfig) -> str:
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


@dataclass
class Plan:
    """What one trial trains: its role, settings, seed and validation fold."""

    role: str  # incumbent | seed | search | confirm
    cfg: TrainConfig
    params: dict[str, Any]  # the searched settings it sets ({} for the incumbent)
    repeat: int
    fold: int
    previous_family: bool = False  # the second incumbent of a stage that switches family


class TrialRunner:
    """Runs the trials of one stage. `phase` is "search" while the budget lasts, then
    "confirm": a sampled trial is then surplus and steps back. `first` is the number the
    study's trial 0 has in the stage: 0, or, in the stage's repeats study, the plan's
    first repeat number (store.stage_trials)."""

    def __init__(self, s: Session, stage: StageConfig, study: optuna.Study, stage_run: str,
                 base: TrainConfig, decided_by: dict[str, str], uid: str, use_folds: bool,
                 reference: TrainConfig | None = None, first: int = 0):
        self.s, self.stage, self.study, self.stage_run = s, stage, study, stage_run
        self.first = first
        self.base, self.decided_by, self.uid, self.use_folds = base, decided_by, uid, use_folds
        # In a stage that switches model family: the configuration the earlier stages
        # carried, trained as it is (a second incumbent; not this stage's `fixed`).
        self.reference = reference
        self.phase = "search"

    def moved(self, study: optuna.Study, first: int) -> TrialRunner:
        """This runner for the stage's confirmation repeats, trained in `study`."""
        runner = copy.copy(self)
        runner.study, runner.first, runner.phase = study, first, "confirm"
        return runner

    def plan(self, trial: optuna.Trial) -> Plan:
        role = trial.user_attrs.get("role", "search")
        of_incumbent = role == "incumbent" or trial.user_attrs.get("incumbent", False)
        params = {} if of_incumbent else suggest(trial, self.stage.space)
        repeat = int(trial.user_attrs.get("repeat", 0))
        previous = bool(trial.user_attrs.get("previous_family")) and self.reference is not None
        cfg = self.reference if previous else apply_overrides(self.base, params)
        if repeat:  # repeat r: seed r (and fold r): paired with every other config's repeat r
            cfg = cfg.model_copy(update={"seed": self.base.seed + repeat})
        if self.stage.target is not None and cfg.early_stop is not None:
            # A gate asks whether a trial can reach its target at all: never cut it short
            # (early stopping would stop an overfit gate's trial before it gets there).
            cfg = cfg.model_copy(update={"early_stop": None})
        return Plan(role, cfg, params, repeat, repeat if self.use_folds else 0, previous)

    def image_size(self, plan: Plan) -> int:
        # The previous family trains at its own size, not the one this stage sets.
        stage = None if plan.previous_family else self.stage
        return stage_image_size(self.s.cfg, stage, plan.cfg)

    def data(self, plan: Plan) -> SplitData:
        data = self.s.data.split(self.image_size(plan), plan.fold)
        return data.subset(self.stage.subset, self.s.cfg.data.seed) if self.stage.subset else data

    def decided(self, plan: Plan) -> dict[str, str]:
        """Which stage decided each setting the trial trains with."""
        return {**self.decided_by, **{name: self.stage.name for name in plan.params}}

    def training_key(self, plan: Plan) -> str | None:
        """What this trial's training is on record as (search/reuse.py); None where the
        study trains every trial afresh."""
        if not self.s.cfg.reuse_trainings:
            return None
        return training_key(settings_digest(plan.cfg), self.image_size(plan), plan.fold,
                            self.stage.subset, self.stage.metric, self.stage.direction)

    def objective(self, trial: optuna.Trial) -> float:
        # The trial beats from its first moment (where the storage has no heartbeat of its
        # own): its MLflow bookkeeping before training can take long on a loaded server,
        # and a trial silent for GRACE_S is failed and queued again by other workers.
        with beating(self.study, trial._trial_id):
            return self._objective(trial)

    def _objective(self, trial: optuna.Trial) -> float:
        s, stage = self.s, self.stage
        trials = self.study.get_trials(deepcopy=False)  # one read serves both checks below
        role = trial.user_attrs.get("role", "search")
        if role == "search" and (self.phase != "search" or self._surplus(trial, trials)):
            trial.set_user_attr("failure", "surplus")
            raise TrialFailed("budget already taken by other workers")
        plan = self.plan(trial)
        cfg = plan.cfg
        number = self.first + trial.number  # the trial's number in the stage
        key = self.training_key(plan)
        if key is not None:
            trial.set_user_attr("training_key", key)
            before = done_before(s.record, key)
            if before is not None:
                return self._reuse(trial, plan, before)
        origin = self.first + origin_of(trials[trial.number])
        name = f"{stage.name}-{number}" + {
            "incumbent": "-previous-family" if plan.previous_family else "-incumbent",
            "seed": "-seed", "search": "",
            "confirm": f"-confirms-{trial.user_attrs.get('confirms')}-r{plan.repeat}"}[plan.role]
        run_id = s.tracker.new_run(s.experiment_id, name, parent=self.stage_run, kind="trial",
                                   stage=stage.name, trial_number=str(number),
                                   optuna_study=self.study.study_name,
                                   optuna_trial=str(trial.number), state="RUNNING",
                                   role=plan.role, repeat=str(plan.repeat),
                                   fold=str(plan.fold), seed=str(cfg.seed))
        trial.set_user_attr("mlflow_run_id", run_id)
        decided = self._label(trial, plan)
        s.tracker.log_params(run_id, cfg.applicable())
        s.tracker.set_tags(run_id, **{f"decided_by.{k}": v for k, v in decided.items()},
                           **({"retry_of": origin} if origin != number else {}),
                           **({"confirms": trial.user_attrs["confirms"]}
                              if plan.role == "confirm" else {}))
        run_dir = s.ws.runs / s.cfg.study / stage.name / f"trial-{origin}"
        identity = {"study": s.cfg.study, "stage": stage.name, "stage_uid": self.uid,
                    "trial": str(origin), "settings": settings_digest(cfg)}
        epochs = s.tracker.epoch_log(run_id)
        prunable = plan.role == "search" and stage.pruner != "none"

        shown = EpochProgress(f"{stage.name} trial {number}", cfg.epochs, stage.metric,
                              s.log, bar=sys.stdout.isatty() and not os.environ.get(
                                  "ASL_SWEEP_NO_BAR"))

        def on_epoch(stats: EpochStats) -> None:
            epochs.add(stats.epoch, asdict(stats))
            shown(stats.epoch, stats.metric(stage.metric), stats.images_per_s)
            trial.report(stats.metric(stage.metric), stats.epoch)
            if prunable and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {stats.epoch}")

        data = self.data(plan)
        s.tracker.log_datasets(run_id, s.data.datasets(data))
        # Behind a tracking server no folder is shared: resume points go to the trial's run
        # too, and a retry on another machine starts from its last attempt's.
        remote = s.ws.tracking_server
        before = self._previous_attempt(trial, trials) if remote else None
        if before is not None and not (run_dir / "last.pt").exists():
            if s.tracker.fetch_folder(before, "resume", run_dir):
                s.log(f"trial {number}: resuming from the resume point of its last attempt")
        try:
            try:
                with s.tracker.system_metrics(run_id):
                    result = train(cfg, data, s.device, on_epoch, run_dir,
                                   Monitor(stage.metric, stage.direction),
                                   cache_dir=s.ws.cache, identity=identity,
                                   on_resume_point=(lambda best, last: s.tracker.log_artifacts(
                                       run_id, [best, last], "resume")) if remote else None)
            finally:
                shown.close()
                epochs.flush()  # whatever happened, the epochs so far are on record
            trial.set_user_attr("metrics", asdict(result.best))
            trial.set_user_attr("last", asdict(result.history[-1]))
            trial.set_user_attr("num_params", result.num_params)
            record_result(s.tracker, run_id, cfg, result, run_dir,
                          f"{stage.name} trial {number}")
            if remote:  # the resume points are spent
                for spent in (run_id, before):
                    if spent is not None:
                        s.tracker.delete_artifacts(spent, "resume")
            s.tracker.end(run_id, "FINISHED", state="COMPLETE")
            if key is not None and result.checkpoint is not None:
                remember(s.record, key, {
                    "trained_by": f"stage {stage.name}, trial {number}", "run_id": run_id,
                    "metrics": asdict(result.best), "last": asdict(result.history[-1]),
                    "num_params": result.num_params,
                    "curve": [[h.epoch, h.metric(stage.metric)] for h in result.history]})
        except optuna.TrialPruned:
            # MLflow has no "pruned": the pruner stopped it, so KILLED, and its name says so.
            s.tracker.rename(run_id, f"{name}-pruned")
            s.tracker.end(run_id, "KILLED", state="PRUNED")
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        except OWN_FAILURES as e:
            trial.set_user_attr("failure", "error")
            s.tracker.end(run_id, "FAILED", state="FAIL", error=f"{type(e).__name__}: {e}"[:500])
            shutil.rmtree(run_dir, ignore_errors=True)
            s.log(f"trial {number} failed: {type(e).__name__}: {e}")
            raise TrialFailed(str(e)) from e
        except (KeyboardInterrupt, SystemExit):
            self._stop(trial, run_id, "interrupted", "KILLED")
            raise
        except Exception as e:
            fault = environment_fault(e)  # a user error, or a disk that is full or read-only
            if fault is not None:
                self._stop(trial, run_id, "stopped", "FAILED", str(fault))
                if fault is e:
                    raise
                raise fault from e
            self._stop(trial, run_id, "crashed", "FAILED", f"{type(e).__name__}: {e}",
                       traceback.format_exc())
            raise
        shutil.rmtree(run_dir, ignore_errors=True)  # its checkpoint now lives in MLflow
        return result.best.metric(stage.metric)

    def _reuse(self, trial: optuna.Trial, plan: Plan, before: dict[str, Any]) -> float:
        """The trial's training is on record: its result and checkpoint stand for this trial
        (its MLflow run is the one that trained it). Its curve is reported again, so the
        pruner compares later trials with it as with any other."""
        for epoch, value in before.get("curve", []):
            trial.report(value, epoch)
        trial.set_user_attr("mlflow_run_id", before["run_id"])
        self._label(trial, plan)
        for k in ("metrics", "last", "num_params"):
            trial.set_user_attr(k, before[k])
        trial.set_user_attr("reused_from", before["trained_by"])
        return float(before["metrics"][self.stage.metric])

    def _label(self, trial: optuna.Trial, plan: Plan) -> dict[str, str]:
        """What every trial records of itself, trained or reused: its role, worker, fold and
        which stage decided each of its settings (returned)."""
        decided = self.decided(plan)
        for k, v in {"role": plan.role, "worker": worker_id(), "fold": plan.fold,
                     "decided_by": decided}.items():
            trial.set_user_attr(k, v)
        return decided

    def _previous_attempt(self, trial: optuna.Trial,
                          trials: list[FrozenTrial]) -> str | None:
        """The MLflow run of this trial's last failed attempt (None for a first attempt)."""
        history = trials[trial.number].system_attrs.get("retry_history", [])
        if not history:
            return None
        return trials[history[-1]].user_attrs.get("mlflow_run_id")

    def _stop(self, trial: optuna.Trial, run_id: str, why: str, status: str, error: str = "",
              trace: str = "") -> None:
        """Not the trial's fault: close its MLflow run, queue it again with the same
        settings (it resumes from its checkpoint on rerun) and let the run stop."""
        undone = []  # the original error is what the user must see: these, one line
        try:  # the queue first: it is what a rerun needs
            trial.set_user_attr("failure", why)
            Requeue()(self.study, self.study._storage.get_trial(trial._trial_id))
        except Exception as e:
            undone.append(f"queued again ({_first_line(e)})")
        try:
            if trace:
                self.s.tracker.log_text(run_id, trace, "error/traceback.txt")
            self.s.tracker.end(run_id, status, state="FAIL",
                               **({"error": error[:500]} if error else {}))
        except Exception as e:
            undone.append(f"its MLflow run closed ({_first_line(e)})")
        if undone:
            log.warning("trial %s: could not be %s; the next run does it",
                        self.first + trial.number, " nor ".join(undone))

    def _surplus(self, trial: optuna.Trial, trials: list[FrozenTrial]) -> bool:
        """Workers that looked at the budget at the same moment may both start a trial; the
        later one (by trial number) steps back, so a stage runs exactly its budget."""
        ahead = sum(1 for t in trials if t.number < trial.number and (
            counts_toward_budget(t) or (t.state == TrialState.RUNNING
                                        and role_of(t) in SEARCH_ROLES)))
        return ahead >= self.stage.trials


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:80]}" if str(e) else type(e).__name__


def record_result(tracker: Tracker, run_id: str, cfg: TrainConfig, result: TrainResult,
                  run_dir: Path, title: str, curves: bool = False) -> None:
    """A finished training's summary metrics, resolved config and best checkpoint. Its
    per-epoch curves are in MLflow already (the UI charts them); a PNG of them is drawn
    for a single `train` and for each stage's carried trial, not for every trial."""
    best, history = asdict(result.best), result.history
    tracker.log_metrics(run_id, {f"best_{k}": best[k] for k in METRICS}
                        | {"best_epoch": result.best.epoch, "num_params": result.num_params})
    tracker.log_text(run_id, dump_resolved(cfg), "config.yaml")
    if curves:
        from asl_sweep.tracking.plots import plot_curves  # matplotlib only where a PNG is drawn

        png = plot_curves([h.epoch for h in history],
                          {k: [getattr(h, k) for h in history] for k in METRICS},
                          run_dir / "curves.png", title)
        tracker.log_artifacts(run_id, [png])
    if result.checkpoint is not None and result.checkpoint.exists():
        tracker.keep_file(run_id, result.checkpoint, "checkpoints")


def train_once(cfg, ws, log=print) -> TrainResult:
    """`asl-sweep train`: the base settings once, tracked as a run of the study's experiment."""
    s = open_session(cfg, ws, log)
    run_id = s.tracker.new_run(s.experiment_id, "train", parent=s.study_run, kind="train")
    s.tracker.log_params(run_id, cfg.base.applicable())
    run_dir = ws.runs / cfg.study / "train" / run_id
    epochs = s.tracker.epoch_log(run_id)

    def on_epoch(stats: EpochStats) -> None:
        epochs.add(stats.epoch, asdict(stats))
        log(f"epoch {stats.epoch:3d}  train {stats.train_loss:.3f} / {stats.train_acc:.3f}  "
            f"val {stats.val_loss:.3f} / {stats.val_acc:.3f}  {stats.images_per_s:.0f} img/s")

    status = "FAILED"
    try:
        try:
            data = s.data.split(stage_image_size(cfg, None, cfg.base))
            result = train(cfg.base, data, s.device, on_epoch, run_dir, cache_dir=ws.cache)
        finally:
            epochs.flush()
        record_result(s.tracker, run_id, cfg.base, result, run_dir, "train", curves=True)
        status = "FINISHED"
        return result
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        s.tracker.end(run_id, status)
        s.tracker.end(s.study_run, status)
