"""Typed settings of the data and of the trainer (pydantic), and dotted-path overrides of
them. Built once at the edge (studyfile.py reads them from YAML) and passed down; nothing
downstream handles raw dicts. Imports no torch, so a bad setting is reported before anything
heavy loads. The study's stages and search spaces are in spec.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

METRICS = ("val_acc", "train_acc", "val_loss", "train_loss")
Metric = Literal["val_acc", "train_acc", "val_loss", "train_loss"]
Direction = Literal["maximize", "minimize"]
# The backbones asl_sweep.models.backbones registers (a test holds the two lists equal).
Backbone = Literal["alexnet", "mobilenet_v2", "resnet18"]
MAX_LIST = 64  # the longest list a key path may reach into (hidden widths, dropout rates)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- data
class SyntheticConfig(Strict):
    per_class: int = Field(60, ge=2, description="images per letter")
    signers: int = Field(24, ge=3, description="synthetic people, each with a style")
    seed: int = 0


class DataConfig(Strict):
    root: Path | None = None  # ImageFolder layout; None = built-in synthetic letters
    synthetic: SyntheticConfig = SyntheticConfig()
    image_size: int = Field(64, ge=8, le=1024)
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.15, gt=0.0, lt=1.0)  # scored once, after the search
    seed: int = 0
    # regex; group 1 names the person/source of a file. The built-in set is always split by
    # its signers.
    group_pattern: str | None = None
    on_bad_image: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _room_to_train(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(f"val_fraction {self.val_fraction} + test_fraction "
                             f"{self.test_fraction} leave too little to train on (< 10%)")
        return self

    @field_validator("group_pattern")
    @classmethod
    def _regex_with_group(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            compiled = re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regex: {e}") from None
        if compiled.groups < 1:
            raise ValueError("needs a capturing group naming the person/source, e.g. '^([^_]+)_'")
        return v


# ---------------------------------------------------------------- trainer
class AugmentConfig(Strict):
    """Training-time augmentation, every one off by default and each a searchable setting.
    Applied to whole batches on the data's device, in this order: one geometric warp (random
    resized crop, translation, rotation, mirror, TrivialAugment's shears/shifts/rotations),
    TrivialAugment's pixel ops, colour jitter, blur, random erasing; then mixup or cutmix of
    the batch. Exported models never augment."""

    rotation: float = Field(0.0, ge=0.0, le=180.0, description="max degrees, uniform +-")
    flip: bool = False  # random horizontal flip with p=0.5
    blur_kernel: int = Field(0, ge=0, description="odd Gaussian kernel size; 0 = no blur")
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # sigma drawn per image, as torchvision
    copies: int = Field(1, ge=1, description="augmented views of each image per epoch")
    # random resized crop: the crop's area is a fraction drawn from [crop_scale, 1] of the
    # image, its aspect ratio log-uniform in crop_ratio; 1 = off (torchvision's default: 0.08)
    crop_scale: float = Field(1.0, gt=0.0, le=1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    translate: float = Field(0.0, ge=0.0, le=0.5, description="max shift, fraction of a side")
    # colour jitter: factors drawn from [max(0, 1-s), 1+s]; hue shifted by up to +-hue turns
    brightness: float = Field(0.0, ge=0.0, le=1.0)
    contrast: float = Field(0.0, ge=0.0, le=1.0)
    saturation: float = Field(0.0, ge=0.0, le=1.0)
    hue: float = Field(0.0, ge=0.0, le=0.5)
    erase: float = Field(0.0, ge=0.0, le=1.0, description="random erasing probability")
    # TrivialAugment: each image gets one op drawn from 14, at a strength drawn from
    # [0, trivial] x TrivialAugmentWide's range (1.0 = its full range); 0 = off
    trivial: float = Field(0.0, ge=0.0, le=1.0)
    mixup: float = Field(0.0, ge=0.0, le=10.0, description="Beta(alpha, alpha); 0 = off")
    cutmix: float = Field(0.0, ge=0.0, le=10.0, description="Beta(alpha, alpha); 0 = off")

    @property
    def transforms(self) -> bool:
        """Whether any single image is changed (copies alone only repeat images; mixing
        combines images of a batch and is not a transform of one)."""
        return (self.rotation > 0 or self.flip or self.blur_kernel > 1 or self.crop_scale < 1
                or self.translate > 0 or self.jitter or self.erase > 0 or self.trivial > 0)

    @property
    def jitter(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.saturation > 0 or self.hue > 0

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def views_key(self) -> str:
        """What changes an augmented view of one image (not mixing, not copies)."""
        return self.model_dump_json(exclude={"mixup", "cutmix", "copies"})

    @field_validator("blur_kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v and v % 2 == 0:
            raise ValueError("must be odd (3, 5, ...) or 0")
        return v

    @field_validator("crop_ratio", "blur_sigma")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("must be [low, high] with 0 < low <= high")
        return v


class TransferConfig(Strict):
    backbone: Backbone = "mobilenet_v2"
    weights: str = "imagenet"  # imagenet | none | path to a .pth file
    trainable: int = Field(0, ge=0, description="last N backbone blocks trained; 0 = head only")
    backbone_lr: float = Field(0.1, gt=0.0, le=1.0)  # fine-tuned blocks' lr, times `lr`
    bn: Literal["frozen", "train"] = "frozen"  # fine-tuned blocks' batch-norm statistics
    feature_views: int = Field(4, ge=1, description="augmented views cached per image")
    views_seed: int = 0  # draws the cached augmented views (not the trial's seed: repeats share them)
    # fine-tuning: run the frozen part of the backbone once per image and view and cache its
    # output, so an epoch costs only the fine-tuned blocks (false: the whole backbone every
    # step, with fresh augmentation; also the case under cutmix, which needs the images)
    cache_prefix: bool = True


class CNNConfig(Strict):
    """A small convolutional network trained from scratch: one block per entry of `channels`
    (conv -> [batch norm] -> activation -> pool -> [dropout]), global average pooling, then
    the MLP head (`hidden`, `dropout`)."""

    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field([32, 64, 128], min_length=1,
                                                                  max_length=8)
    kernel: int = Field(3, ge=1, le=11)
    batch_norm: bool = True
    pool: Literal["max", "avg"] = "max"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # channel dropout after each block

    @field_validator("kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd (1, 3, 5, ...)")
        return v


class EarlyStop(Strict):
    patience: int = Field(5, ge=1)  # epochs without a better validation metric
    min_delta: float = Field(0.0, ge=0.0)


class TrainConfig(Strict):
    model: Literal["mlp", "cnn", "transfer"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = [500, 50]
    activation: Literal["relu", "tanh", "gelu", "sigmoid", "leaky_relu", "elu", "silu"] = "relu"
    # dropout[0] is on the input, dropout[i] on hidden layer i; missing entries are 0 and
    # entries beyond the layer count are ignored, so the depth can be searched freely.
    dropout: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = []
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(10, ge=1)
    checkpoint_every: int = Field(5, ge=1)  # epochs between resume points...
    checkpoint_seconds: float = Field(30.0, ge=0.0)  # ...and at least this many seconds
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # auto: bf16 autocast on CUDA; fp16 trains with a gradient scaler
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 0
    # learning-rate schedule over the epochs, stepped every batch, after `warmup_epochs` of
    # linear warm-up; step: x0.1 at 1/2 and 3/4 of the epochs
    schedule: Literal["constant", "step", "cosine", "onecycle"] = "constant"
    warmup_epochs: int = Field(0, ge=0)
    early_stop: EarlyStop | None = None  # stop when validation stops improving; keeps the best
    augment: AugmentConfig = AugmentConfig()
    # the training loss's label smoothing (torch's cross_entropy); validation loss is plain
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    # the square size images are decoded at for this model; None: the stage's image_size,
    # else data.image_size (a transfer backbone: its own input size). Searchable: each size
    # is decoded once into its own cache.
    image_size: int | None = Field(None, ge=8, le=1024)
    cnn: CNNConfig = CNNConfig()
    transfer: TransferConfig = TransferConfig()

    @model_validator(mode="after")
    def _cutmix_needs_images(self) -> TrainConfig:
        if self.augment.cutmix > 0 and self.model == "transfer" and self.transfer.trainable == 0:
            raise ValueError("augment.cutmix cuts images, but a frozen backbone (transfer."
                             "trainable: 0) trains on cached features: use augment.mixup")
        return self

    @property
    def caches_prefix(self) -> bool:
        """Whether fine-tuning trains on the cached output of the backbone's frozen part."""
        return (self.model == "transfer" and self.transfer.trainable > 0
                and self.transfer.cache_prefix and self.augment.cutmix == 0)

    def dropout_at(self, i: int) -> float:
        return self.dropout[i] if i < len(self.dropout) else 0.0

    def applicable(self) -> dict[str, Any]:
        """The settings that apply to this model, for the record: another family's settings
        are left out, and of `dropout` only the entries the layers use."""
        tree = self.model_dump(mode="json")
        tree["dropout"] = [self.dropout_at(i) for i in range(len(self.hidden) + 1)]
        if self.model != "cnn":
            del tree["cnn"]
        if self.model != "transfer":
            del tree["transfer"]
        else:
            t = tree["transfer"]
            if self.transfer.trainable == 0:
                del t["backbone_lr"], t["bn"], t["cache_prefix"]
            elif not self.caches_prefix:
                del t["feature_views"], t["views_seed"]
        if self.early_stop is None:
            tree["early_stop"] = "off"
        if self.schedule == "constant" and not self.warmup_epochs:
            del tree["warmup_epochs"]
        return tree


