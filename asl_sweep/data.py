"""Images in, uint8 tensors out: folder scan and validation, the synthetic set, the decoded
cache, splits and subsets. Decoding happens once; trials cut batches from device tensors."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from asl_sweep.config import DataConfig
from asl_sweep.errors import DataError
from asl_sweep.files import atomic_torch_save, load_tensors

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
SYNTHETIC_CLASSES = list("ABCDEFGHI")
CACHE_VERSION = 1


@dataclass
class ImageSet:
    """Decoded images of one data set, all at one square size."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    names: list[str]  # file path relative to the root, or a synthetic id
    content_key: str  # hash of the source content; keys every derived cache
    skipped: list[str] = field(default_factory=list)  # "name: reason" under on_bad_image=skip

    def __len__(self) -> int:
        return len(self.labels)


# ---------------------------------------------------------------- loading
def load_image_set(cfg: DataConfig, cache_dir: Path, log=print) -> ImageSet:
    """The configured data set, from the decoded cache when its content is unchanged."""
    if cfg.root is None:
        return _cached(cache_dir, _synthetic_key(cfg), lambda: make_synthetic(
            cfg.synthetic.per_class, cfg.image_size, cfg.synthetic.seed), log)
    files, labels, classes, skipped = scan_folder(cfg.root, cfg.on_bad_image)
    key = _folder_key(cfg.root, files, labels, cfg.image_size, cfg.on_bad_image)
    return _cached(cache_dir, key, lambda: decode_folder(
        cfg.root, files, labels, classes, cfg.image_size, cfg.on_bad_image, key, skipped,
        log), log)


def _cached(cache_dir: Path, key: str, build, log) -> ImageSet:
    path = Path(cache_dir) / f"images-{key[:24]}.pt"
    if path.exists():
        try:
            stored = load_tensors(path, mmap=True)
            image_set = ImageSet(images=stored["images"], labels=stored["labels"],
                                 classes=list(stored["classes"]), names=list(stored["names"]),
                                 content_key=key, skipped=list(stored["skipped"]))
            _report_skipped(image_set.skipped, log)
            return image_set
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log(f"decoded cache {path} unreadable ({e}); decoding again")
    image_set = build()
    atomic_torch_save({"images": image_set.images, "labels": image_set.labels,
                       "classes": image_set.classes, "names": image_set.names,
                       "skipped": image_set.skipped}, path)
    return image_set


