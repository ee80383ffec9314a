"""A training's epochs after its first resume point: the resume file saved as it was (through
dataclasses.asdict, which deep-copied every tensor on the checkpoint writer's thread) against
now (the snapshot resume_state took, saved as it is), with the real trainer on cnn.yaml's
built-in people and CNN.

    .venv/bin/python -m benchmarks.resume_writes [--rounds 2] [--epochs 24] [--threads 2,1]

Each training writes a resume point every 8 epochs (checkpoint_seconds 0; a study's trials
write their first after 30 s, at epoch 40 or so of cnn.yaml's 80). Timed: images a second of
the epochs before the first resume point (the first left out as warm-up) and of the epochs
after it, median over the rounds; the arms alternate."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from asl_sweep.data.studydata import StudyData
from asl_sweep.runtime.files import atomic_torch_save
from asl_sweep.settings.studyfile import load_study
from asl_sweep.training.checkpoint import RESUME_FORMAT, VERSION, ResumeState
from asl_sweep.training.train import train
from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]
EVERY = 8
NOW = ResumeState.save


def _before(self: ResumeState, path: Path, sync: bool = True) -> Path:
    """ResumeState.save as it was: asdict deep-copies every tensor first."""
    atomic_torch_save({"format": RESUME_FORMAT, "version": VERSION, **asdict(self)}, path, sync)
    return path


ARMS = {"deep copy on the writer thread (before)": _before, "the snapshot as it is (now)": NOW}


def _speeds(cfg, data, epochs: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as run_dir, tempfile.TemporaryDirectory() as cache:
        result = train(cfg.model_copy(update={"epochs": epochs, "device": "cpu",
                                              "checkpoint_every": EVERY,
                                              "checkpoint_seconds": 0}),
                       data, "cpu", run_dir=Path(run_dir), cache_dir=Path(cache))
    speed = [s.images_per_s for s in result.history]
    return statistics.median(speed[1:EVERY]), statistics.median(speed[EVERY:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--threads", default="2,1")
    args = parser.parse_args()
    cfg = load_study(ROOT / "sweeps" / "cnn.yaml")
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        data = StudyData(cfg.data, Path(cache), torch.device("cpu"),
                         log=lambda _: None).split(cfg.data.image_size, 0)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            before_point: dict[str, list[float]] = {arm: [] for arm in ARMS}
            after_point: dict[str, list[float]] = {arm: [] for arm in ARMS}
            for _ in range(args.rounds):
                for arm, save in ARMS.items():
                    ResumeState.save = save
                    try:
                        first, later = _speeds(cfg.base, data, args.epochs)
                    finally:
                        ResumeState.save = NOW
                    before_point[arm].append(round(first))
                    after_point[arm].append(round(later))
            for arm in ARMS:
                first, later = (statistics.median(v[arm]) for v in (before_point, after_point))
                rows.append({"arm": arm, "threads": threads, "images": len(data.y_train),
                             "img_per_s_before_first_point": first,
                             "img_per_s_after_it": later, "after_over_before": round(later / first, 3),
                             "runs_before": before_point[arm], "runs_after": after_point[arm]})
                print(f"{arm}, {threads} thread(s): {first:.0f} img/s before the first resume "
                      f"point, {later:.0f} after ({later / first:.2f}x)", flush=True)
    print(f"written to {write_result('resume_writes', {'epochs': args.epochs, 'every': EVERY, 'rows': rows, 'when': time.strftime('%Y-%m-%d')})}")


if __name__ == "__main__":
    main()
