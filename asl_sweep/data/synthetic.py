"""The built-in data set: the letters A-I drawn by synthetic "signers". Each signer has a style
of its own (ink and background colours, slant, stroke, size, clutter, noise), so a split that
keeps every signer on one side is harder than a random one, as with real people. Files are
named <signer>_<letter>_<n> (s03_B_0017), so the studies and tests exercise person-disjoint
splits. Deterministic by seed; nothing is downloaded.

Two kinds. "letters" (the first set): every signer writes upright, at about the same size.
"people": signers differ the way people in front of a camera do. Each has a pose (the
hand turned in-plane; a share of them sideways, up to 90 degrees), a distance (the hand
from about 0.35 to 1.2 of the frame, with the forearm in view when far, cut by the frame
when close), a position, a handedness (left-handed signers are mirrored), a background and
a lighting (gain and a gradient across the frame). Most signers are alike; about a quarter
are unlike the majority (sideways, far or close), the way real sets have a few such people,
so pooled validation accuracy can look fine while those people fail."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from asl_sweep.data.imageset import ImageSet
from asl_sweep.runtime import signals

CLASSES = list("ABCDEFGHI")
VERSION = 2
PEOPLE_VERSION = 1
KINDS = ("letters", "people")
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
    # "people" only: the pose, distance, hand and light that set a signer apart
    pose: float = 0.0  # in-plane turn of the hand, degrees (counter-clockwise)
    mirrored: bool = False  # left-handed: the sign is mirrored
    forearm: bool = False  # far from the camera: the forearm is in view
    gain: float = 1.0  # overall lighting
    gradient: tuple[float, float] = (0.0, 0.0)  # lighting slope across x and y
    unusual: str = ""  # "", "sideways", "far" or "close": how the signer differs, if they do


def synthetic_digest(per_class: int, signers: int, seed: int, kind: str = "letters") -> str:
    if kind == "letters":  # the first set's digest, unchanged (its caches stay valid)
        key = f"synthetic-v{VERSION}|{per_class}|{signers}|{seed}"
    else:
        key = f"synthetic-{kind}-v{PEOPLE_VERSION}|{per_class}|{signers}|{seed}"
    return hashlib.sha256(key.encode()).hexdigest()


def _style(rng: np.random.Generator) -> Style:
    return Style(ink=rng.integers(0, 110, 3), paper=rng.integers(120, 256, 3),
                 slant=float(rng.uniform(-18, 18)), scale=float(rng.uniform(0.5, 0.8)),
                 stroke=float(rng.uniform(0.0, 0.1)), clutter=int(rng.integers(1, 6)),
                 noise=float(rng.uniform(3, 14)),
                 offset=(float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1))))


def _person(rng: np.random.Generator) -> Style:
    """A signer of the "people" kind: the first set's habits, then a pose, a distance, a
    hand and a light. Three in four are like the majority (upright within about 15 degrees,
    the hand filling 0.55-0.85 of the frame); the rest are sideways, far or close."""
    base = _style(rng)
    unusual = str(rng.choice(["", "sideways", "far", "close"], p=[0.76, 0.08, 0.08, 0.08]))
    pose, scale, spread = float(rng.normal(0, 8)), float(rng.uniform(0.55, 0.85)), 0.1
    if unusual == "sideways":
        pose = float(rng.choice([-1, 1]) * rng.uniform(60, 90))
    elif unusual == "far":
        scale, spread = float(rng.uniform(0.35, 0.45)), 0.25
    elif unusual == "close":
        scale = float(rng.uniform(1.0, 1.2))
    return Style(ink=base.ink, paper=base.paper, slant=0.0, scale=scale, stroke=base.stroke,
                 clutter=base.clutter, noise=base.noise,
                 offset=(float(rng.uniform(-spread, spread)), float(rng.uniform(-spread, spread))),
                 pose=pose, mirrored=bool(rng.random() < 0.2), forearm=unusual == "far",
                 gain=float(rng.uniform(0.6, 1.25)),
                 gradient=(float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.4, 0.4))),
                 unusual=unusual)


def signer_styles(signers: int, seed: int, kind: str = "letters") -> list[Style]:
    """Every signer's style, drawn from the seed (the same styles make_synthetic uses)."""
    rng = np.random.default_rng(seed)
    return [(_style if kind == "letters" else _person)(rng) for _ in range(signers)]


def synthetic_names(per_class: int, signers: int) -> tuple[list[str], list[int]]:
    """The built-in set's image names and labels, in the order make_synthetic draws them:
    round n of the letters is drawn by signer n mod signers (`run --dry-run` splits them
    without drawing one)."""
    names, labels = [], []
    for n in range(per_class):
        for label, letter in enumerate(CLASSES):
            names.append(f"s{n % signers:02d}_{letter}_{n:04d}")
            labels.append(label)
    return names, labels


