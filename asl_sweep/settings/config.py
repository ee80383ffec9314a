"""Typed settings of the data and of the trainer (pydantic), and dotted-path overrides of
them. Built once at the edge (studyfile.py reads them from YAML) and passed down; nothing
downstream handles raw dicts. Imports no torch, so a bad setting is reported before anything
heavy loads. The study's stages and search spaces are in spec.py."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from asl_sweep.runtime.errors import as_text, is_text, not_here

METRICS = ("val_acc", "train_acc", "val_loss", "train_loss", "val_person_mean",
           "val_person_q25", "val_person_worst")
# val_person_*: over the validation people, each person's accuracy counted once (their
# mean, 25th percentile, worst); where images have no people, equal to val_acc.
CURVE_METRICS = METRICS[:4]  # what the learning-curve plots draw
Metric = Literal["val_acc", "train_acc", "val_loss", "train_loss", "val_person_mean",
                 "val_person_q25", "val_person_worst"]
Direction = Literal["maximize", "minimize"]
# The backbones asl_sweep.models.backbones registers (a test holds the two lists equal).
Backbone = Literal["alexnet", "mobilenet_v2", "resnet18"]
MAX_LIST = 64  # the longest list a key path may reach into (hidden widths, dropout rates)


class Strict(BaseModel):
    # No setting takes an infinity or NaN (YAML's .inf / .nan): lr .inf was accepted, and
    # every trial diverged.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------- data
class SyntheticConfig(Strict):
    per_class: int = Field(60, ge=2, description="images per letter")
    signers: int = Field(24, ge=3, description="synthetic people, each with a style")
    seed: int = Field(0, ge=0, description="draws the signers' styles and the images")
    kind: Literal["letters", "people"] = Field(
        "letters", description="letters: upright letters in each signer's ink and slant (the "
        "first set); people: signers who differ as people do (pose up to sideways, distance "
        "with the forearm in view, position, handedness, lighting), a quarter unlike the rest")


class DataConfig(Strict):
    root: Path | None = Field(None, description="an ImageFolder root (one sub-folder per "
                              "class); null: the built-in synthetic letters")
    synthetic: SyntheticConfig = Field(SyntheticConfig(), description="the built-in set, "
                                       "when root is null")
    image_size: int = Field(64, ge=8, le=1024, description="the square size images are "
                            "decoded at, once, into the cache")
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0, description="share of the images (of "
                                "the people, where images have people) for validation")
    test_fraction: float = Field(0.15, gt=0.0, lt=1.0, description="share for the test "
                                 "split, scored once after the search and never seen by it")
    seed: int = Field(0, ge=0, description="the split's seed (deterministic, stratified by "
                      "class)")
    group_pattern: str | None = Field(None, description="a regex whose group 1 names the "
                                      "person (or source) of a file, matched against its "
                                      "file name (else its path below the class folder, for "
                                      "a folder per person: '^([^/]+)/'): splits are then "
                                      "person-disjoint; the built-in set is always split by "
                                      "its signers")
    on_bad_image: Literal["error", "skip"] = Field("error", description="an unreadable image"
                                                   ": stop naming it, or skip and count it")

    @property
    def unit(self) -> str:
        """What the splits are made of: person (the built-in signers, or a group_pattern's
        groups), else image (and the person metrics are val_acc)."""
        return "person" if self.root is None or self.group_pattern is not None else "image"

    @property
    def units(self) -> str:
        return "people" if self.unit == "person" else "images"

    @model_validator(mode="after")
    def _room_to_train(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(f"val_fraction {self.val_fraction} + test_fraction "
                             f"{self.test_fraction} leave too little to train on (< 10%)")
        return self

    @field_validator("root", mode="before")
    @classmethod
    def _on_this_machine(cls, v: Any) -> Any:
        if isinstance(v, str) and (line := not_here(v)) is not None:  # before Path folds //
            raise ValueError(line)
        return v

    @field_validator("root")
    @classmethod
    def _from_the_users_home(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        if not is_text(v):  # no store or JSON file can keep its name
            raise ValueError(f"{as_text(v)} is not UTF-8 text (a folder named on another "
                             "system?): rename the folder, or give a link to it with a UTF-8 "
                             "name (ln -s)")
        # `root: ~/photos` in a YAML meets no shell to expand it: it was read as ./~/photos.
        return v.expanduser()

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
    resized crop, zoom-out, translation, rotation, mirror, perspective, TrivialAugment's
    shears/shifts/rotations),
    TrivialAugment's pixel ops, colour jitter, blur, random erasing; then mixup or cutmix of
    the batch. Exported models never augment."""

    rotation: float = Field(0.0, ge=0.0, le=180.0, description="max degrees, uniform +-")
    turn: float = Field(0.0, ge=0.0, le=1.0, description="quarter turns: the probability "
                        "an image is turned 90 degrees, either way at random, on top of its "
                        "rotation (a hand held sideways, the arm coming in from the side); "
                        "0 = off")
    flip: bool = Field(False, description="random horizontal flip with p=0.5")
    blur_kernel: int = Field(0, ge=0, description="odd Gaussian kernel size; 0 = no blur")
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="the blur's sigma range"
                                            ", drawn per image as torchvision does")
    copies: int = Field(1, ge=1, description="augmented views of each image per epoch")
    crop_scale: float = Field(1.0, gt=0.0, le=1.0, description="random resized crop: the "
                              "crop's area is drawn from [crop_scale, 1] of the image; 1 = "
                              "off (torchvision's default: 0.08)")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="the crop's aspect "
                                            "ratio range, drawn log-uniform")
    translate: float = Field(0.0, ge=0.0, le=0.5, description="max shift, fraction of a side")
    zoom_out: float = Field(1.0, ge=1.0, le=4.0, description="random zoom-out: each image "
                            "shrunk by a side ratio drawn from [1, zoom_out] onto a canvas "
                            "filled with black, placed anywhere, resized back (a hand far "
                            "from the camera); 1 = off")
    zoom_share: float = Field(1.0, gt=0.0, le=1.0, description="the share of images "
                              "zoomed out, the rest kept at their size (a few hands far from "
                              "the camera, most not); 1 = every image")
    perspective: float = Field(0.0, ge=0.0, le=1.0, description="random perspective with "
                               "p=0.5: each corner moves inward by up to this fraction of "
                               "half a side; 0 = off")
    brightness: float = Field(0.0, ge=0.0, le=1.0, description="colour jitter: a factor "
                              "drawn from [max(0, 1-s), 1+s]; 0 = off")
    contrast: float = Field(0.0, ge=0.0, le=1.0, description="colour jitter, as brightness")
    saturation: float = Field(0.0, ge=0.0, le=1.0, description="colour jitter, as brightness")
    hue: float = Field(0.0, ge=0.0, le=0.5, description="hue shifted by up to +-hue turns")
    erase: float = Field(0.0, ge=0.0, le=1.0, description="random erasing probability")
    trivial: float = Field(0.0, ge=0.0, le=1.0, description="TrivialAugment: each image "
                           "gets one of 14 ops at a strength drawn from [0, trivial] x "
                           "TrivialAugmentWide's range; 0 = off")
    mixup: float = Field(0.0, ge=0.0, le=10.0, description="Beta(alpha, alpha); 0 = off")
    cutmix: float = Field(0.0, ge=0.0, le=10.0, description="Beta(alpha, alpha); 0 = off")

    @property
    def transforms(self) -> bool:
        """Whether any single image is changed (copies alone only repeat images; mixing
        combines images of a batch and is not a transform of one)."""
        return (self.rotation > 0 or self.turn > 0 or self.flip or self.blur_kernel > 1
                or self.crop_scale < 1 or self.translate > 0 or self.jitter or self.erase > 0
                or self.trivial > 0 or self.zoom_out > 1 or self.perspective > 0)

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
    backbone: Backbone = Field("mobilenet_v2", description="the pretrained network")
    weights: str = Field("imagenet", description="imagenet, none (random), or a path to a "
                         ".pth state dict")
    trainable: int = Field(0, ge=0, description="last N backbone blocks trained; 0 = head only")
    backbone_lr: float = Field(0.1, gt=0.0, le=1.0, description="the fine-tuned blocks' "
                               "learning rate, a fraction of lr")
    bn: Literal["frozen", "train"] = Field("frozen", description="the fine-tuned blocks' "
                                           "batch-norm statistics")
    feature_views: int = Field(4, ge=1, description="augmented views cached per image")
    views_seed: int = Field(0, description="draws the cached augmented views (not the "
                            "trial's seed: repeats share them)")
    cache_prefix: bool = Field(True, description="fine-tuning: the frozen part of the "
                               "backbone runs once per image and view and its output is "
                               "cached, so an epoch costs only the fine-tuned blocks (false, "
                               "or under cutmix: the whole backbone every step)")


