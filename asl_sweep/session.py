"""What every stage of one study shares, opened once per process: settings, stores, the
MLflow study run and the data on the training device."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from asl_sweep.config import StudyConfig
from asl_sweep.data import SplitData, load_image_set, prepare_split
from asl_sweep.selection import StageResult
from asl_sweep.store import optuna_storage
from asl_sweep.tracking import Tracker
from asl_sweep.train import resolve_device
from asl_sweep.workspace import Workspace


@dataclass
class Session:
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
    closed_runs: set[str] = field(default_factory=set)  # lost trials already closed in MLflow


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
