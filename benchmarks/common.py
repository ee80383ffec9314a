"""Shared by the benchmarks: machine facts, timing with repeats, data, and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from asl_sweep.cli import configure_logging, quiet_optuna
from asl_sweep.data.studydata import SplitData, StudyData
from asl_sweep.settings.config import DataConfig, TrainConfig

configure_logging()  # the benchmarks' logs read like a user's console, not library warnings
quiet_optuna()
RESULTS = Path(__file__).parent / "results"
ASL = Path(__file__).resolve().parents[2] / "shared" / "data" / "asl-alphabet-a-i"


def epoch_seconds(cfg: TrainConfig, data: SplitData, epochs: int,
                  cache_dir: Path) -> tuple[float, float]:
    """One CPU training of `epochs` with the real trainer: the median seconds of its epochs
    after the first (the first pays oneDNN's set-up and any cache fill; of one epoch, that
    one) and its last validation accuracy."""
    from asl_sweep.training.train import train

    result = train(cfg.model_copy(update={"epochs": epochs, "device": "cpu"}), data, "cpu",
                   cache_dir=cache_dir)
    timed = [s.seconds for s in result.history[1:] or result.history]
    return statistics.median(timed), result.history[-1].val_acc


def shown(path: Path | str | None) -> str:
    """A path as results show it: relative to the repository, never this machine's layout."""
    if path is None:
        return "synthetic"
    try:
        return os.path.relpath(Path(path).resolve(), Path(__file__).resolve().parents[1])
    except ValueError:
        return Path(path).name


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def median_time(fn: Callable[[], object], repeats: int = 3) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a large square float32 matrix product on this machine, as it is now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    seconds, _ = median_time(lambda: a @ b, repeats)
    return 2 * n ** 3 / seconds / 1e9


def study_data(root: Path | None, size: int, cache: Path, per_class: int = 120) -> StudyData:
    cfg = DataConfig(root=root, image_size=size, synthetic={"per_class": per_class})
    return StudyData(cfg, cache, torch.device("cpu"), log=lambda _: None)


def per_class(split: SplitData, n: int, val: int = 64) -> SplitData:
    """The first n training images of each class (and the first `val` validation images)."""
    y = split.y_train
    keep = torch.cat([torch.nonzero(y == c).flatten()[:n] for c in range(len(split.classes))])
    return SplitData(split.x_train[keep], y[keep], split.x_val[:val], split.y_val[:val],
                     split.classes, split.x_pool, f"{split.pool_key}|first{n}",
                     split.train_pos[keep], split.val_pos[:val],
                     split.train_index[keep.numpy()], split.val_index[:val], split.fold)


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    # Cases run separately land in one file: a later run replaces only its own keys.
    earlier = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**earlier, "machine": machine(), **result}, indent=2,
                               default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    return path
