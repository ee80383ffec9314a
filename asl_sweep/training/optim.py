"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from asl_sweep.settings.config import TrainConfig


def make_optimizer(cfg: TrainConfig, module: nn.Module) -> torch.optim.Optimizer:
    """One optimizer over the module's trainable parameters, in the module's own parameter
    groups where it has them (a fine-tuned backbone learns slower than its head). The fused
    update (one pass over each parameter tensor instead of several) halves the step of the
    memory-bound MLP; where a device lacks it, the plain update is used."""
    if hasattr(module, "param_groups"):
        groups = module.param_groups(cfg)
    else:
        groups = [{"params": [p for p in module.parameters() if p.requires_grad], "lr": cfg.lr}]
    for group in groups:
        group["initial_lr"] = group["lr"]  # what the schedule scales
    kinds = {"sgd": (torch.optim.SGD, {"momentum": cfg.momentum}),
             "adam": (torch.optim.Adam, {}), "adamw": (torch.optim.AdamW, {})}
    kind, extra = kinds[cfg.optimizer]
    try:
        return kind(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, **extra)
    except (RuntimeError, TypeError, ValueError):
        return kind(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the learning rate at optimizer step `step` (0-based): a
    pure function of the step, so a resumed run continues the same curve."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total - 1, cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        warm = warm or int(0.3 * total)
        if step < warm:
            return 0.04 + 0.96 * step / warm
        progress = (step - warm) / max(1, total - warm)
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "step":
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    return 1.0
