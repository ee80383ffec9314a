"""Building blocks shared by every model family: the input description, in-model
normalization, the convolutions' input layout, activations and the MLP stack (the MLP
itself, and the head of CNNs and transfer models)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from asl_sweep.settings.config import TrainConfig

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "silu": nn.SiLU,
}


@dataclass(frozen=True)
class InputSpec:
    """What a model is built for: image size, classes and the training set's pixel stats."""

    image_size: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def channels_last_on_cpu(x: torch.Tensor) -> torch.Tensor:
    """A batch about to enter convolutions, channels-last where it is on a CPU: oneDNN's
    convolutions and pooling run faster on that layout (an epoch of the shipped CNNs
    0.68-0.86x the time, benchmarks/channels_last.py; MobileNetV2's frozen pass at 224px
    0.60-0.71x, ResNet-18's and AlexNet's 0.77-0.84x, benchmarks/transfer_channels_last.py;
    a fine-tuning epoch on the cached prefix 0.78-0.83x, benchmarks/suffix_channels_last.py).
    Only the layout changes: the values are the same up to float rounding. GPUs keep the
    layout they had (not measured here), and so does a flat tensor (a prefix cut after the
    flattening: AlexNet's linear layers), which has no channels to move."""
    if x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def mlp_layers(in_features: int, cfg: TrainConfig, num_classes: int) -> list[nn.Module]:
    """[dropout] -> (linear -> activation -> [dropout])* -> linear, as the reference search."""
    layers: list[nn.Module] = []
    width = in_features
    if cfg.dropout_at(0) > 0:
        layers.append(nn.Dropout(cfg.dropout_at(0)))
    for i, hidden in enumerate(cfg.hidden, start=1):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[cfg.activation]()]
        if cfg.dropout_at(i) > 0:
            layers.append(nn.Dropout(cfg.dropout_at(i)))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return layers
