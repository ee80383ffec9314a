"""One head trial on frozen MobileNetV2 features: cached features versus the plain way,
which runs the frozen backbone over every image in every epoch. Same data, settings, seed.

    .venv/bin/python benchmarks/transfer_cache.py [--data PATH] [--per-class N] [--epochs 30]

The plain arm costs about 30 backbone passes over the data (MobileNetV2 runs at about
20 images/s on 2 CPU cores), so --per-class limits the photos used by both arms alike."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from asl_sweep.backbones import build_transfer
from asl_sweep.config import DataConfig, TrainConfig
from asl_sweep.data import SplitData, load_image_set, prepare_split
from asl_sweep.train import input_spec, make_optimizer, train
from benchmarks.common import ASL, write_result


def per_class_subset(split: SplitData, n: int) -> SplitData:
    def take(y):
        return torch.cat([torch.nonzero(y == c).flatten()[:n] for c in range(len(split.classes))])

    tr, va = take(split.y_train), take(split.y_val)
    return SplitData(split.x_train[tr], split.y_train[tr], split.x_val[va], split.y_val[va],
                     split.classes, f"{split.content_key}|first{n}")


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
    parser.add_argument("--per-class", type=int, default=40, help="photos per class (train+val)")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    data_cfg = DataConfig(root=args.data, image_size=224, val_fraction=0.2)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        split = prepare_split(load_image_set(data_cfg, cache), data_cfg, torch.device("cpu"))
        split = per_class_subset(split, int(args.per_class * 0.8))
        cfg = TrainConfig(model="transfer", hidden=[], lr=1e-3, batch_size=32,
                          epochs=args.epochs, transfer={"backbone": "mobilenet_v2"})
        started = time.perf_counter()
        first = train(cfg, split, "cpu", cache_dir=cache)  # extracts, then trains the head
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        cached = train(cfg, split, "cpu", cache_dir=cache)  # features from the cache
        cached_s = time.perf_counter() - started
    started = time.perf_counter()
    plain_acc = plain_trial(cfg, split)
    plain_s = time.perf_counter() - started
    cached_acc = cached.history[-1].val_acc
    result = {
        "images": {"train": len(split.y_train), "val": len(split.y_val)},
        "epochs": args.epochs,
        "first_trial_with_extraction_s": round(first_s, 2),
        "cached_trial_s": round(cached_s, 3),
        "plain_trial_s": round(plain_s, 1),
        "speedup": round(plain_s / cached_s, 1),
        "val_acc_cached": round(cached_acc, 4),
        "val_acc_plain": round(plain_acc, 4),
        "val_acc_first": round(first.history[-1].val_acc, 4),
    }
    path = write_result("transfer_cache", result)
    for key, value in result.items():
        print(f"{key:32s} {value}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
