"""Opening the Optuna stores: RDB storage (SQLite or PostgreSQL, or Optuna's gRPC proxy in
front of one) that rides out a database that stops answering for a while, the proxy itself,
and the Optuna studies of a stage: one for its search and one beside it for its
confirmation repeats. What the workers keep on them is search/state.py's."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy.event
import sqlalchemy.exc
from optuna.trial import FrozenTrial

from asl_sweep.runtime.errors import StoreError, environment_fault, refusal, refused_line
from asl_sweep.runtime.outage import created_elsewhere, lost_connection, retrying
from asl_sweep.runtime.workspace import shown
from asl_sweep.search.optuna_api import (
    engine_of,
    keeps_heartbeats,
    stale_trial_ids,
    storage_of,
    study_id_of,
    trial_id_of,
)
from asl_sweep.search.space import grid
from asl_sweep.search.state import (
    GRACE_S,
    HEARTBEAT_S,
    RecordKey,
    Requeue,
    StageKey,
    grid_placeholder,
    open_shared,
    read,
    renumbered,
    stopped_beating,
)
from asl_sweep.settings.spec import StageConfig, StudyConfig

log = logging.getLogger(__name__)


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, for studies whose trials are all queued: a queued search slot
    (state.queue_budget) takes a grid point like a fresh trial, the incumbent, seed trials and
    repeats keep their settings. Its after_trial only stops `study.optimize` once the grid is
    done; the stage's queued budget bounds the search here (past the grid, Optuna's sampler
    draws a point again).

    A trial records its point as a number in the grid's order, which the seed shuffles: the
    seed is the study's, the same in every process (with each process's own, a rerun or a
    second worker read the numbers in another order, and trained points twice while it
    skipped others). Which point a trial takes follows its number (Optuna's rule: trial k
    takes point k while k is inside the grid), so two workers still take different ones."""

    def before_trial(self, study, trial) -> None:
        super().before_trial(study, grid_placeholder(trial) or trial)

    def after_trial(self, study, trial, state, values) -> None:
        pass


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
        if url.startswith("sqlite"):
            return _serialized(optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S, heartbeat_stale_trial_callback=Requeue()))
        return RetryingRDBStorage(url, engine_kwargs=engine_kwargs,
                                  heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                  heartbeat_stale_trial_callback=Requeue())

    if not url.startswith("sqlite"):
        # A server not (yet) there is waited for, in the same budget as one that goes away.
        connect = retrying(connect, "the Optuna store (--storage)")
    try:
        return created_elsewhere(connect)
    except sqlalchemy.exc.OperationalError as e:
        refused = refusal(e)  # no such host, database or user: waiting does not mend it
        if refused:
            raise StoreError(refused_line(f"{shown(url)}: the Optuna store", refused)) from None
        # Two processes creating the tables of a new SQLite database at once: one wins, the
        # other finds them made a moment later.
        time.sleep(2.0)
        try:
            return created_elsewhere(connect)
        except sqlalchemy.exc.OperationalError as e:
            raise StoreError(f"{shown(url)}: the Optuna store cannot be opened "
                             f"({str(e.orig).splitlines()[0]})") from None


