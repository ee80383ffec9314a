"""Staged search: each stage is an Optuna study that starts from `base` plus the winners of
the stages before it. Optuna holds the truth (trials, states, winners); MLflow mirrors it
as study -> stage -> trial runs. A rerun continues where the last one stopped."""

from __future__ import annotations

import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
import sqlalchemy.exc
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from asl_sweep.backbones import WeightsError
from asl_sweep.config import (
    METRICS,
    StageConfig,
    StudyConfig,
    TrainConfig,
    apply_overrides,
    dump_resolved,
)
from asl_sweep.data import DataError, SplitData, load_image_set, prepare_split
from asl_sweep.plots import plot_curves
from asl_sweep.space import decode_params, encode_params, grid, suggest
from asl_sweep.tracking import Tracker
from asl_sweep.train import EpochStats, Monitor, TrainResult, resolve_device, train
from asl_sweep.workspace import Workspace

# Trial failures are reported by asl-sweep itself, in one line, not as Optuna tracebacks.
optuna.logging.set_verbosity(optuna.logging.ERROR)
# Heartbeats and retries are marked experimental in Optuna but are what keep crashes honest.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# The metric that breaks ties between trials that reached a stage's target.
SECONDARY = {"train_acc": "val_acc", "val_acc": "train_acc",
             "val_loss": "val_acc", "train_loss": "val_acc"}
HEARTBEAT_S, GRACE_S = 5, 30


class GateNotReached(Exception):
    """A stage's target was reached by no trial and the stage says on_fail: stop."""


class TrialError(Exception):
    """A trial failed on its own (for example it diverged); the search goes on."""


@dataclass
class StageResult:
    stage: str
    trial: int
    value: float
    params: dict[str, Any]  # the winner's searched settings, carried into later stages
    metrics: dict[str, float]
    status: str  # best | target reached | target missed
    run_id: str = ""


@dataclass
class Session:
    """What every stage of one study shares: config, stores, data on the device."""

    cfg: StudyConfig
    ws: Workspace
    tracker: Tracker
    experiment_id: str
    study_run: str
    data: SplitData
    device: torch.device
    log: Callable[[str], None] = print
    results: list[StageResult] = field(default_factory=list)
    worker: int = 0


# ---------------------------------------------------------------- storage
def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Wait for a busy database instead of failing with "database is locked".
        engine_kwargs["connect_args"] = {"timeout": 120}
    else:
        engine_kwargs["pool_pre_ping"] = True
    def connect() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=3))

    try:
        return connect()
    except sqlalchemy.exc.SQLAlchemyError:
        # Two processes creating the tables of a new database at once: one wins, the
        # other finds them made a moment later.
        time.sleep(2.0)
        return connect()


def stage_study_name(cfg: StudyConfig, stage: StageConfig) -> str:
    return f"{cfg.study}.{stage.name}"


def load_stage_study(cfg: StudyConfig, stage: StageConfig, storage) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=stage_study_name(cfg, stage), storage=storage)
    except KeyError:
        return None


