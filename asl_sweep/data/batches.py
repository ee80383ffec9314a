"""Training batches cut from tensors already on the device: images (augmented in batches)
or cached frozen features; `copies` views of each sample per epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from asl_sweep.data.augment import augment_batch
from asl_sweep.settings.config import TrainConfig


def epoch_order(n: int, copies: int, generator: torch.Generator) -> torch.Tensor:
    """Every sample index `copies` times, shuffled."""
    return torch.randperm(n * copies, generator=generator) % n


class ImageBatches:
    """Batches cut from uint8 tensors on the device; `copies` augmented views per epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig):
        self.x, self.y, self.cfg = x, y, cfg

    def __len__(self) -> int:
        return len(self.y) * self.cfg.augment.copies

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(len(self.y), self.cfg.augment.copies, generator)
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size].to(self.x.device)
            xb = self.x[idx].float().div_(255)
            if self.cfg.augment.transforms:
                xb = augment_batch(xb, self.cfg.augment, generator)
            yield xb, self.y[idx]


class FeatureBatches:
    """Batches of cached frozen-backbone features; each sample draws one of its views."""

    def __init__(self, views: torch.Tensor, y: torch.Tensor, cfg: TrainConfig):
        self.views, self.y, self.cfg = views, y, cfg

    def __len__(self) -> int:
        return len(self.y) * self.cfg.augment.copies

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        k = self.views.shape[0]
        order = epoch_order(len(self.y), self.cfg.augment.copies, generator)
        which = torch.randint(k, (len(order),), generator=generator) if k > 1 else None
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size].to(self.views.device)
            view = 0 if which is None else which[start:start + self.cfg.batch_size].to(idx.device)
            yield self.views[view, idx], self.y[idx]
