"""Frozen-backbone features, computed once and cached on disk: a head trial then trains in
seconds instead of running the backbone over every image in every epoch. The cache key
covers the backbone, its weights, the images and split, the size and the augmented views,
the augmentation and its seed, and the autocast precision, so changing any of them computes
the features anew."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from asl_sweep.augment import augment_batch
from asl_sweep.config import TrainConfig
from asl_sweep.data import SplitData
from asl_sweep.files import atomic_torch_save, load_tensors

EXTRACT_BATCH = 64


@dataclass
class FeatureSet:
    train: torch.Tensor  # [views, N, D]; view 0 is the un-augmented image
    val: torch.Tensor  # [N_val, D]
    from_cache: bool


def views_of(cfg: TrainConfig) -> int:
    return cfg.transfer.feature_views if cfg.augment.transforms else 1


def feature_key(cfg: TrainConfig, weights_id: str, data: SplitData,
                amp: torch.dtype | None = None) -> str:
    """Everything that changes the features: backbone, weights, images and split, size,
    views, augmentation and the seed that draws it, autocast precision."""
    views = views_of(cfg)
    parts = [cfg.transfer.backbone, weights_id, data.content_key, str(data.image_size),
             f"views{views}", f"amp{amp}"]
    if views > 1:  # augmented views are drawn from a generator seeded by the run's seed
        parts += [cfg.augment.model_dump_json(), f"seed{cfg.seed}"]
    if weights_id == "none":  # random weights depend on the seed
        parts.append(f"init{cfg.seed}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


@torch.inference_mode()
def extract(model, x: torch.Tensor, cfg: TrainConfig, view: int,
            amp: torch.dtype | None) -> torch.Tensor:
    """Features of uint8 images x; view > 0 sees them augmented, seeded by the view."""
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + view)
    model.eval()
    out = []
    for start in range(0, len(x), EXTRACT_BATCH):
        xb = x[start:start + EXTRACT_BATCH].float().div_(255)
        if view > 0:
            xb = augment_batch(xb, cfg.augment, generator)
        with torch.autocast(x.device.type, amp, enabled=amp is not None):
            out.append(model.features(xb).float())
    return torch.cat(out)


def frozen_features(model, cfg: TrainConfig, data: SplitData, device: torch.device,
                    cache_dir: Path | None, amp: torch.dtype | None = None) -> FeatureSet:
    path = None
    if cache_dir is not None:
        key = feature_key(cfg, model.weights_id, data, amp)
        path = Path(cache_dir) / f"features-{key[:24]}.pt"
        if path.exists():
            stored = load_tensors(path)
            return FeatureSet(stored["train"].to(device), stored["val"].to(device), True)
    train = torch.stack([extract(model, data.x_train, cfg, v, amp) for v in range(views_of(cfg))])
    val = extract(model, data.x_val, cfg, 0, amp)
    if path is not None:
        atomic_torch_save({"train": train.cpu(), "val": val.cpu()}, path)
    return FeatureSet(train, val, False)