class CNNConfig(Strict):
    """A small convolutional network trained from scratch: one block per entry of `channels`
    (conv -> [batch norm] -> activation -> pool -> [dropout]), global average pooling, then
    the MLP head (`hidden`, `dropout`)."""

    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        [32, 64, 128], min_length=1, max_length=8, description="output channels of each "
        "block; one block per entry")
    kernel: int = Field(3, ge=1, le=11, description="the convolutions' filter size (odd)")
    batch_norm: bool = Field(True, description="batch norm after each convolution")
    pool: Literal["max", "avg"] = Field("max", description="each block's 2x2 pooling")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="channel dropout after each "
                           "block")

    @field_validator("kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd (1, 3, 5, ...)")
        return v


class EarlyStop(Strict):
    patience: int = Field(5, ge=1, description="epochs without a better validation metric "
                          "before training stops")
    min_delta: float = Field(0.0, ge=0.0, description="the least change that counts as better")


class TrainConfig(Strict):
    model: Literal["mlp", "cnn", "transfer"] = Field("mlp", description="the model family")
    hidden: list[Annotated[int, Field(ge=1)]] = Field([500, 50], description="the MLP's (or "
                                                      "a CNN's or backbone's head's) hidden "
                                                      "layer widths")
    activation: Literal["relu", "tanh", "gelu", "sigmoid", "leaky_relu", "elu", "silu"] = \
        Field("relu", description="the hidden layers' activation")
    dropout: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        [], description="dropout[0] on the input, dropout[i] on hidden layer i; missing "
        "entries are 0 and entries past the layers are ignored, so depth can be searched")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="the optimizer")
    lr: float = Field(1e-3, gt=0.0, description="the learning rate")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD's momentum")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty (decoupled with adamw)")
    batch_size: int = Field(32, ge=1, description="images a step")
    epochs: int = Field(10, ge=1, description="passes over the training split")
    checkpoint_every: int = Field(5, ge=1, description="epochs between resume points ...")
    checkpoint_seconds: float = Field(30.0, ge=0.0, description="... and at least this many "
                                      "seconds between them")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 elsewhere; fp16 trains with a "
        "gradient scaler; bf16 or fp16 off CUDA trains fp32 (run says so)")
    seed: int = Field(0, description="the training seed (a repeat r trains with seed + r)")
    schedule: Literal["constant", "step", "cosine", "onecycle"] = Field(
        "constant", description="the learning-rate schedule over the epochs, stepped every "
        "batch after warmup_epochs of linear warm-up; step: x0.1 at 1/2 and 3/4")
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear warm-up")
    early_stop: EarlyStop | None = Field(None, description="stop when validation stops "
                                         "improving (keeps the best epoch); null: off")
    augment: AugmentConfig = Field(AugmentConfig(), description="training-time augmentation")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="the training loss's "
                                   "label smoothing; the validation loss is plain")
    focal_gamma: float = Field(0.0, ge=0.0, le=5.0, description="the training loss's focal "
                               "exponent: each image's cross-entropy weighed by (1 - p)^gamma, "
                               "p its probability of its own letter, so the images the model "
                               "still gets wrong (an unusual hand) count more than the ones it "
                               "has learnt; 0: plain cross-entropy; the validation loss is plain")
    image_size: int | None = Field(None, ge=8, le=1024, description="the size images are "
                                   "decoded at for this model; null: the stage's image_size, "
                                   "else data.image_size (a backbone: its own input size); "
                                   "searchable, each size decoded once")
    cnn: CNNConfig = Field(CNNConfig(), description="the CNN family's settings")
    transfer: TransferConfig = Field(TransferConfig(), description="the transfer family's "
                                     "settings")

    @field_validator("hidden", "dropout", mode="before")
    @classmethod
    def _one_per_layer(cls, v: Any, info: ValidationInfo) -> Any:
        """A bare number where a list is one entry a layer ("dropout: 0.3", as one says it):
        what the list means, and how a space searches one entry of it."""
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if info.field_name == "hidden":
                raise ValueError(f"{v} is one number: hidden is a list of widths, one a "
                                 f"hidden layer, e.g. [{v}] ([] for none)")
            raise ValueError(f"{v} is one number: dropout is a list of rates, dropout[0] on "
                             f"the input and dropout[i] on hidden layer i, e.g. [0.0, {v}] "
                             "with one hidden layer; a space searches one rate as "
                             "dropout.1: {low: 0.1, high: 0.5}")
        return v

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"{v!r} is not a device: give auto, cpu, cuda, cuda:N or mps")
        return v

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
def get_path(tree: Any, path: str) -> Any:
    """The value at `a.b.0.c` in nested dicts/lists; None where the path does not reach."""
    node = tree
    for key in path.split("."):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return None
    return node


