"""One trial, top to bottom: plan (its role, settings, seed and fold) -> reuse a training on
record, or train -> its value. What it shares with other workers goes through state.py, what
MLflow shows through mirror.py. Also the `train` command: one tracked training outside any
search.

The exception policy of a trial lives here. Only the trial's own failures end it as FAIL
while the search goes on: a loss that is no longer finite, running out of memory, or
settings that cannot be built. Anything else stops the run and leaves the trial queued to
be retried on rerun: a signal (exit 130), an error the user can fix (one line, exit 2) or a
bug (its traceback, printed and saved on the trial's MLflow run, exit 1)."""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
import traceback
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial

from asl_sweep.data.studydata import SplitData
from asl_sweep.runtime import signals
from asl_sweep.runtime.errors import ConfigError, SettingsError, environment_fault
from asl_sweep.search.mirror import TrialRun
from asl_sweep.search.optuna_api import frozen_of, storage_of, trial_id_of
from asl_sweep.search.progress import EpochProgress
from asl_sweep.search.reuse import done_before, forget, remember, training_key
from asl_sweep.search.session import Session, open_session
from asl_sweep.search.space import changed_settings, changed_since, suggest
from asl_sweep.search.state import (
    FIXED_PARAMS,
    Failure,
    Requeue,
    Role,
    TrialKey,
    TrialOutcome,
    beating,
    origin_of,
    retries_of,
)
from asl_sweep.settings.config import TrainConfig, apply_overrides, get_path
from asl_sweep.settings.spec import StageConfig, StudyConfig
from asl_sweep.training.train import EpochStats, Monitor, TrainResult, crossfit_step, train

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

    role: Role
    cfg: TrainConfig
    params: dict[str, Any]  # the searched settings it sets ({} for the incumbent)
    repeat: int
    fold: int
    of_previous_family: bool = False  # the second incumbent of a stage that switches family
    number: int = 0  # its number in the stage
    name: str = ""  # its MLflow run's name


