"""The augmentation toolbox (issue 20): asl-sweep's batched path, every image with its own
draws, against torchvision.transforms.v2 applied per image (the plain way to get per-image
draws), with the same transforms and strengths. Images: the ASL photos when present, else
the built-in signers.

    .venv/bin/python -m benchmarks.augment [--data PATH] [--images 512] [--repeats 3]"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import torch
from torchvision.transforms import v2

from asl_sweep.data.augment import augment_batch
from asl_sweep.data.images import load_image_set
from asl_sweep.data.mixing import mix_batch
from asl_sweep.settings.config import AugmentConfig
from benchmarks.common import ASL, median_time, shown, study_data, write_result

# One setting per lever, each at a strength a search might pick.
LEVERS = {
    "crop": dict(crop_scale=0.35),
    "translate": dict(translate=0.1),
    "rotate+flip": dict(rotation=15, flip=True),
    "jitter": dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05),
    "erase": dict(erase=0.5),
    "trivial": dict(trivial=1.0),
    "all": dict(crop_scale=0.35, rotation=15, flip=True, brightness=0.4, contrast=0.4,
                saturation=0.4, hue=0.05, erase=0.5),
}


def per_image_v2(cfg: AugmentConfig, size: int) -> v2.Compose:
    """The same transforms as torchvision.transforms.v2 objects, for one image at a time."""
    steps = []
    if cfg.crop_scale < 1:
        steps.append(v2.RandomResizedCrop(size, scale=(cfg.crop_scale, 1.0),
                                          ratio=cfg.crop_ratio, antialias=False))
    if cfg.translate > 0:
        steps.append(v2.RandomAffine(0, translate=(cfg.translate, cfg.translate)))
    if cfg.rotation > 0:
        steps.append(v2.RandomRotation(cfg.rotation))
    if cfg.flip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.trivial > 0:
        steps.append(v2.TrivialAugmentWide())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if cfg.jitter:
        steps.append(v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue))
    if cfg.erase > 0:
        steps.append(v2.RandomErasing(cfg.erase))
    return v2.Compose(steps)


def batched(x: torch.Tensor, cfg: AugmentConfig) -> list[torch.Tensor]:
    """asl-sweep's path: batches of 64 as the trainer cuts them, per-image draws."""
    g = torch.Generator().manual_seed(0)
    return [augment_batch(x[i:i + 64].float() / 255, cfg, g) for i in range(0, len(x), 64)]


def mixed(x: torch.Tensor, y: torch.Tensor, fn) -> list:
    return [fn(x[i:i + 64].float() / 255, y[i:i + 64]) for i in range(0, len(x), 64)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ASL if ASL.exists() else None)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (64, 224):
            cfg0 = study_data(args.data, size, Path(tmp)).cfg
            x = load_image_set(cfg0, size, Path(tmp), lambda _: None).images[:args.images].clone()
            for name, settings in LEVERS.items():
                cfg = AugmentConfig(**settings)
                ours, _ = median_time(partial(batched, x, cfg), args.repeats)
                plain_t = per_image_v2(cfg, size)
                plain, _ = median_time(partial(lambda t, x: [t(img) for img in x], plain_t, x),
                                       args.repeats)
                rows.append({"size": size, "lever": name, "images": len(x),
                             "batched_s": round(ours, 4), "v2_per_image_s": round(plain, 4),
                             "speedup": round(plain / ours, 1)})
                print(rows[-1], flush=True)
            y = torch.zeros(len(x), dtype=torch.int64)
            mix, g = AugmentConfig(mixup=0.2, cutmix=1.0), torch.Generator().manual_seed(0)
            ours, _ = median_time(partial(mixed, x, y, partial(mix_batch, num_classes=9, cfg=mix,
                                                                 generator=g)), args.repeats)
            choice = v2.RandomChoice([v2.MixUp(alpha=0.2, num_classes=9),
                                      v2.CutMix(alpha=1.0, num_classes=9)])
            plain, _ = median_time(partial(mixed, x, y, choice), args.repeats)
            rows.append({"size": size, "lever": "mixup|cutmix (one draw a batch in both)",
                         "images": len(x), "batched_s": round(ours, 4),
                         "v2_per_image_s": round(plain, 4), "speedup": round(plain / ours, 1)})
            print(rows[-1], flush=True)
    path = write_result("augment", {"data": shown(args.data), "threads": torch.get_num_threads(),
                                    "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
