"""The CUDA path, checked and timed on a GPU machine (one prepared script, for a lent device):

    python -m benchmarks.cuda_check [--data PATH] [--trials 3] [--epochs 5] [--per-device]

1) the device, bf16 autocast and the fused optimizer work, and training matches the CPU's
   decisions on a tiny problem; 2) trainer throughput (images/s) of the MLP and the CNN at
   224 px, data on the device; 3) sweeps/report.yaml at 224 px (a quick look by default):
   wall time and images/s per stage; 4) with --per-device, several trials on one GPU: the
   64 px MLP and the 48 px CNN searched by `asl-sweep run --workers K --per-device K` on GPU
   0 alone, K = 1, 2, 4 and 8, trials per minute from start to last line (each worker's
   start included, as a user sees it). Writes benchmarks/results/cuda_check.json."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from asl_sweep.results.readback import read_stages
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.study import run_study
from asl_sweep.settings.config import TrainConfig
from asl_sweep.settings.studyfile import load_study
from asl_sweep.tracking.tracker import Tracker
from asl_sweep.training.optim import make_optimizer
from asl_sweep.training.train import autocast_dtype, train
from benchmarks.common import ASL, shown, study_data, write_result


def throughput(data, cfg: TrainConfig) -> float:
    train(cfg.model_copy(update={"epochs": 1}), data, "cuda")  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    result = train(cfg, data, "cuda")
    return statistics.median(s.images_per_s for s in result.history)


# Small trials that leave a big GPU idle: 16 trials of one stage, no pruning, no race.
PER_DEVICE_CASES = {
    "mlp64": ["--set", "data.image_size=64", "--set", "base.hidden=[256, 64]"],
    "cnn48": ["--set", "data.image_size=48", "--set", "base.model=cnn", "--set",
              "base.hidden=[]", "--set", "base.cnn={channels: [16, 32, 64]}"],
}


def per_device(tmp: Path, counts=(1, 2, 4, 8), trials: int = 16) -> list[dict]:
    """Trials per minute with K workers sharing GPU 0, per case."""
    import os
    import subprocess
    import sys

    rows = []
    for case, settings in PER_DEVICE_CASES.items():
        row: dict = {"case": case, "trials": trials}
        for k in counts:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "asl_sweep.cli", "run",
                            "benchmarks/studies/quick_mlp.yaml", "--home",
                            str(tmp / f"{case}-{k}"), "--workers", str(k), "--per-device",
                            str(k), "--trials", str(trials), "--set", "base.device=cuda",
                            "--set", "base.epochs=10", "--set", "stages.0.confirm=null",
                            "--set", "stages.0.pruner=none", *settings],
                           check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"})
            minutes = (time.perf_counter() - started) / 60
            row[f"{k}_per_gpu_trials_per_min"] = round(trials / minutes, 1)
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ASL if ASL.exists() else None)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--per-device", action="store_true",
                        help="also the table of 1, 2, 4 and 8 workers on one GPU")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA device here"
    device = torch.device("cuda")
    checks = {"device": torch.cuda.get_device_name(),
              "autocast": str(autocast_dtype(TrainConfig(), device))}
    model = torch.nn.Linear(8, 2).to(device)
    checks["fused_optimizer"] = bool(make_optimizer(TrainConfig(), model).defaults.get("fused"))
    with tempfile.TemporaryDirectory() as tmp:
        data = study_data(args.data, 224, Path(tmp)).split(224)
        rates = {name: round(throughput(data, cfg), 1) for name, cfg in {
            "mlp 224px": TrainConfig(hidden=[500, 50], batch_size=64, epochs=3, device="cuda"),
            "cnn 224px": TrainConfig(model="cnn", hidden=[], batch_size=64, epochs=3,
                                     cnn={"channels": [32, 64, 128, 256]}, device="cuda"),
        }.items()}
        print(checks, rates, flush=True)
        cfg = load_study("sweeps/report.yaml", ["data.image_size=224"], args.data, args.trials,
                         args.epochs)
        ws = Workspace.at(Path(tmp) / "mlruns")
        started = time.perf_counter()
        run_study(cfg, ws)
        wall = time.perf_counter() - started
        tracker, stages = Tracker(ws), []
        for view in read_stages(cfg, ws):
            done = [t for t in view.trials if t.datetime_complete]
            seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
            speeds = [m.value for t in done if t.user_attrs.get("mlflow_run_id")
                      for m in tracker.metric_history(t.user_attrs["mlflow_run_id"],
                                                      "images_per_s")]
            stages.append({"stage": view.stage.name, "trials": len(done),
                           "seconds": round(seconds, 1), "decision": view.result.decision,
                           "images_per_s": round(statistics.median(speeds), 1) if speeds else None})
            print(stages[-1], flush=True)
        shared = per_device(Path(tmp)) if args.per_device else None
    result = {"data": shown(args.data), "checks": checks, "throughput": rates,
              "report_224px_wall_s": round(wall, 1), "stages": stages,
              **({"per_device": shared} if shared else {})}
    print(f"written to {write_result('cuda_check', result)}")


if __name__ == "__main__":
    main()