def _serialized(storage: optuna.storages.RDBStorage) -> optuna.storages.RDBStorage:
    """SQLite takes its write lock at a transaction's first write, not its first read: two
    processes could both read a queued trial as WAITING and both take it (Optuna's own queue
    has the same race on SQLite). Each transaction here begins IMMEDIATE, holding the lock
    from its first read, so taking a trial or a claim (state.py) is one worker's alone."""
    engine = engine_of(storage)

    @sqlalchemy.event.listens_for(engine, "connect")
    def _driver_leaves_transactions_to_us(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections made before this: closed, the next ones as above
    return storage


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
        said = e.details() if callable(getattr(e, "details", None)) else None
        raise StoreError(f"{url}: the Optuna storage proxy does not answer "
                         f"({' '.join((said or type(e).__name__).split())[:160]}); start it "
                         "(asl-sweep store-proxy) or check the address") from None
    return proxy


def serve_proxy(url: str, host: str, port: int, ready: Callable[[], None]) -> None:
    """Optuna's gRPC storage proxy in front of the database `url`, until stopped: many
    workers share its few database connections (their trials beat through it: state.BEAT).
    `ready` is called once the database is open, before the proxy starts serving."""
    storage = optuna_storage(url)
    _name_faults(storage)
    ready()
    try:
        optuna.storages.run_grpc_proxy_server(storage, host=host, port=port)
    except ImportError:
        raise StoreError("asl-sweep store-proxy needs grpcio: pip install "
                         "'asl-sweep[grpc]'") from None


def _name_faults(storage: optuna.storages.BaseStorage) -> None:
    """A database full or read-only behind the proxy reaches the worker as the text of the
    proxy's error, and Optuna's storage says only "an exception is raised during the
    commit": the proxy's storage raises the one line that names the fault instead (its
    database is the Optuna store, whichever statement hit the fault: a COMMIT names no
    table)."""
    for name in public_calls(storage):
        method = getattr(storage, name)

        def call(*args, _method=method, **kwargs):
            try:
                return _method(*args, **kwargs)
            except Exception as e:
                fault = environment_fault(e, "the Optuna store (optuna.db, or --storage)")
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
    return open_shared(stage_study_name(cfg, stage) + REPEATS_SUFFIX, storage, stage.direction,
                   optuna.pruners.NopPruner())[0]


def stage_trials(study: optuna.Study, repeats: optuna.Study | None = None,
                 first: int | None = None) -> list[FrozenTrial]:
    """A stage's trials whole: its search study's, then its repeats, numbered after them
    (from `first`, the plan's first repeat number; read from the plan when not given)."""
    trials = list(study.get_trials(deepcopy=False))
    if first is None:
        first = (read(study).get(StageKey.PLAN) or {}).get("first_repeat")
    if first is None:
        return trials
    if repeats is None:
        try:
            repeats = optuna.load_study(study_name=study.study_name + REPEATS_SUFFIX,
                                        storage=storage_of(study))
        except KeyError:
            return trials
    return joined(trials, repeats.get_trials(deepcopy=False), first)


def silent_trials(study: optuna.Study, trials: list[FrozenTrial]) -> frozenset[int]:
    """The numbers of the RUNNING trials among a stage's `trials` (stage_trials: its search
    study's and its repeats') whose worker, on any machine, stopped beating: GRACE_S ago by
    the database's clock (Optuna's heartbeats), or through the proxy GRACE_S + MAX_SKEW_S
    ago by this machine's (a reader looking once cannot tell a beat standing still from a
    clock behind: state.silent_s): lost, though no worker has looked yet (the next run's or
    worker's look fails them and queues them again; a reader such as `status` fails
    nothing)."""
    running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    if not running:
        return frozenset()
    storage = storage_of(study)
    if not keeps_heartbeats(storage):  # the proxy: asl-sweep's own beat attribute
        return frozenset(t.number for t in running if stopped_beating(storage, t))
    stale = set(stale_trial_ids(storage, study_id_of(study)))
    try:
        stale |= set(stale_trial_ids(storage, storage.get_study_id_from_name(
            study.study_name + REPEATS_SUFFIX)))
    except KeyError:  # no repeats yet
        pass
    return frozenset(t.number for t in running if trial_id_of(t) in stale)


def joined(searched: list[FrozenTrial], repeated: list[FrozenTrial],
           first: int) -> list[FrozenTrial]:
    """A stage's trials whole from its two studies' trials (read by the caller): the search
    study's, then the repeats, numbered from `first`."""
    return searched + [renumbered(t, first) for t in repeated]


def _sampler(cfg: StudyConfig, index: int, seed: int) -> optuna.samplers.BaseSampler:
    stage = cfg.stages[index]
    if stage.sampler == "grid":  # the study's seed, in every process (GridSampler)
        return GridSampler(grid(stage.space), seed=(stage.seed + 1000 * index) % 2**32)
    seed = (seed + stage.seed + 1000 * index) % 2**32  # the range Optuna's samplers take
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
    if stage.pruner in ("incumbent", "best"):
        from asl_sweep.search.pruning import IncumbentPruner

        return IncumbentPruner(stage.direction, warmup=max(1, epochs // 10),
                               window=max(2, epochs // 20), pace=2 / 3, against=stage.pruner,
                               top=stage.confirm.top if stage.confirm else 1)
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
    joiner = worker or 1 + os.getpid() % 9973
    name = stage_study_name(cfg, stage)
    study, created = open_shared(name, storage, stage.direction, pruner,
                                 sampler=_sampler(cfg, index, 7919 * joiner),
                                 creator_sampler=_sampler(cfg, index, 7919 * worker))
    if not created and RecordKey.DATA in read(study):  # a dotted study's name: not a stage
        raise StoreError(f"study {cfg.study}, stage {stage.name}: its Optuna study {name!r} is "
                         f"the record of another study, {name!r}, in this store (a stage's "
                         "study is named STUDY.STAGE); run this one under a name without that "
                         "clash, e.g. --set study=NEW")
    return study, created