def scan_folder(root: Path, on_bad: str) -> tuple[list[Path], list[int], list[str], list[str]]:
    """ImageFolder layout: one sub-folder per class. Non-image files are errors or skipped;
    returns files, labels, class names and the skipped files with their reasons."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root: {root} is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(f"data.root: {root} needs one sub-folder per class (found {len(class_dirs)})")
    files: list[Path] = []
    labels: list[int] = []
    skipped: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        entries = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not entries:
            raise DataError(f"{class_dir}: empty class folder")
        for p in entries:
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                _bad(p, "not an image file (unknown extension)", on_bad)
                skipped.append(f"{p.relative_to(root)}: not an image file")
                continue
            files.append(p)
            labels.append(label)
    return files, labels, [d.name for d in class_dirs], skipped


def _bad(path: Path, reason: str, on_bad: str) -> None:
    if on_bad == "error":
        raise DataError(f"{path}: {reason} (set data.on_bad_image: skip to leave such files out)")


def _folder_key(root: Path, files: list[Path], labels: list[int], size: int, on_bad: str) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{on_bad}".encode())
    for path, label in zip(files, labels, strict=True):
        h.update(f"{path.relative_to(root)}|{label}|".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _synthetic_key(cfg: DataConfig) -> str:
    return _synthetic_key_of(cfg.synthetic.per_class, cfg.image_size, cfg.synthetic.seed)


def _synthetic_key_of(per_class: int, size: int, seed: int) -> str:
    return hashlib.sha256(f"synthetic-v{CACHE_VERSION}|{per_class}|{seed}|{size}"
                          .encode()).hexdigest()


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """One file -> uint8 [S, S, 3]. Grayscale, RGBA and palette images become RGB."""
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
        img.load()
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            img = canvas
        else:
            img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
        return np.array(img, dtype=np.uint8)  # a writable copy


def _decode_or_reason(args: tuple[str, int]) -> np.ndarray | str:
    # Runs in a worker process: return the failure as text so it reaches the user
    # with the file name, never as a traceback from inside the pool.
    path, size = args
    try:
        return decode_image(path, size)
    except Exception as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def decode_folder(root: Path, files: list[Path], labels: list[int], classes: list[str],
                  size: int, on_bad: str, key: str, skipped: list[str], log=print) -> ImageSet:
    jobs = [(str(p), size) for p in files]
    workers = min(len(jobs) // 64, os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            decoded = list(pool.map(_decode_or_reason, jobs, chunksize=32))
    else:
        decoded = [_decode_or_reason(j) for j in jobs]
    arrays, kept_labels, names, skipped = [], [], [], list(skipped)
    for path, label, result in zip(files, labels, decoded, strict=True):
        if isinstance(result, str):
            _bad(path, f"cannot be decoded as an image ({result})", on_bad)
            skipped.append(f"{path.relative_to(root)}: {result}")
            continue
        arrays.append(result)
        kept_labels.append(label)
        names.append(str(path.relative_to(root)))
    for c, name in enumerate(classes):
        if c not in kept_labels:
            raise DataError(f"{root / name}: no readable image in this class folder")
    _report_skipped(skipped, log)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images=images, labels=torch.tensor(kept_labels, dtype=torch.int64),
                    classes=classes, names=names, content_key=key, skipped=skipped)


def _report_skipped(skipped: list[str], log) -> None:
    if skipped:
        log(f"skipped {len(skipped)} bad file(s) (data.on_bad_image: skip): "
            + "; ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))


# ---------------------------------------------------------------- synthetic letters
def make_synthetic(per_class: int, size: int, seed: int) -> ImageSet:
    """Letters A-I drawn with random size, position, rotation, stroke, colour, clutter and
    noise; deterministic by seed. Names carry a 'writer' so group splits can be exercised."""
    rng = np.random.default_rng(seed)
    images, labels, names = [], [], []
    for n in range(per_class):
        for label, letter in enumerate(SYNTHETIC_CLASSES):
            writer = int(rng.integers(12))
            images.append(_draw_letter(letter, size, rng))
            labels.append(label)
            names.append(f"w{writer:02d}_{letter}_{n:04d}")
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    key = _synthetic_key_of(per_class, size, seed)
    return ImageSet(images=stacked, labels=torch.tensor(labels, dtype=torch.int64),
                    classes=list(SYNTHETIC_CLASSES), names=names, content_key=key)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _draw_letter(letter: str, size: int, rng: np.random.Generator) -> np.ndarray:
    background = rng.integers(110, 256, 3)  # light backgrounds, dark ink: MLP-learnable
    canvas = Image.new("RGB", (size, size), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):  # background clutter: thin lines and outlines
        xs, ys = np.sort(rng.integers(0, size, 2)), np.sort(rng.integers(0, size, 2))
        box = [int(xs[0]), int(ys[0]), int(max(xs[1], xs[0] + 1)), int(max(ys[1], ys[0] + 1))]
        kind, colour, width = int(rng.integers(3)), _colour(rng), max(1, size // 32)
        if kind == 0:
            draw.line(box, fill=colour, width=width)
        else:
            (draw.ellipse if kind == 1 else draw.rectangle)(box, outline=colour, width=width)
    ink = rng.integers(0, 100, 3)
    font_px = max(6, int(size * rng.uniform(0.5, 0.85)))
    font = ImageFont.load_default(size=font_px)
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(
        (size / 2, size / 2), letter, font=font, anchor="mm",
        fill=tuple(int(c) for c in ink) + (255,),
        stroke_width=int(rng.integers(0, max(1, font_px // 12) + 1)),
        stroke_fill=tuple(int(c) for c in ink) + (255,))
    shift = size // 8
    layer = layer.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR,
                         translate=tuple(int(t) for t in rng.integers(-shift, shift + 1, 2)))
    canvas.paste(layer, mask=layer.getchannel("A"))
    if rng.random() < 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 0.8)) * size / 64))
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels += rng.normal(0.0, rng.uniform(2, 16), pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- splits and subsets
def groups_of(names: Sequence[str], pattern: str) -> list[str]:
    regex = re.compile(pattern)
    groups = []
    for name in names:
        match = regex.search(Path(name).name)
        if match is None or match.group(1) is None:
            raise DataError(f"{name}: data.group_pattern {pattern!r} does not match this file name")
        groups.append(match.group(1))
    return groups


def split_indices(labels: torch.Tensor, val_fraction: float, seed: int,
                  groups: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split, stratified by class; with groups, no group lands on both sides."""
    y = labels.numpy()
    rng = np.random.default_rng(seed)
    if groups is None:
        val = []
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            n_val = min(len(members) - 1, max(1, round(val_fraction * len(members))))
            val.extend(members[:n_val].tolist())
        is_val = np.zeros(len(y), dtype=bool)
        is_val[val] = True
    else:
        unique = sorted(set(groups))
        if len(unique) < 2:
            raise DataError(f"data.group_pattern gives {len(unique)} group(s); a split needs at least 2")
        order = rng.permutation(len(unique))
        group_arr = np.asarray(groups)
        is_val = np.zeros(len(y), dtype=bool)
        target = val_fraction * len(y)
        for gi in order:  # fill validation group by group until it holds its share
            if is_val.sum() >= target:
                break
            is_val |= group_arr == unique[gi]
        if is_val.all():
            is_val[group_arr == unique[order[-1]]] = False
    train_idx = torch.from_numpy(np.flatnonzero(~is_val))
    val_idx = torch.from_numpy(np.flatnonzero(is_val))
    return train_idx, val_idx


