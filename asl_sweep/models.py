"""Model families, built from a TrainConfig through one registry. Every model takes float
images in [0, 1] and normalizes them itself, so an exported model carries its own
preprocessing."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from asl_sweep.config import TrainConfig
from asl_sweep.layers import InputSpec, Normalize, mlp_layers


class MLP(nn.Module):
    def __init__(self, cfg: TrainConfig, spec: InputSpec):
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.classifier = nn.Sequential(*mlp_layers(3 * spec.image_size ** 2, cfg, spec.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.normalize(x).flatten(1))


def build_mlp(cfg: TrainConfig, spec: InputSpec, pretrained: bool = True) -> nn.Module:
    return MLP(cfg, spec)


def build_transfer(cfg: TrainConfig, spec: InputSpec, pretrained: bool = True) -> nn.Module:
    from asl_sweep import backbones  # torchvision models load only when used

    return backbones.build_transfer(cfg, spec, pretrained)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": build_mlp,
    "transfer": build_transfer,
}


def build_model(cfg: TrainConfig, spec: InputSpec, pretrained: bool = True) -> nn.Module:
    """pretrained=False: skip loading pretrained weights (a checkpoint will set them all)."""
    return MODELS[cfg.model](cfg, spec, pretrained)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
