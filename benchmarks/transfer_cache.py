"""One head trial on frozen MobileNetV2 features: cached features versus the plain way,
which runs the frozen backbone over every image in every epoch. Same data, settings, seed.

    .venv/bin/python -m benchmarks.transfer_cache [--data PATH] [--per-class N] [--epochs 30]

The plain arm costs about 30 backbone passes over the data (MobileNetV2 runs at about
20 images/s on 2 CPU cores), so --per-class limits the photos used by both arms alike."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from asl_sweep.data.studydata import SplitData
from asl_sweep.models.backbones import build_transfer
from asl_sweep.settings.config import TrainConfig
from asl_sweep.training.optim import make_optimizer
from asl_sweep.training.train import input_spec, train
from benchmarks.common import ASL, per_class, shown, study_data, write_result


def plain_trial(cfg: TrainConfig, data: SplitData) -> float:
    """The usual loop: frozen backbone in the forward pass of every step and every eval."""
    torch.manual_seed(cfg.seed)
    model = build_transfer(cfg, input_spec(data))
    optimizer = make_optimizer(cfg, model.head)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    val_acc = 0.0
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(data.y_train), generator=generator)
        for start in range(0, len(data.y_train), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            with torch.no_grad():
                feats = model.features(data.x_train[idx].float() / 255)
            loss = F.cross_entropy(model.head(feats), data.y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = 0
            for start in range(0, len(data.y_val), 64):
                logits = model(data.x_val[start:start + 64].float() / 255)
                correct += (logits.argmax(1) == data.y_val[start:start + 64]).sum().item()
        val_acc = correct / len(data.y_val)
    return val_acc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ASL)
    parser.add_argument("--per-class", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    cfg = TrainConfig(model="transfer", hidden=[], epochs=args.epochs, batch_size=64,
                      transfer={"backbone": "mobilenet_v2", "weights": "imagenet"}, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        full = study_data(args.data, 224, cache).split()
        data = per_class(full, args.per_class, val=args.per_class * 9)
        # The cache holds the whole pool; the first trial of a study pays its extraction.
        started = time.perf_counter()
        first = train(cfg, data, "cpu", cache_dir=cache)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        cached = train(cfg, data, "cpu", cache_dir=cache)
        cached_s = time.perf_counter() - started
        started = time.perf_counter()
        plain_acc = plain_trial(cfg, data)
        plain_s = time.perf_counter() - started
    result = {"data": shown(args.data), "train_images": len(data.y_train),
              "val_images": len(data.y_val), "pool_images": int(full.x_pool.shape[0]),
              "epochs": args.epochs, "first_trial_with_extraction_s": round(first_s, 2),
              "cached_trial_s": round(cached_s, 3), "plain_trial_s": round(plain_s, 1),
              "speedup": round(plain_s / cached_s, 1),
              "val_acc_cached": round(cached.best.val_acc, 4),
              "val_acc_last_epoch_cached": round(cached.history[-1].val_acc, 4),
              "val_acc_plain_last_epoch": round(plain_acc, 4),
              "val_acc_first": round(first.best.val_acc, 4)}
    print(result)
    print(f"written to {write_result('transfer_cache', result)}")


if __name__ == "__main__":
    main()