def set_path(tree: Any, path: str | list[str], value: Any, pad: bool = True) -> None:
    """Set `a.b.0.c` in nested dicts/lists (or the keys given as a list, where one key holds
    dots); short numeric lists are padded with 0 (a space's `dropout.1`, whose stage may skip
    an index); `pad=False` (a user's --set): an item may be added only right after the
    last."""
    keys = path.split(".") if isinstance(path, str) else path
    node = tree
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            where = ".".join(keys[:depth])
            if not key.isdigit():
                raise IndexError(f"{where} is a list: name an item by its number, not "
                                 f"{key!r} ({where}.0" + (f" to {where}.{len(node) - 1}"
                                                          if len(node) > 1 else "") + ")")
            idx = int(key)
            if idx >= MAX_LIST:
                raise IndexError(f"{'.'.join(keys[: depth + 1])}: index {idx} is beyond the "
                                 f"end of a list (length {len(node)}, at most {MAX_LIST})")
            nested = any(isinstance(item, dict | list) for item in node)
            if idx > len(node) and not pad or idx >= len(node) and nested:
                # Padding is for lists of numbers (dropout.1, cnn.channels.3); a stage or a
                # seed trial past the end would be a 0.0 in its place, and a user's
                # base.hidden.5 on a list of one, four zeros before it.
                items = ("no items" if not node else f"1 item ({where}.0)" if len(node) == 1
                         else f"{len(node)} items ({where}.0 to {where}.{len(node) - 1})")
                raise IndexError(f"{where} has {items}: {where}.{idx} is past its end; "
                                 + ("add it in the YAML" if nested
                                    else f"give the whole list, e.g. {where}=[...]"))
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


