"""A training batch augmented on its own device, as AugmentConfig says: the random draws
come from the trainer's CPU generator (so a seeded run repeats exactly on any device), the
work is whole-batch tensor ops: one warp for every geometric change, then the pixel ops.
Which op means what: geometry, photometric, trivial and mixing, each checked against
torchvision's own transform."""

from __future__ import annotations

import torch

from asl_sweep.data import geometry, photometric, trivial
from asl_sweep.settings.config import AugmentConfig


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment float [B, C, H, W] in [0, 1]: crop, zoom out, shift, rotate (and turn a
    quarter), mirror, perspective and TrivialAugment's geometric ops in one warp; then
    TrivialAugment's pixel ops, colour jitter, blur, erasing."""
    b, _, h, w = x.shape
    warp = None

    def then(m: torch.Tensor) -> None:  # `m` acts on the result of what came before
        nonlocal warp
        warp = m if warp is None else warp @ m

    if cfg.crop_scale < 1:
        then(geometry.draw_crop(b, cfg.crop_scale, cfg.crop_ratio, generator))
    if cfg.zoom_out > 1:
        r = 1 + torch.rand(b, generator=generator) * (cfg.zoom_out - 1)
        at = torch.rand(2, b, generator=generator)
        if cfg.zoom_share < 1:  # the rest keep their size (drawn only then: seeded runs repeat)
            r = torch.where(torch.rand(b, generator=generator) < cfg.zoom_share, r, torch.ones(b))
        then(geometry.zoom_out(r, at[0], at[1]))
    if cfg.translate > 0:
        d = (torch.rand(2, b, generator=generator) * 2 - 1) * cfg.translate
        then(geometry.shift(d[0], d[1]))
    angles = ((torch.rand(b, generator=generator) * 2 - 1) * cfg.rotation
              if cfg.rotation > 0 else None)
    mirror = torch.rand(b, generator=generator) < 0.5 if cfg.flip else None
    if cfg.turn > 0:
        turned = torch.rand(b, generator=generator) < cfg.turn
        side = torch.where(torch.rand(b, generator=generator) < 0.5, -90.0, 90.0)
        quarter = torch.where(turned, side, torch.zeros(b))
        angles = quarter if angles is None else angles + quarter
    if angles is not None:
        then(geometry.rotation(angles, mirror))
    elif mirror is not None and warp is not None:
        then(geometry.rotation(torch.zeros(b), mirror))
    if cfg.perspective > 0:
        then(geometry.draw_perspective(b, cfg.perspective, generator))
    ops = trivial.draw(b, cfg.trivial, generator) if cfg.trivial > 0 else None
    if ops is not None:
        then(trivial.matrices(*ops))
    if warp is not None:
        x = geometry.warp(x, warp)
    elif mirror is not None:  # a mirror alone needs no resampling
        x = geometry.hflip(x, mirror)
    if ops is not None:
        x = trivial.pixels(x, *ops)
    if cfg.jitter:
        x = _jitter(x, cfg, generator)
    if cfg.blur_kernel > 1:
        lo, hi = cfg.blur_sigma
        sigma = lo + torch.rand(b, generator=generator) * (hi - lo)
        x = photometric.gaussian_blur(x, cfg.blur_kernel, sigma)
    if cfg.erase > 0:
        x = photometric.erase(x, photometric.draw_erase(b, h, w, cfg.erase, generator))
    return x


def _jitter(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """ColorJitter, batched: each image its own factors, applied brightness, contrast,
    saturation, hue (torchvision shuffles that order per call)."""
    b = x.shape[0]

    def factor(s: float) -> torch.Tensor:
        lo = max(0.0, 1.0 - s)
        return lo + torch.rand(b, generator=generator) * (1.0 + s - lo)

    if cfg.brightness > 0:
        x = photometric.brightness(x, factor(cfg.brightness))
    if cfg.contrast > 0:
        x = photometric.contrast(x, factor(cfg.contrast))
    if cfg.saturation > 0:
        x = photometric.saturation(x, factor(cfg.saturation))
    if cfg.hue > 0:
        x = photometric.hue(x, (torch.rand(b, generator=generator) * 2 - 1) * cfg.hue)
    return x