def covering_subset(indices: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """N of the given indices covering every class present, taken round-robin by class."""
    y = labels[indices].numpy()
    classes = np.unique(y)
    if n < len(classes):
        raise DataError(f"subset of {n} images cannot cover {len(classes)} classes")
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(indices.numpy()[y == c])) for c in classes]
    chosen: list[int] = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop()))
    return torch.tensor(sorted(chosen), dtype=torch.int64)


# ---------------------------------------------------------------- on the training device
@dataclass
class SplitData:
    """Train and validation tensors, already on the training device."""

    x_train: torch.Tensor  # uint8 [N, 3, S, S]
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: list[str]
    content_key: str  # identifies the images and the split, for derived caches

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    def subset(self, n: int, seed: int) -> SplitData:
        """Training on N images covering every class; validation stays whole."""
        idx = covering_subset(torch.arange(len(self.y_train)), self.y_train.cpu(), n, seed)
        idx = idx.to(self.x_train.device)
        return SplitData(self.x_train[idx], self.y_train[idx], self.x_val, self.y_val,
                         self.classes, f"{self.content_key}|subset{n}s{seed}")


def prepare_split(image_set: ImageSet, cfg: DataConfig, device: torch.device) -> SplitData:
    groups = groups_of(image_set.names, cfg.group_pattern) if cfg.group_pattern else None
    train_idx, val_idx = split_indices(image_set.labels, cfg.val_fraction, cfg.seed, groups)
    key = hashlib.sha256(f"{image_set.content_key}|{cfg.val_fraction}|{cfg.seed}|"
                         f"{cfg.group_pattern}".encode()).hexdigest()
    images = image_set.images
    return SplitData(
        x_train=images[train_idx].to(device), y_train=image_set.labels[train_idx].to(device),
        x_val=images[val_idx].to(device), y_val=image_set.labels[val_idx].to(device),
        classes=image_set.classes, content_key=key)
