"""Shared by the benchmarks: machine facts, timing with repeats, and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
ASL = Path(__file__).resolve().parents[2] / "shared" / "data" / "asl-alphabet-a-i"


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


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    # Cases run separately land in one file: a later run replaces only its own keys.
    earlier = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**earlier, "machine": machine(), **result}, indent=2))
    return path
