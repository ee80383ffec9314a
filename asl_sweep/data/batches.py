"""Training batches cut from tensors already on the device: images (augmented in batches)
or cached frozen features; `copies` views of each sample per epoch. Each batch is
(inputs, labels, targets): the targets are the labels, or soft targets where mixup or
cutmix blended the batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from asl_sweep.data.augment import augment_batch
from asl_sweep.data.mixing import mix_batch
from asl_sweep.settings.config import TrainConfig

# (inputs, labels, targets): the targets are the labels or, mixed, soft targets [B, classes]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def epoch_order(n: int, copies: int, generator: torch.Generator) -> torch.Tensor:
    """Every sample index `copies` times, shuffled."""
    return torch.randperm(n * copies, generator=generator) % n


class ImageBatches:
    """Batches cut from uint8 tensors on the device; `copies` augmented views per epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, num_classes: int):
        self.x, self.y, self.cfg, self.num_classes = x, y, cfg, num_classes

    def __len__(self) -> int:
        return len(self.y) * self.cfg.augment.copies

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        aug = self.cfg.augment
        order = epoch_order(len(self.y), aug.copies, generator)
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size].to(self.x.device)
            xb, yb = self.x[idx].float().div_(255), self.y[idx]
            if aug.transforms:
                xb = augment_batch(xb, aug, generator)
            target = yb
            if aug.mixes:
                xb, target = mix_batch(xb, yb, self.num_classes, aug, generator)
            yield xb, yb, target


class FeatureBatches:
    """Batches of cached frozen-backbone features; each sample draws one of its views."""

    def __init__(self, views: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, num_classes: int):
        self.views, self.y, self.cfg, self.num_classes = views, y, cfg, num_classes

    def __len__(self) -> int:
        return len(self.y) * self.cfg.augment.copies

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        k = self.views.shape[0]
        order = epoch_order(len(self.y), self.cfg.augment.copies, generator)
        which = torch.randint(k, (len(order),), generator=generator) if k > 1 else None
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size].to(self.views.device)
            view = 0 if which is None else which[start:start + self.cfg.batch_size].to(idx.device)
            xb, yb = self.views[view, idx], self.y[idx]
            target = yb
            if self.cfg.augment.mixup > 0:  # features can be mixed up, not cut
                xb, target = mix_batch(xb, yb, self.num_classes, self.cfg.augment, generator,
                                       images=False)
            yield xb, yb, target
