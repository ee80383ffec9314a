"""Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) of a training batch, with the
soft targets they imply: torchvision.transforms.v2's MixUp and CutMix (one mixing weight per
batch, each image paired with the one before it), drawn from the trainer's seeded generator
so that a run repeats exactly."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from asl_sweep.settings.config import AugmentConfig


def _beta(alpha: float, generator: torch.Generator) -> float:
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _targets(y: torch.Tensor, num_classes: int, lam: float) -> torch.Tensor:
    one_hot = F.one_hot(y, num_classes).float()
    return lam * one_hot + (1 - lam) * one_hot.roll(1, 0)


def mixup(x: torch.Tensor, y: torch.Tensor, num_classes: int, lam: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample blended with the one before it, weight lam on its own."""
    return lam * x + (1 - lam) * x.roll(1, 0), _targets(y, num_classes, lam)


def cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, box: tuple[int, int, int, int]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The box (y1, x1, y2, x2) of each image replaced by the image before it's; the targets
    weighted by the area each keeps."""
    y1, x1, y2, x2 = box
    h, w = x.shape[-2:]
    out = x.clone()
    out[..., y1:y2, x1:x2] = x.roll(1, 0)[..., y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    return out, _targets(y, num_classes, lam)


def cutmix_box(h: int, w: int, lam: float, generator: torch.Generator
               ) -> tuple[int, int, int, int]:
    """CutMix's box: a centre anywhere, sides sqrt(1 - lam) of the image's, clipped."""
    cy = int(torch.randint(h, (1,), generator=generator))
    cx = int(torch.randint(w, (1,), generator=generator))
    r = 0.5 * float(np.sqrt(1.0 - lam))
    rh, rw = int(r * h), int(r * w)
    return max(cy - rh, 0), max(cx - rw, 0), min(cy + rh, h), min(cx + rw, w)


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: AugmentConfig,
              generator: torch.Generator, images: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (one of the two at random when both are on) of a batch, with soft
    targets. Anything but images (cached features, a cached prefix's output) can only be
    mixed up."""
    use_cut = cfg.cutmix > 0 and images and (
        cfg.mixup <= 0 or bool(torch.rand(1, generator=generator) < 0.5))
    if use_cut:
        lam = _beta(cfg.cutmix, generator)
        return cutmix(x, y, num_classes, cutmix_box(*x.shape[-2:], lam, generator))
    return mixup(x, y, num_classes, _beta(cfg.mixup, generator))
