"""Model families, built from a TrainConfig through one registry: the MLP, a small CNN
trained from scratch, and pretrained backbones with a head (asl_sweep.models.backbones). Every
model takes float images in [0, 1] and normalizes them itself, so an exported model carries
its own preprocessing."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from asl_sweep.models.layers import (
    ACTIVATIONS,
    InputSpec,
    Normalize,
    channels_last_on_cpu,
    mlp_layers,
)
from asl_sweep.runtime.errors import SettingsError
from asl_sweep.settings.config import TrainConfig


class MLP(nn.Module):
    def __init__(self, cfg: TrainConfig, spec: InputSpec):
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.classifier = nn.Sequential(*mlp_layers(3 * spec.image_size ** 2, cfg,
                                                    spec.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.normalize(x).flatten(1))


def build_mlp(cfg: TrainConfig, spec: InputSpec, pretrained: bool = True) -> nn.Module:
    return MLP(cfg, spec)


class CNN(nn.Module):
    """conv blocks -> global average pooling -> MLP head, trained from scratch."""

    def __init__(self, cfg: TrainConfig, spec: InputSpec):
        super().__init__()
        c = cfg.cnn
        if spec.image_size >> len(c.channels) < 1:
            raise SettingsError(f"cnn.channels: {len(c.channels)} pooled blocks need images of "
                                f"at least {2 ** len(c.channels)}px, these are "
                                f"{spec.image_size}px; use fewer blocks or a larger image_size")
        self.normalize = Normalize(spec.mean, spec.std)
        blocks: list[nn.Module] = []
        width = 3
        for channels in c.channels:
            blocks.append(nn.Conv2d(width, channels, c.kernel, padding=c.kernel // 2,
                                    bias=not c.batch_norm))
            if c.batch_norm:
                blocks.append(nn.BatchNorm2d(channels))
            blocks += [ACTIVATIONS[cfg.activation](),
                       nn.MaxPool2d(2) if c.pool == "max" else nn.AvgPool2d(2)]
            if c.dropout > 0:
                blocks.append(nn.Dropout2d(c.dropout))
            width = channels
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = nn.Sequential(*mlp_layers(width, cfg, spec.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(channels_last_on_cpu(self.normalize(x))))


def build_cnn(cfg: TrainConfig, spec: InputSpec, pretrained: bool = True) -> nn.Module:
    return CNN(cfg, spec)


def build_transfer(cfg: TrainConfig, spec: InputSpec, pretrained: bool = True) -> nn.Module:
    from asl_sweep.models import backbones  # torchvision models load only when used

    return backbones.build_transfer(cfg, spec, pretrained)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "transfer": build_transfer,
}


def build_model(cfg: TrainConfig, spec: InputSpec, pretrained: bool = True) -> nn.Module:
    """pretrained=False: skip loading pretrained weights (a checkpoint will set them all)."""
    return MODELS[cfg.model](cfg, spec, pretrained)


def check_fits(cfg: TrainConfig, spec: InputSpec, memory: int | None, where: str) -> None:
    """A SettingsError where training the model these settings describe takes more than
    `memory` bytes (`where`: whose memory): its weights, and for each trained weight its
    gradient and the optimizer's state (Adam: two, SGD with momentum: one), in float32. The
    model is built on the meta device (no memory); the figure is a lower bound (activations
    come on top), so a model it refuses cannot fit. Without it a model too large for the
    machine was torch's allocator error as a traceback, or the process killed mid-epoch."""
    if not memory:
        return
    with torch.device("meta"):
        model = build_model(cfg, spec, pretrained=False)
    weights, trained = count_parameters(model), count_parameters(model, trainable_only=True)
    slots = 2 if cfg.optimizer in ("adam", "adamw") else int(cfg.momentum > 0)
    need = 4 * (weights + trained * (1 + slots))
    if need > memory:
        raise SettingsError(
            f"the {cfg.model} these settings describe has {weights / 1e6:,.0f} million "
            f"weights: training it takes at least {need / 2 ** 30:.1f} GiB (weights, "
            f"gradients, {cfg.optimizer}'s state), more than the {memory / 2 ** 30:.1f} GiB "
            f"of {where}; use smaller layers (hidden, cnn.channels) or a smaller image_size")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class Ensemble(nn.Module):
    """Several models of one architecture as one: the log of their mean class probabilities,
    so a softmax of its output is that mean (what Deployable returns, in every export form)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(0)
        return torch.log(probabilities.clamp_min(1e-12))


class Deployable(nn.Module):
    """images [B, 3, H, W] of any size, uint8 in 0..255 or float in 0..255 or 0..1 -> class
    probabilities. Resizing is unconditional (at the model's own size it is an exact identity),
    so exporters can keep H and W dynamic.

    One input rule for every form (TorchScript, the registered model, `predict`): uint8 is
    0..255; a float image whose largest value is above 1 is 0..255, else 0..1 (MLflow serving
    turns JSON integers into float 0..255 and keeps JSON floats 0..1; a float 0..255 tensor
    fed to TorchScript read as 0..1 gave a confident wrong class). `float_pixels="0-1"`
    reads every float image as 0..1 (kept for callers that need it)."""

    def __init__(self, model: nn.Module, image_size: int, resize: bool = True,
                 float_pixels: str = "auto"):
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.resize = resize  # False: inputs come at image_size (ONNX lacks antialiased resize)
        self.auto_scale = float_pixels == "auto"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        elif self.auto_scale:  # per image: 0..255 if any value is above 1, else 0..1
            peak = x.amax(dim=(1, 2, 3), keepdim=True)
            x = torch.where(peak > 1.0, x / 255.0, x)
        if self.resize:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return torch.softmax(self.model(x), dim=1)
