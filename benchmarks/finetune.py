"""Frozen MobileNetV2 with a trained head beside fine-tuning its last 1, 2 or 3 blocks (with
their own lower learning rate and augmentation on the images), on the same split: test
accuracy, wall time per trial and per epoch on this machine. Each fine-tuning arm runs twice:
on the cached output of the frozen prefix (the default) and through the whole backbone every
step (transfer.cache_prefix: false, the plain way).

    .venv/bin/python -m benchmarks.finetune [--data PATH] [--per-class N] [--epochs N]

Fine-tuning runs the whole backbone forward every epoch, so on 2 CPU cores it is sized down
(--per-class training photos per class); the frozen head trains on cached features."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from asl_sweep.search.evaluation import predict_labels
from asl_sweep.settings.config import TrainConfig
from asl_sweep.training.train import train
from benchmarks.common import ASL, per_class, shown, study_data, write_result


def arms(epochs: int) -> dict[str, TrainConfig]:
    base = {"model": "transfer", "hidden": [], "batch_size": 32, "device": "cpu",
            "optimizer": "adam"}
    out = {"frozen head": TrainConfig(**base, lr=1e-3, epochs=30,
                                      transfer={"backbone": "mobilenet_v2", "trainable": 0})}
    for n in (1, 2, 3):
        for cached in (True, False):
            out[f"fine-tune last {n}, {'cached prefix' if cached else 'whole backbone'}"] = \
                TrainConfig(**base, lr=1e-3, epochs=epochs, augment={"rotation": 10.0},
                            transfer={"backbone": "mobilenet_v2", "trainable": n,
                                      "backbone_lr": 0.1, "feature_views": 3,
                                      "cache_prefix": cached})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ASL)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--synthetic", action="store_true", help="the built-in signers instead")
    args = parser.parse_args()
    if args.synthetic:
        args.data = None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = study_data(args.data, 224, Path(tmp), per_class=60)
        split = per_class(data.split(), args.per_class, val=10_000)
        test = data.test(224)
        for name, cfg in arms(args.epochs).items():
            started = time.perf_counter()
            result = train(cfg, split, "cpu", cache_dir=Path(tmp))
            seconds = time.perf_counter() - started
            accuracy = float((predict_labels(result.model, test.x) == test.y.numpy()).mean())
            epoch_s = sorted(s.seconds for s in result.history)[len(result.history) // 2]
            rows.append({"arm": name, "epochs": cfg.epochs, "trial_s": round(seconds, 1),
                         "epoch_s": round(epoch_s, 2),
                         "before_epochs_s": round(seconds - sum(s.seconds for s in
                                                                result.history), 1),
                         "val_acc": round(result.best.val_acc, 4), "test_acc": round(accuracy, 4),
                         "train_images": len(split.y_train), "test_images": len(test.y)})
            print(rows[-1], flush=True)
    name = "finetune_" + ("asl" if args.data else "synthetic")
    print(f"written to {write_result(name, {'data': shown(args.data), 'rows': rows})}")


if __name__ == "__main__":
    main()
