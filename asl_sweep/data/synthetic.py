"""The built-in data set: the letters A-I drawn by synthetic "signers". Each signer has a style
of its own (ink and background colours, slant, stroke, size, clutter, noise), so a split that
keeps every signer on one side is harder than a random one, as with real people. Files are
named <signer>_<letter>_<n> (s03_B_0017), so the studies and tests exercise person-disjoint
splits. Deterministic by seed; nothing is downloaded."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from asl_sweep.data.imageset import ImageSet

CLASSES = list("ABCDEFGHI")
VERSION = 2
GROUP_PATTERN = r"^(s\d+)_"  # the signer in a synthetic image's name


@dataclass(frozen=True)
class Style:
    """How one signer draws: their habits, around which each image varies."""

    ink: np.ndarray  # base RGB of the strokes
    paper: np.ndarray  # base RGB of the background
    slant: float  # degrees
    scale: float  # glyph size, fraction of the image
    stroke: float  # stroke width, fraction of the glyph size
    clutter: int  # background marks per image (mean)
    noise: float  # pixel noise sigma
    offset: tuple[float, float]  # habitual position, fraction of the image


def synthetic_digest(per_class: int, signers: int, seed: int) -> str:
    return hashlib.sha256(f"synthetic-v{VERSION}|{per_class}|{signers}|{seed}".encode()).hexdigest()


def _style(rng: np.random.Generator) -> Style:
    return Style(ink=rng.integers(0, 110, 3), paper=rng.integers(120, 256, 3),
                 slant=float(rng.uniform(-18, 18)), scale=float(rng.uniform(0.5, 0.8)),
                 stroke=float(rng.uniform(0.0, 0.1)), clutter=int(rng.integers(1, 6)),
                 noise=float(rng.uniform(3, 14)),
                 offset=(float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1))))


def make_synthetic(per_class: int, size: int, seed: int, signers: int = 12) -> ImageSet:
    """per_class images of each letter, spread evenly over the signers."""
    rng = np.random.default_rng(seed)
    styles = [_style(rng) for _ in range(signers)]
    images, labels, names = [], [], []
    for n in range(per_class):
        signer = n % signers
        for label, letter in enumerate(CLASSES):
            images.append(_draw(letter, size, styles[signer], rng))
            labels.append(label)
            names.append(f"s{signer:02d}_{letter}_{n:04d}")
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images=stacked, labels=torch.tensor(labels, dtype=torch.int64),
                    classes=list(CLASSES), names=names,
                    digest=synthetic_digest(per_class, signers, seed))


def _jitter(base: np.ndarray, rng: np.random.Generator, spread: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.clip(base + rng.integers(-spread, spread + 1, 3), 0, 255))


def _draw(letter: str, size: int, style: Style, rng: np.random.Generator) -> np.ndarray:
    canvas = Image.new("RGB", (size, size), _jitter(style.paper, rng, 25))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.poisson(style.clutter))):  # background marks: lines and outlines
        xs, ys = np.sort(rng.integers(0, size, 2)), np.sort(rng.integers(0, size, 2))
        box = [int(xs[0]), int(ys[0]), int(max(xs[1], xs[0] + 1)), int(max(ys[1], ys[0] + 1))]
        kind = int(rng.integers(3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        width = max(1, size // 32)
        if kind == 0:
            draw.line(box, fill=colour, width=width)
        else:
            (draw.ellipse if kind == 1 else draw.rectangle)(box, outline=colour, width=width)
    ink = _jitter(style.ink, rng, 20) + (255,)
    font_px = max(6, int(size * np.clip(style.scale + rng.normal(0, 0.07), 0.35, 0.9)))
    stroke = int(round(font_px * np.clip(style.stroke + rng.normal(0, 0.02), 0, 0.15)))
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((size / 2, size / 2), letter, font=ImageFont.load_default(size=font_px),
                               anchor="mm", fill=ink, stroke_width=stroke, stroke_fill=ink)
    shift = np.asarray(style.offset) * size + rng.normal(0, size / 14, 2)
    layer = layer.rotate(float(style.slant + rng.normal(0, 8)), resample=Image.BILINEAR,
                         translate=tuple(int(t) for t in np.clip(shift, -size / 4, size / 4)))
    canvas.paste(layer, mask=layer.getchannel("A"))
    if rng.random() < 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 0.8)) * size / 64))
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels += rng.normal(0.0, style.noise, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)