# ---------------------------------------------------------------- paths and overrides
def set_path(tree: Any, path: str, value: Any) -> None:
    """Set `a.b.0.c` in nested dicts/lists; short numeric lists are padded with 0."""
    keys = path.split(".")
    node = tree
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit():
                raise KeyError(".".join(keys[: depth + 1]))
            idx = int(key)
            if idx >= MAX_LIST:
                raise IndexError(f"{'.'.join(keys[: depth + 1])}: index {idx} is beyond the "
                                 f"end of a list (length {len(node)}, at most {MAX_LIST})")
            while len(node) <= idx:
                node.append(0.0)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
        else:
            raise KeyError(".".join(keys[:depth]))


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A new TrainConfig with dotted-path overrides applied and validated."""
    tree = cfg.model_dump()
    for path, value in overrides.items():
        set_path(tree, path, value)
    return TrainConfig.model_validate(tree)


def check_train_override(base: TrainConfig, name: str, value: Any, where: str) -> None:
    try:
        if name.split(".")[0] not in TrainConfig.model_fields:
            raise KeyError(name)
        apply_overrides(base, {name: value})
    except KeyError:
        raise ValueError(f"{where}: not a trainer setting (see base:)") from None
    except ValidationError as e:
        raise ValueError(f"{where}: {e.errors()[0]['msg']}") from None