def error_message(err: Mapping[str, Any]) -> str:
    """One pydantic error's message as a line says it: a validator's own words without
    pydantic's "Value error, " before them."""
    return err["msg"].removeprefix("Value error, ")


def closest(word: str, words) -> str | None:
    """The one of `words` a mistyped `word` most likely meant, where one is close."""
    close = difflib.get_close_matches(word, list(words), n=1, cutoff=0.6)
    return close[0] if close else None


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (itself, a list of it, or it or None)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in typing.get_args(annotation) if (m := model_in(a))), None)


def _setting_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key path of a settings model (lr, augment.rotation, cnn.kernel, ...)."""
    paths = []
    for name, field in model.model_fields.items():
        paths.append(prefix + name)
        inner = model_in(field.annotation)
        if inner is not None:
            paths += _setting_paths(inner, f"{prefix}{name}.")
    return paths


def not_a_setting(where: str, name: str) -> str:
    """The line for a searched, fixed or seeded key that is no trainer setting, with the
    one it most likely meant (augment.rotaton: augment.rotation)."""
    meant = closest(name, _setting_paths(TrainConfig))
    return f"{where}: not a trainer setting (see base:)" + (
        f"; did you mean {meant}?" if meant else "")


def check_train_override(base: TrainConfig, name: str, value: Any, where: str,
                         key_at: str | None = None) -> None:
    """`value` for the trainer setting `name`, at `where` in the study (`key_at`: where the
    key itself is, for a value inside it: a space's choice or bound)."""
    try:
        if name.split(".")[0] not in TrainConfig.model_fields:
            raise KeyError(name)
        apply_overrides(base, {name: value})
    except KeyError:
        raise ValueError(not_a_setting(key_at or where, name)) from None
    except ValidationError as e:
        if e.errors()[0]["type"] == "extra_forbidden":  # a key inside a setting's model
            raise ValueError(not_a_setting(key_at or where, name)) from None
        raise ValueError(f"{where}: {error_message(e.errors()[0])}") from None
