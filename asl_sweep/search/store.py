"""The Optuna side of a study: RDB storage (SQLite or PostgreSQL, or Optuna's gRPC proxy in
front of one), one Optuna study per stage for its search and one beside it for its
confirmation repeats, heartbeats, and dead workers: a trial whose worker is gone is failed
and queued again with the same settings, so it resumes from its checkpoint and no budget is
lost."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages._heartbeat import BaseHeartbeat  # not exported; Optuna checks it so
from optuna.trial import FrozenTrial, TrialState

from asl_sweep.runtime.errors import StoreError, environment_fault
from asl_sweep.runtime.outage import created_elsewhere, lost_connection, retrying
from asl_sweep.search.space import grid
from asl_sweep.settings.spec import StageConfig, StudyConfig

HEARTBEAT_S, GRACE_S, MAX_RETRY = 5, 30, 3
# The user attributes a retried trial keeps: what it is, not how its last attempt went.
KEPT_ON_RETRY = ("role", "confirms", "repeat", "incumbent", "seed_trial", "reported")
log = logging.getLogger(__name__)


class Requeue:
    """Queue a failed trial again with the same parameters and role, at most MAX_RETRY times
    (Optuna's heartbeat callback, also used for trials stopped by a signal or a fault)."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > MAX_RETRY:
            log.warning("trial %s failed %d times; not retried again", history[0], len(history))
            return
        system_attrs = {**{k: v for k, v in trial.system_attrs.items()
                           if k in ("fixed_params",)},
                        "failed_trial": history[0], "retry_history": history}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k in KEPT_ON_RETRY},
            system_attrs=system_attrs))


# What asl-sweep keeps on a study goes into Optuna's system attributes under this prefix:
# user attributes stay a short human-readable summary (what `optuna studies` prints).
PREFIX = "asl_sweep:"


def attrs(study: optuna.Study) -> dict[str, Any]:
    stored = study._storage.get_study_system_attrs(study._study_id)
    return {k[len(PREFIX):]: v for k, v in stored.items() if k.startswith(PREFIX)}


def put(study: optuna.Study, key: str, value: Any) -> None:
    """Set a study attribute. Two workers that add the same new key at once collide on the
    store's unique key: the later one then updates the row the earlier one made."""
    for attempt in range(3):
        try:
            study._storage.set_study_system_attr(study._study_id, PREFIX + key, value)
            return
        except optuna.exceptions.StorageInternalError:
            if attempt == 2:
                raise
            time.sleep(0.1 * (attempt + 1))


def wait_for(study: optuna.Study, key: str, seconds: float = 60.0) -> bool:
    """Whether `key` appears within `seconds` (another worker is writing it)."""
    deadline = time.monotonic() + seconds
    while key not in attrs(study):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, for studies that also hold queued trials (the incumbent, seed
    trials, repeats): those have no grid point, and Optuna's after_trial assumes they do."""

    def after_trial(self, study, trial, state, values) -> None:
        if "grid_id" in study._storage.get_trial_system_attrs(trial._trial_id):
            super().after_trial(study, trial, state, values)


def origin_of(trial: FrozenTrial) -> int:
    """The number of the first attempt of a (possibly retried) trial."""
    return trial.system_attrs.get("failed_trial", trial.number)


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose public calls ride out a database server that stops
    answering for a while (runtime.outage): a restart of PostgreSQL costs a pause, not the
    run."""

    def record_heartbeat(self, trial_id: int) -> None:
        # On the heartbeat's own thread: a beat missed while the server is away is no error
        # (the main thread's calls wait for it), and must not end the thread with a traceback.
        try:
            super().record_heartbeat(trial_id)
        except Exception as e:
            if lost_connection(e) is None:
                raise


def public_calls(storage: Any) -> list[str]:
    """The names of Optuna's storage API that `storage` (a class or an instance) has."""
    return [name for name in dir(optuna.storages.BaseStorage)
            if not name.startswith("_") and callable(getattr(storage, name, None))]


def _retry_public_calls(cls: type, base: type, store: str) -> None:
    for name in public_calls(base):
        if name not in ("record_heartbeat", "remove_session"):
            setattr(cls, name, retrying(getattr(base, name), store))


_retry_public_calls(RetryingRDBStorage, optuna.storages.RDBStorage,
                    "the Optuna store (--storage)")


def optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna store a URL names: a database (SQLite, PostgreSQL), or grpc://HOST:PORT,
    Optuna's own storage proxy (`asl-sweep store-proxy`) in front of one."""
    if url.startswith("grpc://"):
        return _grpc_storage(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Wait for a busy database instead of failing with "database is locked".
        engine_kwargs["connect_args"] = {"timeout": 120}
    else:
        engine_kwargs["pool_pre_ping"] = True

    def connect() -> optuna.storages.RDBStorage:
        kind = optuna.storages.RDBStorage if url.startswith("sqlite") else RetryingRDBStorage
        return kind(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S, heartbeat_stale_trial_callback=Requeue())

    try:
        return created_elsewhere(connect)
    except sqlalchemy.exc.OperationalError:
        # Two processes creating the tables of a new SQLite database at once: one wins, the
        # other finds them made a moment later.
        time.sleep(2.0)
        try:
            return created_elsewhere(connect)
        except sqlalchemy.exc.OperationalError as e:
            raise StoreError(f"{url}: the Optuna store cannot be opened "
                             f"({str(e.orig).splitlines()[0]})") from None


def _grpc_storage(url: str) -> optuna.storages.BaseStorage:
    host, _, port = url[len("grpc://"):].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise StoreError(f"{url}: a gRPC storage proxy is grpc://HOST:PORT")
    try:
        import grpc

        base = optuna.storages.GrpcStorageProxy
    except ImportError:
        raise StoreError(f"{url}: the gRPC storage proxy needs grpcio: pip install "
                         "'asl-sweep[grpc]'") from None

    class RetryingProxy(base):
        """The proxy's calls ride out a proxy (or its database) that stops answering for a
        while, like the database's own (runtime.outage)."""

    _retry_public_calls(RetryingProxy, base, f"the Optuna storage proxy at {url}")
    proxy = RetryingProxy(host=host, port=int(port))
    try:
        base.get_all_studies(proxy)  # answers now, or one line naming it
    except grpc.RpcError as e:
        raise StoreError(f"{url}: the Optuna storage proxy does not answer "
                         f"({type(e).__name__}); start it (asl-sweep store-proxy) or check "
                         "the address") from None
    return proxy


def serve_proxy(url: str, host: str, port: int) -> None:
    """Optuna's gRPC storage proxy in front of the database `url`, until stopped: many
    workers share its few database connections (and its heartbeat checks, see BEAT)."""
    storage = optuna_storage(url)
    _name_faults(storage)
    try:
        optuna.storages.run_grpc_proxy_server(storage, host=host, port=port)
    except ImportError:
        raise StoreError("asl-sweep store-proxy needs grpcio: pip install "
                         "'asl-sweep[grpc]'") from None


def _name_faults(storage: optuna.storages.BaseStorage) -> None:
    """A database full or read-only behind the proxy reaches the worker as the text of the
    proxy's error, and Optuna's storage says only "an exception is raised during the
    commit": the proxy's storage raises the one line that names the fault instead."""
    for name in public_calls(storage):
        method = getattr(storage, name)

        def call(*args, _method=method, **kwargs):
            try:
                return _method(*args, **kwargs)
            except Exception as e:
                fault = environment_fault(e)
                if fault is None or fault is e:
                    raise
                raise RuntimeError(str(fault)) from e

        setattr(storage, name, call)


def stage_study_name(cfg: StudyConfig, stage: StageConfig) -> str:
    return f"{cfg.study}.{stage.name}"


def load_stage_study(cfg: StudyConfig, stage: StageConfig, storage) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=stage_study_name(cfg, stage), storage=storage)
    except KeyError:
        return None


# A stage's confirmation repeats live in a study of their own beside the stage's, so that
# what every Optuna client calls the stage's best trial (study.best_trial, optuna-dashboard,
# `optuna best-trial`, the history and importance plots) is one of its search trials, never
# a repeat on another fold. asl-sweep numbers a repeat after the stage's trials: local
# number + the plan's `first_repeat` (the stage's trial count when its repeats began).
REPEATS_SUFFIX = ".repeats"


def repeats_study(cfg: StudyConfig, index: int, storage) -> optuna.Study:
    """The stage's repeats study, made by whichever process gets here first."""
    stage = cfg.stages[index]
    name = stage_study_name(cfg, stage) + REPEATS_SUFFIX
    try:
        return optuna.create_study(storage=storage, study_name=name,
                                   direction=stage.direction,
                                   pruner=optuna.pruners.NopPruner())
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage,
                                 pruner=optuna.pruners.NopPruner())


def stage_trials(study: optuna.Study, repeats: optuna.Study | None = None) -> list[FrozenTrial]:
    """A stage's trials whole: its search study's, then its repeats, numbered after them."""
    trials = list(study.get_trials(deepcopy=False))
    first = (attrs(study).get("plan") or {}).get("first_repeat")
    if first is None:
        return trials
    if repeats is None:
        try:
            repeats = optuna.load_study(study_name=study.study_name + REPEATS_SUFFIX,
                                        storage=study._storage)
        except KeyError:
            return trials
    for t in repeats.get_trials(deepcopy=True):
        t.number += first
        if "failed_trial" in t.system_attrs:  # a retry names its first attempt: renumber
            t.system_attrs["failed_trial"] += first
            t.system_attrs["retry_history"] = [n + first for n in
                                               t.system_attrs["retry_history"]]
        trials.append(t)
    return trials


