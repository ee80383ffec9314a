"""A CNN's training on a CPU with its input in channels-last layout (models/registry.py,
CNN.forward: the normalized batch made channels-last before the first convolution) against
the channels-first layout it had before, with the real trainer on cnn.yaml's built-in people.

    .venv/bin/python -m benchmarks.channels_last [--rounds 3] [--epochs 4] [--threads 1,2]

Cases: the shipped studies' CNNs (quick.yaml's base at 32 px; cnn.yaml's base at 48 px, the
larger architecture it searches, and its 4-block net at 64 px, with cnn.yaml's
augmentation). "channels first (before)" runs the forward as it was (CNN.forward put back
for that arm only). Timed: seconds an epoch of training (the trainer's own clock, the first
epoch left out as warm-up), median over the rounds; the arms alternate. The last epoch's
validation accuracy of each arm shows the layout changes the sums' order, not what is
learned (the same seeds, values equal to float rounding)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from asl_sweep.data.studydata import StudyData
from asl_sweep.models.registry import CNN
from asl_sweep.settings.config import apply_overrides
from asl_sweep.settings.studyfile import load_study
from benchmarks.common import epoch_seconds, write_result

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # name: (study, image size, overrides of its base)
    "quick32": ("quick.yaml", 32, {}),
    "cnn48": ("cnn.yaml", 48, {}),
    "cnn48_wide_k5": ("cnn.yaml", 48, {"cnn": {"channels": [32, 64, 128], "kernel": 5}}),
    "cnn64_four_blocks": ("cnn.yaml", 64, {"cnn": {"channels": [16, 32, 64, 128]}}),
}
NOW = CNN.forward


def _before(self: CNN, x: torch.Tensor) -> torch.Tensor:
    """CNN.forward as it was: the batch in the layout it came in (channels first)."""
    return self.head(self.features(self.normalize(x)))


ARMS = {"channels first (before)": _before, "channels last (now)": NOW}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name in args.cases.split(","):
            study, size, overrides = CASES[name]
            cfg = load_study(ROOT / "sweeps" / study)
            data = StudyData(cfg.data.model_copy(update={"image_size": size}), Path(cache),
                             torch.device("cpu"), log=lambda _: None).split(size, 0)
            train_cfg = apply_overrides(cfg.base, overrides)
            for threads in [int(t) for t in args.threads.split(",")]:
                torch.set_num_threads(threads)
                seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
                accuracy: dict[str, float] = {}
                for _ in range(args.rounds):
                    for arm, forward in ARMS.items():
                        CNN.forward = forward
                        try:
                            with tempfile.TemporaryDirectory() as tmp:
                                s, accuracy[arm] = epoch_seconds(train_cfg, data, args.epochs,
                                                                 Path(tmp))
                        finally:
                            CNN.forward = NOW
                        seconds[arm].append(round(s, 3))
                before, now = (statistics.median(seconds[a]) for a in ARMS)
                row = {"case": name, "threads": threads, "images": len(data.y_train),
                       **{f"{a}: s/epoch": statistics.median(v) for a, v in seconds.items()},
                       **{f"{a}: runs": v for a, v in seconds.items()},
                       "ratio": round(now / before, 3),
                       **{f"{a}: val_acc": round(v, 4) for a, v in accuracy.items()}}
                rows.append(row)
                print(f"{name} on {threads} thread(s): {before:.3f} s -> {now:.3f} s an epoch "
                      f"({now / before:.2f}x); val_acc {accuracy}", flush=True)
    print(f"written to {write_result('channels_last', {'epochs': args.epochs, 'rows': rows, 'when': time.strftime('%Y-%m-%d')})}")


if __name__ == "__main__":
    main()
