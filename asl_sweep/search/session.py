"""What every stage of one study shares, opened once per process: settings, the stores, the
study record (which binds the study to its data), the MLflow study run and the data."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
import torch

from asl_sweep.data.studydata import StudyData
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.record import bind, check_digest, load_record, started
from asl_sweep.search.selection import StageResult
from asl_sweep.search.store import attrs, optuna_storage, put, wait_for
from asl_sweep.settings.spec import StudyConfig
from asl_sweep.tracking.tracker import Tracker
from asl_sweep.tracking.views import trials_view
from asl_sweep.training.train import resolve_device


@dataclass
class Session:
    cfg: StudyConfig
    ws: Workspace
    storage: optuna.storages.RDBStorage
    record: optuna.Study
    tracker: Tracker
    experiment_id: str
    study_run: str
    data: StudyData
    device: torch.device
    log: Callable[[str], None] = print  # this process's trials
    worker: int = 0
    say: Callable[[str], None] = print  # the study's and its stages' lines
    results: list[StageResult] = field(default_factory=list)
    closed_runs: set[str] = field(default_factory=set)  # lost trials already closed in MLflow
    lost_looked: dict[str, float] = field(default_factory=dict)  # stage study: when, monotonic


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
    record, created = bind(storage, cfg, say)
    check_digest(record, cfg, data.digest)
    source = cfg.data.root or (f"built-in synthetic letters ({cfg.data.synthetic.per_class}"
                               f"/class, {cfg.data.synthetic.signers} signers)")
    say(f"data: {source}: {data.describe()}, {cfg.data.image_size}px, on {device} "
        f"({loaded:.1f}s)")
    experiment_id = tracker.experiment(cfg.study, cfg.description, trials_view(
        [s.metric for s in cfg.stages], [k for s in cfg.stages for k in s.space]),
        cfg.stages[0].metric)
    study_run = _study_run(tracker, experiment_id, cfg, record, created)
    if not tracker.client.get_run(study_run).data.params:
        tracker.log_params(study_run, {"data": cfg.data.model_dump(mode="json"),
                                       "stages": ",".join(s.name for s in cfg.stages)})
    return Session(cfg, ws, storage, record, tracker, experiment_id, study_run, data, device,
                   log, worker, say)


# The study's MLflow run (the parent of its stages' runs), one for every process that works
# on the study: its id is kept in the record. Workers that start together on a new study
# would each find none in MLflow and make one; the record's creator (exactly one process)
# makes it, and the others wait for its id.
STUDY_RUN = "mlflow_study_run"


def _study_run(tracker: Tracker, experiment_id: str, cfg: StudyConfig, record: optuna.Study,
               created: bool) -> str:
    known = attrs(record).get(STUDY_RUN)
    if known is None and not created and not started(record._storage, cfg.study):
        wait_for(record, STUDY_RUN, 120.0)  # the creator is making it; if it died, we do
        known = attrs(record).get(STUDY_RUN)
    if known is not None and tracker.has_run(known):
        tracker.reopen(known)
        return known
    run_id = tracker.open_run(experiment_id, cfg.study, kind="study")
    put(record, STUDY_RUN, run_id)
    return run_id


def open_data(cfg: StudyConfig, ws: Workspace, log: Callable[[str], None] = lambda _: None,
              device: torch.device | None = None) -> StudyData:
    """A finished study's data, for the commands that read it back (on the CPU): the files
    must still be the ones it ran on."""
    data = StudyData(cfg.data, ws.cache, device or torch.device("cpu"), log)
    record = load_record(optuna_storage(ws.storage), cfg.study)
    if record is not None:
        check_digest(record, cfg, data.digest)
    return data
