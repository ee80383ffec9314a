"""The one place that turns a study's data settings into tensors (as timm resolves one data
config): the images at each size a stage needs, decoded once; the split (train, validation,
test, folds) computed once from labels and groups, the same at every size; and SplitData,
the train and validation tensors of one fold on the training device. Test images are handed
out only by `test()`, which the search never calls."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from asl_sweep.data.images import load_image_set
from asl_sweep.data.imageset import ImageSet
from asl_sweep.data.splits import Splits, covering_subset, groups_of, make_splits
from asl_sweep.data.synthetic import GROUP_PATTERN
from asl_sweep.settings.config import DataConfig


@dataclass
class SplitData:
    """Train and validation tensors of one fold, on the training device."""

    x_train: torch.Tensor  # uint8 [N, 3, S, S]
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: list[str]
    x_pool: torch.Tensor  # every image the search may see (train and val of every fold)
    pool_key: str  # identifies x_pool: keys pool-level caches such as frozen features
    train_pos: torch.Tensor  # positions of the train/val images in x_pool (CPU)
    val_pos: torch.Tensor
    train_index: np.ndarray  # global image indices, for the record and for checks
    val_index: np.ndarray
    fold: int = 0
    val_people: torch.Tensor | None = None  # each validation image's person (an int code)

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def content_key(self) -> str:
        """Keys caches derived from this exact train/val split."""
        h = hashlib.sha256(self.pool_key.encode())
        h.update(self.train_index.tobytes())
        return h.hexdigest()

    def every_person(self) -> SplitData:
        """The fold with its validation images added to its training (every non-test image):
        what `final_model: refit` trains on once validation has chosen. Validation is kept
        only so the trainer has something to score; its people are in training."""
        cat = torch.cat
        return SplitData(cat([self.x_train, self.x_val]), cat([self.y_train, self.y_val]),
                         self.x_val, self.y_val, self.classes, self.x_pool, self.pool_key,
                         cat([self.train_pos, self.val_pos]), self.val_pos,
                         np.concatenate([self.train_index, self.val_index]), self.val_index,
                         self.fold, self.val_people)

    def subset(self, n: int, seed: int) -> SplitData:
        """Training on N images covering every class; validation stays whole."""
        keep = covering_subset(np.arange(len(self.train_index)), self.y_train.cpu().numpy(),
                               n, seed)
        idx = torch.from_numpy(keep)
        dev = idx.to(self.x_train.device)
        return SplitData(self.x_train[dev], self.y_train[dev], self.x_val, self.y_val,
                         self.classes, self.x_pool, self.pool_key, self.train_pos[idx],
                         self.val_pos, self.train_index[keep], self.val_index, self.fold,
                         self.val_people)


@dataclass
class TestData:
    x: torch.Tensor  # uint8 [N, 3, S, S], CPU
    y: torch.Tensor
    groups: list[str] | None
    index: np.ndarray


class StudyData:
    def __init__(self, cfg: DataConfig, cache_dir, device: torch.device, log=print):
        self.cfg, self.cache_dir, self.device, self.log = cfg, cache_dir, device, log
        self._sets: dict[int, ImageSet] = {}
        self._pools: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._folds: OrderedDict[tuple[int, int], SplitData] = OrderedDict()
        base = self.images(cfg.image_size)
        self.classes, self.digest, self.names = list(base.classes), base.digest, base.names
        self.labels = base.labels.numpy()
        self.groups, self.splits = resolve_splits(cfg, self.labels, self.classes, self.names)
        self._codes = (None if self.groups is None
                       else np.unique(self.groups, return_inverse=True)[1].astype(np.int64))
        self.pool = self.splits.pool
        self._pool_pos = np.full(len(self.labels), -1, dtype=np.int64)
        self._pool_pos[self.pool] = np.arange(len(self.pool))

    def images(self, size: int) -> ImageSet:
        if size not in self._sets:
            self._sets[size] = load_image_set(self.cfg, size, self.cache_dir, self.log)
        return self._sets[size]

    def pool_key(self, size: int) -> str:
        h = hashlib.sha256(f"{self.digest}|{size}".encode())
        h.update(self.pool.tobytes())
        return h.hexdigest()

    def split(self, size: int | None = None, fold: int = 0) -> SplitData:
        """Train and validation of fold `fold` at `size` pixels, on the device."""
        size = size or self.cfg.image_size
        key = (size, fold % len(self.splits.folds))
        if key not in self._folds:
            x_pool, y_pool = self._pool(size)
            train, val = self.splits.fold(fold)
            train_pos = torch.from_numpy(self._pool_pos[train])
            val_pos = torch.from_numpy(self._pool_pos[val])
            tp, vp = train_pos.to(self.device), val_pos.to(self.device)
            people = (None if self._codes is None
                      else torch.from_numpy(self._codes[val]).to(self.device))
            self._folds[key] = SplitData(x_pool[tp], y_pool[tp], x_pool[vp], y_pool[vp],
                                         self.classes, x_pool, self.pool_key(size), train_pos,
                                         val_pos, train, val, key[1], people)
            while len(self._folds) > 4:  # a few folds stay on the device, not all of them
                self._folds.popitem(last=False)
        return self._folds[key]

    def _pool(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if size not in self._pools:
            images = self.images(size)
            pool = torch.from_numpy(self.pool)
            self._pools[size] = (images.images[pool].to(self.device),
                                 images.labels[pool].to(self.device))
        return self._pools[size]

    def test(self, size: int | None = None) -> TestData:
        """The untouched test split: for the final score and `evaluate` only."""
        images = self.images(size or self.cfg.image_size)
        idx = self.splits.test
        groups = None if self.groups is None else self.groups[idx].tolist()
        return TestData(images.images[torch.from_numpy(idx)].clone(),
                        images.labels[torch.from_numpy(idx)].clone(), groups, idx)

    @property
    def source(self) -> str:
        kind = self.cfg.synthetic.kind
        return str(self.cfg.root) if self.cfg.root else f"asl-sweep built-in synthetic {kind}"

    @property
    def name(self) -> str:
        return self.cfg.root.name if self.cfg.root else f"synthetic-{self.cfg.synthetic.kind}"

    def _record(self, context: str, label: str, index: np.ndarray) -> dict:
        h = hashlib.sha256(self.digest.encode())
        h.update(np.sort(index).tobytes())
        people = len(np.unique(self.groups[index])) if self.groups is not None else None
        return {"context": context, "name": f"{self.name}:{label}", "digest": h.hexdigest()[:12],
                "source": self.source, "rows": int(len(index)), "people": people}

    def datasets(self, part: SplitData) -> list[dict]:
        """What a trial saw, for MLflow's dataset inputs: its training and validation images
        (by fold, and subset where it has one)."""
        train = "train" + (f"/fold{part.fold}" if part.fold else "") + (
            f"/subset{len(part.train_index)}" if len(part.train_index) < len(
                self.splits.fold(part.fold)[0]) else "")
        return [self._record("training", train, part.train_index),
                self._record("validation", "val" + (f"/fold{part.fold}" if part.fold else ""),
                             part.val_index)]

    def test_dataset(self) -> dict:
        return self._record("testing", "test", self.splits.test)

    def describe(self) -> str:
        return describe_splits(self.cfg, self.splits, self.groups, len(self.classes))


def resolve_splits(cfg: DataConfig, labels: Sequence[int], classes: Sequence[str],
                   names: Sequence[str]) -> tuple[np.ndarray | None, Splits]:
    """Each image's person (None where the data names none) and the split: computed from
    the images' labels and names alone, so `run --dry-run` splits a folder as a run will
    without decoding it."""
    pattern = GROUP_PATTERN if cfg.root is None else cfg.group_pattern
    groups = np.asarray(groups_of(names, pattern)) if pattern else None
    return groups, make_splits(np.asarray(labels), classes, cfg.val_fraction,
                               cfg.test_fraction, cfg.seed, groups)


def describe_splits(cfg: DataConfig, s: Splits, groups: np.ndarray | None,
                    n_classes: int) -> str:
    """The split in one line, as `run` and `run --dry-run` print it."""
    counts = f"{len(s.train)} train / {len(s.val)} val / {len(s.test)} test images"
    if groups is not None:
        people = [len(np.unique(groups[i])) for i in (s.train, s.val, s.test)]
        counts += (f", person-disjoint ({people[0]} / {people[1]} / {people[2]} "
                   f"{'signers' if cfg.root is None else 'groups'})")
    else:
        counts += ", stratified by class"
    return f"{counts}, {n_classes} classes, {len(s.folds)} validation fold(s)"
