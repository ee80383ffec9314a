"""What every stage of one study shares, opened once per process: settings, the stores, the
study record (which binds the study to its data), its MLflow mirror and the data."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from asl_sweep.data.studydata import StudyData
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.mirror import Mirror
from asl_sweep.search.plan import data_source, people_notes
from asl_sweep.search.record import bind, check_digest, load_record, started
from asl_sweep.search.selection import StageResult
from asl_sweep.search.state import RecordKey, wait_for, write
from asl_sweep.search.store import optuna_storage
from asl_sweep.settings.spec import StudyConfig
from asl_sweep.tracking.tracker import Tracker
from asl_sweep.training.train import resolve_device


@dataclass
class Session:
    cfg: StudyConfig
    ws: Workspace
    storage: optuna.storages.RDBStorage
    record: optuna.Study
    mirror: Mirror
    data: StudyData
    device: torch.device
    log: Callable[[str], None] = print  # this process's trials
    worker: int = 0
    say: Callable[[str], None] = print  # the study's and its stages' lines
    results: list[StageResult] = field(default_factory=list)
    bars: bool = False  # a progress bar per trial (a terminal, one worker)
    workers_seen: int = 1  # the most workers this process has seen on one of its stages
    closed_runs: set[str] = field(default_factory=set)  # lost trials already closed in MLflow
    # stage study: when to look for its lost trials next (time.monotonic)
    lost_looked: dict[str, float] = field(default_factory=dict)
    lost_swept: set[str] = field(default_factory=set)  # stage studies looked at whole (`every`)
    # local time, as Optuna times trials
    began: datetime.datetime = field(default_factory=datetime.datetime.now)
    # a decided stage found this run to have started from other settings than the command's
    # (study.run_stage): no stage still to run may start from them
    edited: str | None = None


def open_session(cfg: StudyConfig, ws: Workspace, log: Callable[[str], None] = print,
                 worker: int = 0, say: Callable[[str], None] | None = None) -> Session:
    say = say or log
    ws.prepare()
    # The data first: a missing folder or a bad image is reported in a second or two, before
    # the stores are created (a new MLflow store alone takes several), and binds nothing.
    device = resolve_device(cfg.base.device)
    started = time.perf_counter()
    data = StudyData(cfg.data, ws.cache, device, log)
    loaded = time.perf_counter() - started
    with ws.store_lock():  # one process at a time creates or migrates the stores
        storage = optuna_storage(ws.storage)
        tracker = Tracker(ws)
    # Other data settings than the study's: refused, here.
    record, created, keys = bind(storage, cfg, say)  # the record's keys, read once
    check_digest(record, cfg, data.digest, keys, storage, say)
    say(f"data: {data_source(cfg)}: {data.describe()}, {cfg.data.image_size}px, on {device} "
        f"({loaded:.1f}s)")
    for note in people_notes(cfg, data.names, data.groups):
        say(note)
    asked = {cfg.base.precision, *(str(s.fixed["precision"]) for s in cfg.stages
                                   if "precision" in s.fixed)} & {"bf16", "fp16"}
    if asked and device.type != "cuda":  # autocast_dtype: on CUDA only
        say(f"note: precision {' and '.join(sorted(asked))} is autocast on CUDA only; on "
            f"{device} every trial trains in fp32 (precision: auto says the same without this "
            "note)")
    mirror = Mirror(tracker)
    mirror.open_experiment(cfg)
    _open_study_run(mirror, cfg, storage, record, created, keys)
    return Session(cfg, ws, storage, record, mirror, data, device, log, worker, say)


def _open_study_run(mirror: Mirror, cfg: StudyConfig, storage, record: optuna.Study,
                    created: bool, keys: dict[str, Any]) -> None:
    """The study's MLflow run (the parent of its stages' runs), one for every process that
    works on the study: its id is kept in the record. Workers that start together on a new
    study would each find none in MLflow and make one; the record's creator (exactly one
    process) makes it, and the others wait for its id. `keys`: the record's, read at this
    process's start (the creator may have written it since: read again where it is missing;
    where no stage has begun yet, wait for it)."""
    known = keys.get(RecordKey.STUDY_RUN)
    if known is None and not created:
        # The creator makes it; if it died, this process does.
        wait = 0.0 if started(storage, cfg) else 120.0
        known = (wait_for(record, RecordKey.STUDY_RUN, wait) or {}).get(RecordKey.STUDY_RUN)
    run_id = mirror.study_opened(cfg, known)
    if run_id != known:
        write(record, RecordKey.STUDY_RUN, run_id)


def open_data(cfg: StudyConfig, ws: Workspace, log: Callable[[str], None] = lambda _: None,
              device: torch.device | None = None) -> StudyData:
    """A finished study's data, for the commands that read it back (on the CPU): the files
    must still be the ones it ran on."""
    data = StudyData(cfg.data, ws.cache, device or torch.device("cpu"), log)
    record = load_record(optuna_storage(ws.storage), cfg.study)
    if record is not None:
        check_digest(record, cfg, data.digest)
    return data