class TrialRunner:
    """Runs the trials of one stage. `number_offset` is the number the study's trial 0 has
    in the stage: 0, or, in the stage's repeats study, the plan's first repeat number
    (store.stage_trials)."""

    def __init__(self, session: Session, stage: StageConfig, study: optuna.Study,
                 stage_run: str, base: TrainConfig, decided_by: dict[str, str], uid: str,
                 use_folds: bool, reference: TrainConfig | None = None,
                 number_offset: int = 0, show_bar: bool = False):
        self.session, self.stage, self.study, self.stage_run = session, stage, study, stage_run
        self.number_offset = number_offset
        self.base, self.decided_by, self.uid, self.use_folds = base, decided_by, uid, use_folds
        # In a stage that switches model family: the configuration the earlier stages
        # carried, trained as it is (a second incumbent; not this stage's `fixed`).
        self.reference = reference
        self.show_bar = show_bar
        self.confirm = stage.confirmation

    def for_repeats(self, study: optuna.Study, number_offset: int) -> TrialRunner:
        """This runner for the stage's confirmation repeats, trained in `study`."""
        runner = copy.copy(self)
        runner.study, runner.number_offset = study, number_offset
        return runner

    def objective(self, trial: optuna.Trial) -> float:
        # The trial beats from its first moment: its MLflow bookkeeping before training can
        # take long on a loaded server, and a trial silent for GRACE_S is failed and queued
        # again by other workers.
        with beating(self.study, trial_id_of(trial)):
            frozen = frozen_of(trial)  # as it was taken: its role, repeat, retry history
            plan = self.plan(trial, frozen)
            key = self.training_key(plan)
            if key is not None:
                before = self._on_record(key, plan)
                if before is not None:
                    return self._reuse(trial, plan, before)
            run = self._open_run(trial, plan, frozen)
            result, value = self._train(trial, plan, run, frozen)
            if key is not None and result.checkpoint is not None:
                remember(self.session.record, key, {
                    "trained_by": f"stage {self.stage.name}, trial {plan.number}",
                    "run_id": run.run_id, "metrics": result.best.scores(),
                    "last": result.history[-1].scores(), "num_params": result.num_params,
                    "curve": [[h.epoch, h.metric(self.stage.metric)] for h in result.history],
                    "value": value, "crossfit": self.crossfit(plan, result)})
            return value

    def folds(self, plan: Plan) -> int:
        """Over how many person folds this trial's value is the mean: the stage's `folds`
        for the trials the search compares (not race repeats, one fold each), at most the
        folds the split has."""
        return 1 if plan.role == Role.CONFIRM else self.search_folds

    @property
    def search_folds(self) -> int:
        """Over how many folds the search's trials are the mean: the stage's `folds`, at most
        as many as the split has; 1 where validation does not change fold."""
        if not self.use_folds:
            return 1
        return min(self.stage.folds, len(self.session.data.splits.folds))

    def _other_folds(self, plan: Plan) -> list[float]:
        """The trial's settings trained on folds 1..k-1 as well (no pruning: the first
        fold's curve decided that): each fold's value."""
        values = []
        for fold in range(1, self.folds(plan)):
            shown = EpochProgress(f"{self.stage.name} trial {plan.number} (fold {fold + 1} "
                                  f"of {self.folds(plan)})", plan.cfg.epochs,
                                  self.stage.shown_metric, self.session.log, bar=self.show_bar)
            try:
                def on_epoch(s: EpochStats, shown: EpochProgress = shown) -> None:
                    shown(s.epoch, s.metric(self.stage.metric), s.images_per_s)

                other = train(plan.cfg, self.data(plan, fold), self.session.device, on_epoch, None,
                              Monitor(self.stage.metric, self.stage.direction),
                              cache_dir=self.session.ws.cache)
            finally:
                shown.close()
            values.append(other.best.metric(self.stage.metric))
        return values

    def plan(self, trial: optuna.Trial, frozen: FrozenTrial) -> Plan:
        """What the trial trains: its settings (sampled, or the incumbent's), seed and fold.
        `frozen`: the trial as it was queued (its role, repeat, ...)."""
        queued = frozen.user_attrs
        role = Role(queued.get(TrialKey.ROLE, Role.SEARCH))
        of_incumbent = role == Role.INCUMBENT or queued.get(TrialKey.INCUMBENT, False)
        params = {} if of_incumbent else self.sample(trial, frozen)
        repeat = int(queued.get(TrialKey.REPEAT, 0))
        previous = bool(queued.get(TrialKey.PREVIOUS_FAMILY)) and self.reference is not None
        cfg = self.reference if previous else apply_overrides(self.base, params)
        if repeat:  # repeat r: seed r (and fold r): paired with every other config's repeat r
            cfg = cfg.model_copy(update={"seed": self.base.seed + repeat})
        if self.stage.target is not None and cfg.early_stop is not None:
            # A gate asks whether a trial can reach its target at all: never cut it short
            # (early stopping would stop an overfit gate's trial before it gets there).
            cfg = cfg.model_copy(update={"early_stop": None})
        number = self.number_offset + trial.number
        name = f"{self.stage.name}-{number}" + {
            Role.INCUMBENT: "-previous-family" if previous else "-incumbent",
            Role.SEED: "-seed", Role.SEARCH: "",
            Role.CONFIRM: f"-confirms-{queued.get(TrialKey.CONFIRMS)}-r{repeat}"}[role]
        return Plan(role, cfg, params, repeat, repeat if self.use_folds else 0, previous,
                    number, name)

    def sample(self, trial: optuna.Trial, frozen: FrozenTrial) -> dict[str, Any]:
        """A search trial's settings: the whole space, or with `moves` the next levers, each
        moved off the start's value (a choice never draws the value the start has); a
        trial queued with settings (a retry, a race repeat) takes those. A stage with seed
        trials keeps every choice: a seed trial may set a lever to the start's value, and
        Optuna needs the same choices in every trial of a stage."""
        fixed = frozen.system_attrs.get(FIXED_PARAMS)
        only = changed_settings(self.stage.space, trial.number, self.stage.moves, fixed)
        return suggest(trial, self.stage.space, only, self.moved_from(only))

    def moved_from(self, names) -> dict[str, Any] | None:
        """The start's value of each of `names` that a move must change (see `sample`);
        None where the stage does not move levers or has seed trials."""
        if names is None or self.stage.moves is None or self.stage.seed_trials:
            return None
        tree = self.base.model_dump()
        # the start's image size is the one it trains at, where base leaves it to the stage
        tree["image_size"] = stage_image_size(self.session.cfg, self.stage, self.base)
        return {name: get_path(tree, name) for name in names}

    def check_space(self, trials: list[FrozenTrial]) -> None:
        """A stage resumed after its space was edited: Optuna cannot draw a choice whose
        values changed under the trials it already drew (its sampler fails deep inside), so
        say which setting, and what to do, before anything runs."""
        changed = changed_since(trials, self.stage.space, self.moved_from(self.stage.space))
        if changed:
            index = self.session.cfg.stages.index(self.stage)
            name, then, now = changed
            raise ConfigError(
                f"study {self.session.cfg.study}, stage {self.stage.name}: "
                f"stages.{index}.space.{name} is {now}, but the stage's trials so far were "
                f"drawn from {then}, and a stage resumes only over the same values: restore "
                f"them to resume it, or start a new study with --set study=NEW")

    def image_size(self, plan: Plan) -> int:
        # The previous family trains at its own size, not the one this stage sets.
        stage = None if plan.of_previous_family else self.stage
        return stage_image_size(self.session.cfg, stage, plan.cfg)

    def data(self, plan: Plan, fold: int | None = None) -> SplitData:
        """The plan's images: its own fold, or `fold`."""
        data = self.session.data.split(self.image_size(plan),
                                       plan.fold if fold is None else fold)
        if self.stage.subset:
            return data.subset(self.stage.subset, self.session.cfg.data.seed)
        return data

    def step(self, plan: Plan) -> float:
        """The least change one validation image of the plan's fold makes to the value a
        race compares (the cross-fitted metric: training.train.crossfit; the step a race's
        values come in: search/racing.py). A subset stage trains on fewer images and
        validates on the fold's whole validation split."""
        data = self.session.data.split(self.image_size(plan), plan.fold)
        return crossfit_step(self.stage.metric, len(data.y_val), data.val_people)

    def crossfit(self, plan: Plan, result: TrainResult) -> float | None:
        """The value a race compares for this trial (its fold's best epoch, chosen and scored
        on different halves of the validation people); None for a trial whose value is the
        mean over several folds (a search trial, never a race's evidence)."""
        return result.crossfit if self.folds(plan) == 1 else None

    def decided(self, plan: Plan) -> dict[str, str]:
        """Which stage decided each setting the trial trains with."""
        return {**self.decided_by, **{name: self.stage.name for name in plan.params}}

    def training_key(self, plan: Plan) -> str | None:
        """What this trial's training is on record as (search/reuse.py); None where the
        study trains every trial afresh."""
        if not self.session.cfg.reuse_trainings:
            return None
        return training_key(settings_digest(plan.cfg), self.image_size(plan), plan.fold,
                            self.stage.subset, self.stage.metric, self.stage.direction,
                            self.folds(plan))

    def _on_record(self, key: str, plan: Plan) -> dict[str, Any] | None:
        """The training on record under `key`, if its checkpoint is still there: one whose
        checkpoint was deleted since (a disk cleaned by hand, a lost artifact file) is
        forgotten, and this trial trains."""
        before = done_before(self.session.record, key)
        if before is None or self.session.mirror.has_checkpoint(before["run_id"]):
            return before
        forget(self.session.record, key)
        self.session.log(f"trial {plan.number}: the training it would reuse "
                         f"({before['trained_by']}) has lost its checkpoint; training again")
        return None

    def retrain(self, frozen: FrozenTrial) -> None:
        """Train a finished trial's settings, seed and fold again, and put the checkpoint
        back on its run: for a repeat of the carried configuration whose checkpoint was
        deleted since (the final score, evaluate and export read it)."""
        plan = self.plan(frozen, frozen)  # a FrozenTrial answers suggest_* with its params
        session, run_id = self.session, frozen.user_attrs[TrialKey.RUN]
        session.log(f"trial {plan.number}: its checkpoint (run {run_id}) is gone; training "
                    "it again, with the same settings, seed and fold")
        run_dir = session.ws.runs / session.cfg.study / self.stage.name / f"retrain-{run_id}"
        with signals.trial_running():
            result = train(plan.cfg, self.data(plan), session.device, lambda _: None, run_dir,
                           Monitor(self.stage.metric, self.stage.direction),
                           cache_dir=session.ws.cache)
        session.mirror.checkpoint_restored(run_id, result)
        shutil.rmtree(run_dir, ignore_errors=True)

    def _reuse(self, trial: optuna.Trial, plan: Plan, before: dict[str, Any]) -> float:
        """The trial's training is on record: its result and checkpoint stand for this trial
        (its MLflow run is the one that trained it, every epoch). Its curve is reported again
        where a pruner compares later trials with it, as with any other: in a stage that
        prunes, not in its repeats study (a repeat is never compared), a storage call an epoch
        saved where nothing reads it."""
        if self.stage.pruner != "none" and plan.role != Role.CONFIRM:
            for epoch, value in before.get("curve", []):
                trial.report(value, epoch)
        trial.set_user_attr(TrialKey.RUN, before["run_id"])
        trial.set_user_attr(TrialKey.OUTCOME, TrialOutcome(
            before["metrics"], before["last"], before["num_params"], plan.fold,
            self.decided(plan), reused_from=before["trained_by"],
            step=self.step(plan), crossfit=before.get("crossfit")).stored())
        return float(before.get("value", before["metrics"][self.stage.metric]))

    def _open_run(self, trial: optuna.Trial, plan: Plan, frozen: FrozenTrial) -> TrialRun:
        """The trial's MLflow run, its id on the trial."""
        origin = self.number_offset + origin_of(frozen)
        tags = {"stage": self.stage.name, "trial_number": str(plan.number),
                "optuna_study": self.study.study_name, "optuna_trial": str(trial.number),
                "role": plan.role, "repeat": str(plan.repeat), "fold": str(plan.fold),
                "seed": str(plan.cfg.seed),
                **({"retry_of": origin} if origin != plan.number else {}),
                **({"confirms": frozen.user_attrs[TrialKey.CONFIRMS]}
                   if plan.role == Role.CONFIRM else {})}
        return self.session.mirror.trial_opened(
            plan.name, self.stage_run, plan.cfg, tags, self.decided(plan),
            self.session.data.datasets(self.data(plan)), self.stage.metric,
            named=lambda run_id: trial.set_user_attr(TrialKey.RUN, run_id))

    def _train(self, trial: optuna.Trial, plan: Plan, run: TrialRun,
               frozen: FrozenTrial) -> TrainResult:
        """Train the trial under its exception policy (the module's docstring); mirror how
        it ended."""
        session, stage, mirror = self.session, self.stage, self.session.mirror
        origin = self.number_offset + origin_of(frozen)
        run_dir = session.ws.runs / session.cfg.study / stage.name / f"trial-{origin}"
        identity = {"study": session.cfg.study, "stage": stage.name, "stage_uid": self.uid,
                    "trial": str(origin), "settings": settings_digest(plan.cfg)}
        prunable = plan.role == Role.SEARCH and stage.pruner != "none"
        what = (f" (repeat {plan.repeat} of trial {frozen.user_attrs.get(TrialKey.CONFIRMS)})"
                if plan.role == Role.CONFIRM else "")
        shown = EpochProgress(f"{stage.name} trial {plan.number}{what}", plan.cfg.epochs,
                              stage.shown_metric, session.log, bar=self.show_bar)

        def on_epoch(stats: EpochStats) -> None:
            run.epoch(stats)
            shown(stats.epoch, stats.metric(stage.metric), stats.images_per_s)
            trial.report(stats.metric(stage.metric), stats.epoch)
            if prunable and trial.should_prune():
                why = getattr(trial.study.pruner, "reason", "")
                if why:  # the incumbent pruner says what it compared the trial with
                    trial.set_user_attr(TrialKey.PRUNED_BY, why)
                raise optuna.TrialPruned(f"pruned at epoch {stats.epoch}"
                                         + (f": {why}" if why else ""))

        # Behind a tracking server no folder is shared: resume points go to the trial's run
        # too, and a retry on another machine starts from its last attempt's.
        remote = session.ws.tracking_server
        before = self._previous_attempt(frozen) if remote else None
        if before is not None and not (run_dir / "last.pt").exists():
            if mirror.fetch_resume_points(before, run_dir):
                session.log(f"trial {plan.number}: resuming from the resume point of its last "
                            "attempt")
        try:
            try:
                with signals.trial_running(), mirror.training(run):
                    result = train(plan.cfg, self.data(plan), session.device, on_epoch, run_dir,
                                   Monitor(stage.metric, stage.direction),
                                   cache_dir=session.ws.cache, identity=identity,
                                   on_resume_point=mirror.resume_points(run) if remote
                                   else None)
                    shown.close()
                    values = [result.best.metric(stage.metric), *self._other_folds(plan)]
            finally:
                shown.close()
            trial.set_user_attr(TrialKey.OUTCOME, TrialOutcome(
                result.best.scores(), result.history[-1].scores(), result.num_params, plan.fold,
                self.decided(plan), fold_values=values if len(values) > 1 else None,
                step=self.step(plan), crossfit=self.crossfit(plan, result)).stored())
            if len(values) > 1:
                mirror.fold_values(run, stage.metric, values)
            mirror.trial_finished(run, plan.cfg, result, run_dir,
                                  f"{stage.name} trial {plan.number}",
                                  [run.run_id, before] if remote else [])
        except optuna.TrialPruned as e:
            mirror.trial_pruned(run, str(e))
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        except OWN_FAILURES as e:
            trial.set_user_attr(TrialKey.FAILURE, Failure.ERROR)
            mirror.trial_failed(run, f"{type(e).__name__}: {e}")
            shutil.rmtree(run_dir, ignore_errors=True)
            session.log(f"trial {plan.number} failed: {type(e).__name__}: {e}")
            raise TrialFailed(str(e)) from e
        except (KeyboardInterrupt, SystemExit):
            self._stop(trial, run.run_id, Failure.INTERRUPTED, "KILLED")
            raise
        except Exception as e:
            fault = environment_fault(e)  # a user error, or a disk that is full or read-only
            if fault is not None:
                self._stop(trial, run.run_id, Failure.STOPPED, "FAILED", str(fault))
                if fault is e:
                    raise
                raise fault from e
            self._stop(trial, run.run_id, Failure.CRASHED, "FAILED",
                       f"{type(e).__name__}: {e}", traceback.format_exc())
            raise
        shutil.rmtree(run_dir, ignore_errors=True)  # its checkpoint now lives in MLflow
        return result, sum(values) / len(values)

    def _previous_attempt(self, frozen: FrozenTrial) -> str | None:
        """The MLflow run of this trial's last failed attempt (None for a first attempt)."""
        history = retries_of(frozen)
        if not history:
            return None
        last = next(t for t in self.study.get_trials(deepcopy=False) if t.number == history[-1])
        return last.user_attrs.get(TrialKey.RUN)

    def _stop(self, trial: optuna.Trial, run_id: str, why: Failure, status: str,
              error: str = "", trace: str = "") -> None:
        """Not the trial's fault: queue it again with the same settings (it resumes from its
        checkpoint on rerun), close its MLflow run, and let the run stop."""
        undone = []  # the original error is what the user must see: these, one line
        try:  # the queue first: it is what a rerun needs
            trial.set_user_attr(TrialKey.FAILURE, why)
            Requeue()(self.study, storage_of(self.study).get_trial(trial_id_of(trial)))
        except Exception as e:
            undone.append(f"not queued again yet ({_cause(e, 'the Optuna store')})")
        try:
            self.session.mirror.trial_stopped(run_id, status, error, trace)
        except Exception as e:
            undone.append(f"its MLflow run not closed yet ({_cause(e, 'the MLflow store')})")
        if undone:
            log.warning("trial %s: %s; the next run does it",
                        self.number_offset + trial.number, "; ".join(undone))


