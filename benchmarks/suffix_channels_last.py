"""Fine-tuning on the cached prefix on a CPU with the prefix made channels-last before the
fine-tuned blocks (models/backbones.py, TransferModel.from_prefix through `between`) against
the channels-first layout the blocks had before, with the real trainer on transfer.yaml's
fine_tune stage.

    .venv/bin/python -m benchmarks.suffix_channels_last [--rounds 3] [--epochs 4]
                                                        [--threads 1,2] [--blocks 5,8]

Each case is the stage's own training: its fixed epochs' augmentation over the cached views,
its seed trial (MobileNetV2's ImageNet weights, batch norm frozen, the blocks at 0.1x the
head's rate) with the last 5 or 8 blocks fine-tuned, on fold 0 of the built-in people at
224 px. The prefix is extracted once per case into a cache both arms read, so what is timed
is the epochs: each training's seconds per epoch after its first (median), then the median
over the rounds; the arms alternate. "channels first (before)" puts the old `from_prefix`
back for that arm only. Validation accuracy is printed to show the arms train the same
model (equal up to float rounding); it is a validation figure, not a result."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from asl_sweep.data.studydata import StudyData
from asl_sweep.models.backbones import TransferModel
from asl_sweep.settings.config import apply_overrides
from asl_sweep.settings.studyfile import load_study
from benchmarks.common import epoch_seconds, machine, write_result

ROOT = Path(__file__).resolve().parents[1]
NOW = TransferModel.from_prefix


def _before(self: TransferModel, h: torch.Tensor) -> torch.Tensor:
    """TransferModel.from_prefix as it was: the cached prefix in the layout it is stored."""
    for m in self._chain[self.cut:]:
        h = m(h)
    return self.head(h)


ARMS = {"channels first (before)": _before, "channels last (now)": NOW}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--blocks", default="5,8")
    args = parser.parse_args()
    study = load_study(ROOT / "sweeps" / "transfer.yaml")
    stage = next(s for s in study.stages if s.name == "fine_tune")
    seeded = dict(stage.seed_trials[0].params)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        data = StudyData(study.data, cache, torch.device("cpu"), log=lambda _: None).split(224, 0)
        for blocks in [int(b) for b in args.blocks.split(",")]:
            cfg = apply_overrides(study.base, {**stage.fixed, **seeded,
                                               "transfer.trainable": blocks})
            epoch_seconds(cfg, data, 1, cache)  # fills the prefix cache both arms read
            for threads in [int(t) for t in args.threads.split(",")]:
                torch.set_num_threads(threads)
                seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
                accuracy: dict[str, float] = {}
                for _ in range(args.rounds):
                    for arm, from_prefix in ARMS.items():
                        TransferModel.from_prefix = from_prefix
                        try:
                            s, accuracy[arm] = epoch_seconds(cfg, data, args.epochs, cache)
                        finally:
                            TransferModel.from_prefix = NOW
                        seconds[arm].append(round(s, 3))
                before, now = (statistics.median(seconds[a]) for a in ARMS)
                row = {"case": f"mobilenet_v2, last {blocks} blocks fine-tuned",
                       "threads": threads, "images": len(data.y_train),
                       **{f"{a}: s/epoch": statistics.median(v) for a, v in seconds.items()},
                       **{f"{a}: runs": v for a, v in seconds.items()},
                       "ratio": round(now / before, 3),
                       **{f"{a}: val_acc": round(v, 4) for a, v in accuracy.items()}}
                rows.append(row)
                print(f"last {blocks} blocks on {threads} thread(s): {before:.2f} s -> "
                      f"{now:.2f} s an epoch ({now / before:.2f}x); val_acc {accuracy}",
                      flush=True)
    result = {"epochs": args.epochs, "rounds": args.rounds, "machine": machine(), "rows": rows,
              "when": time.strftime("%Y-%m-%d")}
    print(f"written to {write_result('suffix_channels_last', result)}")


if __name__ == "__main__":
    main()
