"""Frozen-backbone features, computed once and cached on disk: a head trial then trains in
seconds instead of running the backbone over every image in every epoch. The same for
fine-tuning: the output of the backbone's frozen prefix (everything before the first
fine-tuned block) is cached, so an epoch runs only the blocks that learn; a prefix that ends
later than one already cached is computed from it, running only the frozen modules between.

Features are computed for the whole pool (every image the search may see, never the test
split), so every validation fold and every repeat reads the same cache. The key covers
everything that changes them: backbone, weights, images and size, the augmented views with
their augmentation and the seed that draws them, and the autocast precision."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from asl_sweep.data.augment import augment_batch
from asl_sweep.data.studydata import SplitData
from asl_sweep.runtime import signals
from asl_sweep.runtime.errors import ModelFileError
from asl_sweep.runtime.files import atomic_torch_save, load_tensors
from asl_sweep.settings.config import TrainConfig

log = logging.getLogger(__name__)

EXTRACT_BATCH = 64


@dataclass
class FeatureSet:
    train: torch.Tensor  # [views, N_train, ...]; view 0 is the un-augmented image
    val: torch.Tensor  # [N_val, ...]: features [D], or a prefix's output [C, H, W]
    from_cache: bool


def views_of(cfg: TrainConfig) -> int:
    return cfg.transfer.feature_views if cfg.augment.transforms else 1


def feature_key(cfg: TrainConfig, weights_id: str, data: SplitData,
                amp: torch.dtype | None = None, cut: int | None = None) -> str:
    views = views_of(cfg)
    parts = [cfg.transfer.backbone, weights_id, data.pool_key, f"views{views}", f"amp{amp}"]
    if cut is not None:  # the prefix's output, up to this module of the backbone's chain
        parts.append(f"prefix{cut}")
    if views > 1:
        parts += [cfg.augment.views_key(), f"views_seed{cfg.transfer.views_seed}"]
    if weights_id == "none":  # random weights depend on the seed
        parts.append(f"init{cfg.seed}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def cache_path(cache_dir: Path | str, cfg: TrainConfig, model, data: SplitData,
               amp: torch.dtype | None, cut: int | None) -> Path:
    """The cache file of the pool's features (cut None) or of the prefix ending at `cut`."""
    key = feature_key(cfg, model.weights_id, data, amp, cut)
    return Path(cache_dir) / f"{'features' if cut is None else 'prefix'}-{key[:24]}.pt"


def _read_cached(path: Path, cfg: TrainConfig, data: SplitData) -> torch.Tensor | None:
    """The pool's cached tensor [views, N_pool, ...], or None where the file is missing,
    damaged or not what this key describes: a cache is rebuilt, never trusted, as the
    decoded images' cache is (the rebuilt file replaces it)."""
    if not path.exists():
        return None
    views, n_pool = views_of(cfg), len(data.x_pool)
    try:
        stored = load_tensors(path)  # names the path in its error
        pool = stored.get("pool") if isinstance(stored, dict) else None
        if not isinstance(pool, torch.Tensor) or pool.dim() < 3 or \
                tuple(pool.shape[:2]) != (views, n_pool):
            raise ModelFileError(f"{path}: holds no [{views}, {n_pool}, ...] tensor")
    except ModelFileError as e:
        log.warning("%s; the feature cache is computed again and replaced", e)
        return None
    return pool


@torch.inference_mode()
def _from_earlier_prefix(model, cfg: TrainConfig, data: SplitData, device: torch.device,
                         cache_dir: Path, amp: torch.dtype | None) -> torch.Tensor | None:
    """The prefix ending at model.cut computed from a cached prefix that ends earlier (the
    same images, views, weights and precision), running only the frozen modules between the
    two: fine-tuning the last 5 blocks after the last 8 were tried costs the three blocks
    between them, not the backbone's first dozen layers at full resolution again. The
    nearest earlier cut is taken; None where none is cached. The values are those of the
    full pass up to float rounding."""
    for cut in range(model.cut - 1, 0, -1):
        earlier = _read_cached(cache_path(cache_dir, cfg, model, data, amp, cut), cfg, data)
        if earlier is not None:
            break
    else:
        return None
    model.eval()
    views = []
    for view in earlier:
        out = []
        for start in range(0, len(view), EXTRACT_BATCH):
            signals.check()  # Ctrl-C / SIGTERM: stop between batches (nothing cached yet)
            h = view[start:start + EXTRACT_BATCH].to(device)
            with torch.autocast(device.type, amp, enabled=amp is not None):
                h = model.between(h, cut, model.cut)
            out.append(h.float().contiguous())
        views.append(torch.cat(out))
    return torch.stack(views)


@torch.inference_mode()
def extract(model, x: torch.Tensor, cfg: TrainConfig, view: int,
            amp: torch.dtype | None, prefix: bool = False) -> torch.Tensor:
    """Features of uint8 images x (or the frozen prefix's output); view > 0 sees them
    augmented, seeded by the view."""
    generator = torch.Generator().manual_seed(cfg.transfer.views_seed * 1000 + view)
    model.eval()
    out = []
    for start in range(0, len(x), EXTRACT_BATCH):
        signals.check()  # Ctrl-C / SIGTERM: stop between batches (nothing cached yet)
        xb = x[start:start + EXTRACT_BATCH].float().div_(255)
        if view > 0:
            xb = augment_batch(xb, cfg.augment, generator)
        with torch.autocast(x.device.type, amp, enabled=amp is not None):
            # contiguous: a prefix's output comes channels-last from a CPU backbone; the
            # cache and the blocks trained on it keep one layout wherever it was computed
            out.append((model.prefix(xb) if prefix else model.features(xb)).float()
                       .contiguous())
    return torch.cat(out)


def frozen_features(model, cfg: TrainConfig, data: SplitData, device: torch.device,
                    cache_dir: Path | None, amp: torch.dtype | None = None,
                    prefix: bool = False) -> FeatureSet:
    """The pool's features (prefix=True: the frozen prefix's output), from the cache when
    its key matches (a damaged cache file is computed again and replaced); a prefix not
    cached from one that ends earlier where that is."""
    path, pool, from_cache = None, None, False
    if cache_dir is not None:
        path = cache_path(cache_dir, cfg, model, data, amp, model.cut if prefix else None)
        pool = _read_cached(path, cfg, data)
        if pool is not None:
            pool, from_cache = pool.to(device), True
    if pool is None and prefix and cache_dir is not None:
        pool = _from_earlier_prefix(model, cfg, data, device, Path(cache_dir), amp)
    if pool is None:
        pool = torch.stack([extract(model, data.x_pool, cfg, v, amp, prefix)
                            for v in range(views_of(cfg))])
    if path is not None and not from_cache:
        atomic_torch_save({"pool": pool.cpu()}, path)
    train_pos, val_pos = data.train_pos.to(pool.device), data.val_pos.to(pool.device)
    return FeatureSet(pool[:, train_pos], pool[0, val_pos], from_cache)