def _sampler(cfg: StudyConfig, index: int, seed: int) -> optuna.samplers.BaseSampler:
    stage = cfg.stages[index]
    seed += stage.seed + 1000 * index
    if stage.sampler == "grid":
        return GridSampler(grid(stage.space), seed=seed)
    if stage.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed,
                                      n_startup_trials=min(10, max(3, stage.trials // 3)))


def make_pruner(stage: StageConfig, epochs: int) -> optuna.pruners.BasePruner:
    """The stage's pruner over `epochs` reported steps (1-based epochs)."""
    if stage.pruner == "none":
        return optuna.pruners.NopPruner()
    if stage.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 9),
                                              max_resource=epochs, reduction_factor=3)
    if stage.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, epochs // 9),
                                                      reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 5))


def create_stage_study(cfg: StudyConfig, index: int, storage,
                       worker: int = 0) -> tuple[optuna.Study, bool]:
    """The stage's Optuna study and whether this call created it (exactly one process does).
    Every process samples with its own seed, or two of them would sample the same settings:
    the creator with the configured one (a lone seeded run repeats exactly), a numbered
    worker with one derived from its number, any other process with one from its PID."""
    stage = cfg.stages[index]
    pruner = make_pruner(stage, int(stage.fixed.get("epochs", cfg.base.epochs)))
    name = stage_study_name(cfg, stage)
    try:
        return optuna.create_study(storage=storage, sampler=_sampler(cfg, index, 7919 * worker),
                                   pruner=pruner, study_name=name,
                                   direction=stage.direction), True
    except optuna.exceptions.DuplicatedStudyError:
        joiner = worker or 1 + os.getpid() % 9973
        return optuna.load_study(study_name=name, storage=storage, pruner=pruner,
                                 sampler=_sampler(cfg, index, 7919 * joiner)), False


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def records_decision(trials: list[FrozenTrial]) -> bool:
    """Whether this process records a decided stage's decision: every worker reaches the
    same decision from the same finished trials, and the one that finished the last of them
    records it (or this one, where that worker was a process of this machine that is gone:
    a rerun after a crash). A worker of another machine that died first leaves it to the
    next process that opens the stage."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete]
    if not done:
        return True
    last = max(done, key=lambda t: (t.datetime_complete, t.number)).user_attrs.get("worker", "")
    return last == worker_id() or gone_here(last)


# Optuna's heartbeats live in its RDB storage only: through the gRPC proxy a running trial
# beats here instead (a system attribute, every HEARTBEAT_S), and one silent for GRACE_S is
# dead, from any machine (clocks a few seconds apart at most).
BEAT = "asl_sweep:beat"


@contextlib.contextmanager
def beating(study: optuna.Study, trial_id: int):
    """While the block runs, the trial beats, where the storage has no heartbeat of its own."""
    if isinstance(study._storage, BaseHeartbeat):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                study._storage.set_trial_system_attr(trial_id, BEAT, time.time())
            except Exception as e:  # a beat missed is no error; a finished trial stops it
                log.debug("trial beat missed: %s", e)
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, name="asl-sweep-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(HEARTBEAT_S)


def _silent(t: FrozenTrial, now: float) -> bool:
    """A running trial (through the proxy) that has not beaten for GRACE_S."""
    last = t.system_attrs.get(BEAT) or (t.datetime_start.timestamp() if t.datetime_start
                                        else now)
    return now - last > GRACE_S


def fail_dead_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Fail RUNNING trials whose worker is gone, and queue their retry with the same
    settings. Heartbeats find them after GRACE_S; a worker process of this machine that no
    longer exists is known dead at once, so a rerun after kill -9 need not wait. Returns
    the FAIL trials whose MLflow run may still be open (their worker died without a word,
    or stopped while the tracking server was away)."""
    optuna.storages.fail_stale_trials(study)
    storage = study._storage
    beats = not isinstance(storage, BaseHeartbeat)
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if gone_here(t.user_attrs.get("worker", "")) or (beats and _silent(t, now)):
            try:
                if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    Requeue()(study, storage.get_trial(t._trial_id))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker got there first
    # A trial that failed with no word on why (its worker died, or could not record how it
    # stopped) and was never queued again: queue it now.
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    lost = [t for t in trials if t.state == TrialState.FAIL and "failure" not in t.user_attrs]
    for t in lost:
        if t.number not in retried:
            Requeue()(study, t)
    # A trial that stopped while the tracking server was away could not close its run.
    stopped = [t for t in trials if t.state == TrialState.FAIL
               and t.user_attrs.get("failure") in ("stopped", "interrupted", "crashed")]
    return [t for t in lost + stopped if t.user_attrs.get("mlflow_run_id")]


def gone_here(worker: str) -> bool:
    """Whether `worker` (a worker_id) was a process of this machine that no longer exists."""
    host, _, pid = worker.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