def create_stage_study(cfg: StudyConfig, index: int, storage,
                       worker: int = 0) -> tuple[optuna.Study, bool]:
    """The stage's Optuna study and whether this call created it (exactly one worker does).
    Each worker samples with its own seed; worker 0 keeps the configured one."""
    stage = cfg.stages[index]
    seed = stage.seed + 1000 * index + 7919 * worker
    if stage.sampler == "grid":
        sampler = optuna.samplers.GridSampler(grid(stage.space), seed=seed)
    elif stage.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, stage.trials // 3)))
    pruner = (optuna.pruners.NopPruner() if stage.pruner == "none" else
              optuna.pruners.MedianPruner(n_startup_trials=3,
                                          n_warmup_steps=max(1, cfg.base.epochs // 5)))
    name = stage_study_name(cfg, stage)
    try:
        return optuna.create_study(storage=storage, sampler=sampler, pruner=pruner,
                                   study_name=name, direction=stage.direction), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                 pruner=pruner), False


# ---------------------------------------------------------------- the whole study
def open_session(cfg: StudyConfig, ws: Workspace, log: Callable[[str], None] = print) -> Session:
    ws.prepare()
    device = resolve_device(cfg.base.device)
    started = time.perf_counter()
    image_set = load_image_set(cfg.data, ws.cache, log)
    data = prepare_split(image_set, cfg.data, device)
    source = cfg.data.root or f"built-in synthetic letters ({cfg.data.synthetic.per_class}/class)"
    log(f"data: {source}: {len(data.y_train)} train / {len(data.y_val)} val images, "
        f"{len(data.classes)} classes, {cfg.data.image_size}px, on {device} "
        f"({time.perf_counter() - started:.1f}s)")
    tracker = Tracker(ws)
    experiment_id = tracker.experiment(cfg.study)
    study_run = tracker.open_run(experiment_id, cfg.study, kind="study")
    tracker.log_params(study_run, {"data": cfg.data.model_dump(mode="json"),
                                   "stages": ",".join(s.name for s in cfg.stages)})
    return Session(cfg, ws, tracker, experiment_id, study_run, data, device, log)


def prepare_study(cfg: StudyConfig, ws: Workspace) -> None:
    """Decode the data and create the MLflow experiment and study run once, before
    several workers start (each would otherwise race to create them)."""
    ws.prepare()
    load_image_set(cfg.data, ws.cache)
    tracker = Tracker(ws)
    tracker.open_run(tracker.experiment(cfg.study), cfg.study, kind="study")
    optuna_storage(ws.storage)  # creates the Optuna tables


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
    base = apply_overrides(cfg.base, {**study.user_attrs["carried"], **stage.fixed})
    data = s.data.subset(stage.subset, cfg.data.seed) if stage.subset else s.data
    runner = TrialRunner(s, stage, study, stage_run, base, data, study.user_attrs["decided_by"])

    s.log(f"stage {stage.name}: {stage.goal or ''} [{stage.trials} trials, {stage.metric}]")
    started = time.monotonic()
    with tqdm(total=stage.trials, desc=stage.name, unit="trial", leave=False,
              mininterval=1.0, disable=None) as bar:  # disable=None: no bar off a terminal
        while True:
            fail_dead_trials(study, s.tracker)
            trials = study.get_trials(deepcopy=False)
            done = sum(counts_toward_budget(t) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            bar.n = done
            bar.refresh()
            if reached_target(trials, stage) or done >= stage.trials:
                if running == 0:
                    break
            elif done + running < stage.trials and not (
                    stage.timeout and time.monotonic() - started > stage.timeout):
                study.optimize(runner.objective, n_trials=1, catch=(TrialError,))
                continue
            elif running == 0:
                break
            time.sleep(1.0)  # other workers still run trials of this stage

    try:
        result = pick_winner(study.get_trials(deepcopy=False), stage)
    except GateNotReached:
        s.tracker.end(stage_run, "FAILED", outcome="target missed")
        raise
    study.set_user_attr("winner", asdict(result))
    s.tracker.log_params(stage_run, {"winner": result.params})
    s.tracker.log_metrics(stage_run, {f"winner_{k}": v for k, v in result.metrics.items()
                                      if k in METRICS})
    s.tracker.end(stage_run, outcome=result.status, winner_trial=result.trial,
                  winner_run=result.run_id)
    s.log(f"stage {stage.name}: winner trial {result.trial} ({result.status}): "
          f"{stage.metric} {result.value:.3f}  {result.params}")
    return result


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


def fail_dead_trials(study: optuna.Study, tracker: Tracker) -> None:
    """Fail RUNNING trials whose worker is gone, and queue their retry with the same
    settings. Heartbeats find them after GRACE_S; a worker process of this machine that no
    longer exists is known dead at once, so a rerun after kill -9 need not wait."""
    optuna.storages.fail_stale_trials(study)
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = t.user_attrs.get("worker", "").rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            try:
                if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    retry(study, storage.get_trial(t._trial_id))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker got there first
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and "failure" not in t.user_attrs and tracker.status(run_id) == "RUNNING":
            # Its worker died without a word: say so in MLflow instead of leaving RUNNING.
            tracker.end(run_id, "FAILED", state="FAIL", error="worker lost (killed or crashed)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def counts_toward_budget(t: FrozenTrial) -> bool:
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    # A trial that failed on its own used its turn; one killed or stale is retried.
    return t.state == TrialState.FAIL and t.user_attrs.get("failure") == "error"


def reached_target(trials: list[FrozenTrial], stage: StageConfig) -> bool:
    return any(t.state == TrialState.COMPLETE and stage.reached(t.value) for t in trials)


def pick_winner(trials: list[FrozenTrial], stage: StageConfig) -> StageResult:
    """With a target: among trials that reached it, the best by the other metric, then the
    fewest parameters. Without: the best by the stage metric."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise GateNotReached(f"stage {stage.name}: no trial completed "
                             f"({len(trials)} started); nothing to carry forward")
    sign = 1 if stage.direction == "maximize" else -1
    status = "best"
    if stage.target is not None:
        reached = [t for t in complete if stage.reached(t.value)]
        if reached:
            other = SECONDARY[stage.metric]
            other_sign = -1 if other.endswith("loss") else 1
            winner = min(reached, key=lambda t: (-other_sign * t.user_attrs["metrics"][other],
                                                 t.user_attrs["num_params"], t.number))
            status = "target reached"
        else:
            best = max(complete, key=lambda t: sign * t.value)
            message = (f"stage {stage.name}: no trial reached {stage.metric} "
                       f"{'>=' if sign > 0 else '<='} {stage.target} "
                       f"(best: {best.value:.4f}, trial {best.number})")
            if stage.on_fail == "stop":
                raise GateNotReached(message + "; give it more trials or epochs, or set "
                                     f"on_fail: continue in stage {stage.name}")
            winner, status = best, "target missed"
    else:
        winner = max(complete, key=lambda t: (sign * t.value, -t.number))
    return StageResult(stage=stage.name, trial=winner.number, value=float(winner.value),
                       params=decode_params(winner.params), metrics=winner.user_attrs["metrics"],
                       status=status, run_id=winner.user_attrs.get("mlflow_run_id", ""))


# ---------------------------------------------------------------- one trial
class TrialRunner:
    """Runs one Optuna trial: suggest -> train -> record, mirrored into an MLflow run."""

    def __init__(self, s: Session, stage: StageConfig, study: optuna.Study, stage_run: str,
                 base: TrainConfig, data: SplitData, decided_by: dict[str, str]):
        self.s, self.stage, self.study, self.stage_run = s, stage, study, stage_run
        self.base, self.data, self.decided_by = base, data, decided_by

    def objective(self, trial: optuna.Trial) -> float:
        s, stage = self.s, self.stage
        trials = self.study.get_trials(deepcopy=False)  # one read serves both checks below
        if self._surplus(trial, trials):
            trial.set_user_attr("failure", "surplus")
            raise TrialError("budget already taken by other workers")
        params = suggest(trial, stage.space)
        cfg = apply_overrides(self.base, params)
        origin = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(
            trials[trial.number])
        run_id = s.tracker.new_run(s.experiment_id, f"{stage.name}-{trial.number}",
                                   parent=self.stage_run, kind="trial", stage=stage.name,
                                   trial_number=str(trial.number), state="RUNNING")
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        decided = {**self.decided_by, **{name: stage.name for name in params}}
        trial.set_user_attr("decided_by", decided)
        s.tracker.log_params(run_id, cfg.model_dump(mode="json"))
        s.tracker.set_tags(run_id, **{f"decided_by.{k}": v for k, v in decided.items()},
                           **({"retry_of": origin} if origin is not None else {}))
        run_dir = s.ws.runs / s.cfg.study / stage.name / f"trial-{origin if origin is not None else trial.number}"

        epochs = s.tracker.epoch_log(run_id)

        def on_epoch(stats: EpochStats) -> None:
            epochs.add(stats)
            trial.report(stats.metric(stage.metric), stats.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {stats.epoch}")

        try:
            try:
                result = train(cfg, self.data, s.device, on_epoch, run_dir,
                               Monitor(stage.metric, stage.direction), cache_dir=s.ws.cache)
            finally:
                epochs.flush()  # whatever happened, the epochs so far are on record
        except optuna.TrialPruned:
            s.tracker.end(run_id, "FINISHED", state="PRUNED")
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr("failure", "interrupted")
            s.tracker.end(run_id, "KILLED", state="FAIL")
            raise
        except (WeightsError, DataError) as e:  # the user's to fix: stop, don't retry
            trial.set_user_attr("failure", "setup")
            s.tracker.end(run_id, "FAILED", state="FAIL", error=str(e)[:500])
            raise
        except Exception as e:
            trial.set_user_attr("failure", "error")
            s.tracker.end(run_id, "FAILED", state="FAIL", error=f"{type(e).__name__}: {e}"[:500])
            shutil.rmtree(run_dir, ignore_errors=True)
            s.log(f"trial {trial.number} failed: {type(e).__name__}: {e}")
            raise TrialError(str(e)) from e
        value = result.best.metric(stage.metric)
        trial.set_user_attr("metrics", {k: v for k, v in asdict(result.best).items()})
        trial.set_user_attr("num_params", result.num_params)
        self._record(run_id, cfg, result, run_dir)
        s.tracker.end(run_id, "FINISHED", state="COMPLETE")
        shutil.rmtree(run_dir, ignore_errors=True)  # its checkpoint now lives in MLflow
        return value

    def _surplus(self, trial: optuna.Trial, trials: list[FrozenTrial]) -> bool:
        """Workers that looked at the budget at the same moment may both start a trial; the
        later one (by trial number) steps back, so a stage runs exactly its budget."""
        ahead = sum(1 for t in trials if t.number < trial.number
                    and (t.state == TrialState.RUNNING or counts_toward_budget(t)))
        return ahead >= self.stage.trials

    def _record(self, run_id: str, cfg: TrainConfig, result: TrainResult, run_dir) -> None:
        record_result(self.s.tracker, run_id, cfg, result, run_dir,
                      f"{self.stage.name} trial {run_id[:8]}")


def record_result(tracker: Tracker, run_id: str, cfg: TrainConfig, result: TrainResult,
                  run_dir, title: str) -> None:
    """A finished training's summary metrics, curves, resolved config and best checkpoint."""
    best, history = asdict(result.best), result.history
    tracker.log_metrics(run_id, {f"best_{k}": best[k] for k in METRICS}
                        | {"best_epoch": result.best.epoch, "num_params": result.num_params})
    curves = plot_curves([h.epoch for h in history],
                         {k: [getattr(h, k) for h in history] for k in METRICS},
                         run_dir / "curves.png", title)
    config_file = run_dir / "config.yaml"
    config_file.write_text(dump_resolved(cfg))
    tracker.log_artifacts(run_id, [curves, config_file])
    if result.checkpoint is not None and result.checkpoint.exists():
        tracker.log_artifacts(run_id, [result.checkpoint], "checkpoints")


# ---------------------------------------------------------------- a single fixed run
def train_once(cfg: StudyConfig, ws: Workspace, log: Callable[[str], None] = print) -> TrainResult:
    """`asl-sweep train`: the base settings once, tracked as a run of the study's experiment."""
    s = open_session(cfg, ws, log)
    run_id = s.tracker.new_run(s.experiment_id, "train", parent=s.study_run, kind="train")
    s.tracker.log_params(run_id, cfg.base.model_dump(mode="json"))
    run_dir = ws.runs / cfg.study / "train" / run_id
    epochs = s.tracker.epoch_log(run_id)

    def on_epoch(stats: EpochStats) -> None:
        epochs.add(stats)
        log(f"epoch {stats.epoch:3d}  train {stats.train_loss:.3f} / {stats.train_acc:.3f}  "
            f"val {stats.val_loss:.3f} / {stats.val_acc:.3f}  {stats.images_per_s:.0f} img/s")

    status = "FAILED"
    try:
        try:
            result = train(cfg.base, s.data, s.device, on_epoch, run_dir, cache_dir=ws.cache)
        finally:
            epochs.flush()
        record_result(s.tracker, run_id, cfg.base, result, run_dir, "train")
        status = "FINISHED"
        return result
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        s.tracker.end(run_id, status)
        s.tracker.end(s.study_run, status)


# ---------------------------------------------------------------- reading a study back
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

    def best(self) -> FrozenTrial | None:
        complete = [t for t in self.trials if t.state == TrialState.COMPLETE]
        if not complete:
            return None
        sign = 1 if self.stage.direction == "maximize" else -1
        return max(complete, key=lambda t: sign * t.value)

    def ranked(self) -> list[FrozenTrial]:
        sign = 1 if self.stage.direction == "maximize" else -1
        complete = [t for t in self.trials if t.state == TrialState.COMPLETE]
        return sorted(complete, key=lambda t: (-sign * t.value, t.number))


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