def make_synthetic(per_class: int, size: int, seed: int, signers: int = 12,
                   kind: str = "letters") -> ImageSet:
    """per_class images of each letter, spread evenly over the signers."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}: one of {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    styles = [(_style if kind == "letters" else _person)(rng) for _ in range(signers)]
    draw = _draw if kind == "letters" else _draw_person
    images = []
    names, labels = synthetic_names(per_class, signers)
    for i, label in enumerate(labels):
        if label == 0:
            signals.check()  # Ctrl-C / SIGTERM: stop between two rounds of letters
        signer = (i // len(CLASSES)) % signers  # round n of the letters: signer n % signers
        images.append(draw(CLASSES[label], size, styles[signer], rng))
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images=stacked, labels=torch.tensor(labels, dtype=torch.int64),
                    classes=list(CLASSES), names=names,
                    digest=synthetic_digest(per_class, signers, seed, kind))


def _jitter(base: np.ndarray, rng: np.random.Generator, spread: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.clip(base + rng.integers(-spread, spread + 1, 3), 0, 255))


def _background(size: int, style: Style, rng: np.random.Generator) -> Image.Image:
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
    return canvas


def _finish(canvas: Image.Image, style: Style, rng: np.random.Generator,
            light: np.ndarray | None = None) -> np.ndarray:
    size = canvas.size[0]
    if rng.random() < 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 0.8)) * size / 64))
    pixels = np.asarray(canvas, dtype=np.float32)
    if light is not None:
        pixels = pixels * light[..., None]
    pixels += rng.normal(0.0, style.noise, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _draw(letter: str, size: int, style: Style, rng: np.random.Generator) -> np.ndarray:
    canvas = _background(size, style, rng)
    ink = _jitter(style.ink, rng, 20) + (255,)
    font_px = max(6, int(size * np.clip(style.scale + rng.normal(0, 0.07), 0.35, 0.9)))
    stroke = int(round(font_px * np.clip(style.stroke + rng.normal(0, 0.02), 0, 0.15)))
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((size / 2, size / 2), letter,
                               font=ImageFont.load_default(size=font_px),
                               anchor="mm", fill=ink, stroke_width=stroke, stroke_fill=ink)
    shift = np.asarray(style.offset) * size + rng.normal(0, size / 14, 2)
    layer = layer.rotate(float(style.slant + rng.normal(0, 8)), resample=Image.BILINEAR,
                         translate=tuple(int(t) for t in np.clip(shift, -size / 4, size / 4)))
    canvas.paste(layer, mask=layer.getchannel("A"))
    return _finish(canvas, style, rng)


def _draw_person(letter: str, size: int, style: Style, rng: np.random.Generator) -> np.ndarray:
    """One sign of a "people" signer: the letter (the hand) at the signer's distance, with the
    forearm below it when far, mirrored for a left hand, turned by the signer's pose, placed
    at their position, under their light."""
    canvas = _background(size, style, rng)
    scale = float(np.clip(style.scale * np.exp(rng.normal(0, 0.08)), 0.3, 1.3))
    font_px = max(6, int(size * scale))
    big = 2 * size  # room for a glyph larger than the frame and for the forearm
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    ink = _jitter(style.ink, rng, 20) + (255,)
    stroke = int(round(font_px * np.clip(style.stroke + rng.normal(0, 0.02), 0, 0.15)))
    if style.forearm:  # a band from below the hand to the edge of the frame
        half = max(1.0, font_px * 0.22)
        arm = _jitter(style.ink, rng, 30) + (255,)
        draw.rectangle([big / 2 - half, big / 2 + font_px * 0.35, big / 2 + half, big],
                       fill=arm)
    draw.text((big / 2, big / 2), letter, font=ImageFont.load_default(size=font_px),
              anchor="mm", fill=ink, stroke_width=stroke, stroke_fill=ink)
    if style.mirrored:
        layer = layer.transpose(Image.FLIP_LEFT_RIGHT)
    layer = layer.rotate(float(style.pose + rng.normal(0, 6)), resample=Image.BILINEAR)
    shift = np.asarray(style.offset) * size + rng.normal(0, size / 20, 2)
    at = (int(round(size / 2 - big / 2 + shift[0])), int(round(size / 2 - big / 2 + shift[1])))
    canvas.paste(layer, at, mask=layer.getchannel("A"))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1) - 0.5
    gain = style.gain * np.exp(rng.normal(0, 0.08))
    light = gain * (1 + style.gradient[0] * xs + style.gradient[1] * ys)
    return _finish(canvas, style, rng, light)
