"""Where running trainings side by side pays on a CPU: K processes at once with T threads
each (K x T = the cores) against one at a time with every core, per model size, with the
real trainer (augmentation, evaluation, cached features) on the built-in signers. Throughput
is trainings finished per second of wall time, all K started together after loading.

    .venv/bin/python -m benchmarks.concurrency [--cases mlp64,cnn48,head224,finetune224]

Then a whole study: the old quick demo (benchmarks/studies/quick_mlp.yaml) at 64 px, 8
trials of the same MLP (a [256, 64] MLP, 40 epochs, the rate varied by a hair so both arms train the same work),
`--workers 1` against `--workers auto` (what auto chose is in the result), wall time of
`asl-sweep run` from start to its last line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ADAM = {"optimizer": "adam", "lr": 1e-3}
CASES = {  # name: (image size, train settings, epochs, images per class)
    "mlp64": (64, {"model": "mlp", "hidden": [256, 64], "batch_size": 32, **ADAM}, 20, 40),
    "cnn48": (48, {"model": "cnn", "hidden": [], "batch_size": 64,
                   "cnn": {"channels": [16, 32, 64]}, **ADAM}, 8, 40),
    "head224": (224, {"model": "transfer", "hidden": [], "batch_size": 64,
                      "transfer": {"backbone": "mobilenet_v2", "trainable": 0}, **ADAM}, 100,
                40),
    "finetune224": (224, {"model": "transfer", "hidden": [], "batch_size": 32,
                          "transfer": {"backbone": "mobilenet_v2", "trainable": 2,
                                       "feature_views": 1}, **ADAM}, 5, 40),
    # The shipped studies' own trainings, on their own data sizes: report.yaml's MLP (the
    # student's [500, 50], SGD, batches of 20; 120 images a class) plain and with 4
    # augmented copies, and cnn.yaml's base CNN at 48 px (80 images a class; 10 of its 40
    # epochs).
    "mlp64_report": (64, {"model": "mlp", "hidden": [500, 50], "batch_size": 20,
                          "optimizer": "sgd", "momentum": 0.9, "lr": 0.01}, 15, 120),
    "mlp64_report_aug4": (64, {"model": "mlp", "hidden": [500, 50], "batch_size": 20,
                               "optimizer": "sgd", "momentum": 0.9, "lr": 0.001,
                               "augment": {"rotation": 25.0, "blur_kernel": 3, "copies": 4}},
                          15, 120),
    "cnn48_study": (48, {"model": "cnn", "hidden": [], "batch_size": 64, "optimizer": "adamw",
                         "lr": 3e-3, "weight_decay": 1e-4, "schedule": "cosine",
                         "cnn": {"channels": [16, 32, 64], "kernel": 3, "batch_norm": True},
                         "augment": {"rotation": 10.0, "translate": 0.05, "brightness": 0.3,
                                     "contrast": 0.3, "saturation": 0.3, "hue": 0.05}},
                    10, 80),
}

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[1]))
from asl_sweep.settings.config import TrainConfig
from asl_sweep.training.train import train
from benchmarks.common import study_data
size, settings, epochs, images, cache, start_at = json.loads(sys.argv[2])
data = study_data(None, size, Path(cache), per_class=images)
split = data.split()
cfg = TrainConfig(**settings, epochs=epochs, device="cpu")
if start_at == 0:  # warm the shared caches (decoded images, frozen features) once
    train(cfg.model_copy(update={"epochs": 1}), split, "cpu", cache_dir=Path(cache))
    sys.exit(0)
time.sleep(max(0.0, start_at - time.time()))
began = time.time()
train(cfg, split, "cpu", cache_dir=Path(cache))
print(json.dumps({"began": began, "ended": time.time()}))
"""


def together(k: int, threads: int, case: str, cache: str) -> float:
    """Wall seconds for k trainings started together, `threads` each."""
    start_at = time.time() + 25.0  # after every child has imported and loaded its data
    arg = json.dumps([*CASES[case], cache, start_at])
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(threads), arg],
                              stdout=subprocess.PIPE, text=True) for _ in range(k)]
    spans = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return max(s["ended"] for s in spans) - min(s["began"] for s in spans)


def warm(case: str, cache: str) -> None:
    subprocess.run([sys.executable, "-c", CHILD, str(os.cpu_count()),
                    json.dumps([*CASES[case], cache, 0])], check=True)


def study_wall(workers: str, home: Path) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "asl_sweep.cli", "run",
                    "benchmarks/studies/quick_mlp.yaml", "--home", str(home), "--workers",
                    workers, "--set", "data.image_size=64",
                    "--set", "stages.0.confirm=null", "--set", "stages.0.trials=8",
                    "--set", "stages.0.pruner=none", "--set", "base.epochs=40",
                    # the same work in both arms: one setting, varied by a hair
                    "--set", "stages.0.sampler=random",
                    "--set", "stages.0.space={lr: {low: 0.001, high: 0.00101}}"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    from asl_sweep.runtime.workers import auto_workers
    from benchmarks.common import write_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--no-study", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            cache = str(Path(tmp) / case)
            warm(case, cache)
            one = together(1, cores, case, cache)
            row = {"case": case, "one_at_a_time_s": round(one, 2)}
            for k in (2, 4):
                if k > cores * 2:
                    continue
                wall = together(k, max(1, cores // k), case, cache)
                row[f"{k}_at_once_s"] = round(wall, 2)
                row[f"{k}_at_once_speedup"] = round(k * one / wall, 2)
            rows.append(row)
            print(row, flush=True)
        result = {"cores": cores, "rows": rows}
        if not args.no_study:
            auto = auto_workers()
            serial = study_wall("1", Path(tmp) / "w1")
            parallel = study_wall("auto", Path(tmp) / "wauto")
            result["study"] = {"trials": 8, "image_size": 64, "epochs": 40,
                               "workers_1_s": round(serial, 1),
                               "workers_auto_s": round(parallel, 1), "auto_chose": auto,
                               "speedup": round(serial / parallel, 2)}
            print(result["study"])
    print(f"written to {write_result('concurrency', result)}")


if __name__ == "__main__":
    main()