def _cause(e: BaseException, store: str) -> str:
    """Why a store did not take a write, as one short clause: a full disk, a read-only folder
    or a damaged file said as such (Optuna's own wrapper of a full disk blames 'invalid data
    in the commit'), anything else as its first line."""
    fault = environment_fault(e, store)
    return str(fault).split(";")[0] if fault is not None else _first_line(e)


def _first_line(e: BaseException, limit: int = 160) -> str:
    """An error as one line: its type and its message's first line, whole words only."""
    text = str(e).splitlines()[0] if str(e).strip() else ""
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def train_once(cfg, ws, log=print) -> TrainResult:
    """`asl-sweep train`: the base settings once, tracked as a run of the study's experiment."""
    session = open_session(cfg, ws, log)
    mirror = session.mirror
    run = mirror.single_training(cfg.base)
    run_dir = ws.runs / cfg.study / "train" / run.run_id

    def on_epoch(stats: EpochStats) -> None:
        run.epoch(stats)
        log(f"epoch {stats.epoch:3d}  train {stats.train_loss:.3f} / {stats.train_acc:.3f}  "
            f"val {stats.val_loss:.3f} / {stats.val_acc:.3f}  {stats.images_per_s:.0f} img/s")

    status = "FAILED"
    try:
        with mirror.training(run):
            data = session.data.split(stage_image_size(cfg, None, cfg.base))
            result = train(cfg.base, data, session.device, on_epoch, run_dir,
                           cache_dir=ws.cache)
        mirror.training_logged(run.run_id, cfg.base, result, run_dir, "train", curves=True)
        status = "FINISHED"
        b = result.best
        log(f"best epoch {b.epoch}: train acc {b.train_acc:.3f}, val acc {b.val_acc:.3f}, "
            f"{result.num_params:,} parameters")
        log(f"recorded: MLflow run {run.run_id} of experiment {cfg.study} (its settings, "
            "epochs, checkpoint and curves; split: validation, no test score)")
        return result
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        mirror.run_ended(run.run_id, status)
        mirror.study_ended(status)
        # Its checkpoint and curves are on its MLflow run now; a lone training never resumes,
        # so its working folder would only count as a trial in flight in `status`.
        shutil.rmtree(run_dir, ignore_errors=True)
