"""TrivialAugment (Müller and Hutter, 2021), batched: each image gets one op drawn uniformly
from 14, at a strength drawn uniformly from [0, strength] of TrivialAugmentWide's range, with
a random sign where the op has one. Geometric ops become each image's warp matrix (joined to
the batch's one warp); pixel ops run on the images that drew them.

Deliberate differences from torchvision's TrivialAugmentWide, each for the batch path:
continuous strengths instead of 31 bins; shears about the image centre instead of the
top-left corner; shifts as a fraction of the side (32/224, its 32 px at 224 px) so that the
policy means the same at every resolution; bilinear sampling, like the other warps."""

from __future__ import annotations

import torch

from asl_sweep.data import geometry, photometric

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
       "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
       "autocontrast", "equalize")
MAX_SHEAR = 0.99  # tan of the angle
MAX_SHIFT = 32 / 224  # of the side
MAX_DEGREES = 135.0
MAX_FACTOR = 0.99  # brightness, color, contrast, sharpness: factor 1 +- this
GEOMETRIC = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate"}


def draw(b: int, strength: float, generator: torch.Generator
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's op (index into OPS) and signed magnitude in [-strength, strength]
    (unsigned ops use its absolute value)."""
    op = torch.randint(len(OPS), (b,), generator=generator)
    magnitude = torch.rand(b, generator=generator) * strength
    sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    return op, magnitude * sign


def _is(op: torch.Tensor, name: str) -> torch.Tensor:
    return op == OPS.index(name)


def matrices(op: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The warp of each image's geometric op (identity for the others)."""
    zero = torch.zeros_like(m)
    shear = geometry.shear(torch.where(_is(op, "shear_x"), m * MAX_SHEAR, zero),
                           torch.where(_is(op, "shear_y"), m * MAX_SHEAR, zero))
    shift = geometry.shift(torch.where(_is(op, "translate_x"), m * MAX_SHIFT, zero),
                           torch.where(_is(op, "translate_y"), m * MAX_SHIFT, zero))
    turn = geometry.rotation(torch.where(_is(op, "rotate"), m * MAX_DEGREES, zero))
    return shear @ shift @ turn  # at most one of the three is not the identity


def apply_op(name: str, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """One pixel op on a batch, each image with its own signed magnitude m."""
    if name in ("brightness", "color", "contrast", "sharpness"):
        fn = {"brightness": photometric.brightness, "color": photometric.saturation,
              "contrast": photometric.contrast, "sharpness": photometric.sharpness}[name]
        return fn(x, 1.0 + m * MAX_FACTOR)
    if name == "posterize":  # 8 bits at magnitude 0 down to 2 at full strength
        return photometric.posterize(x, 8 - torch.round(6 * m.abs()))
    if name == "solarize":  # threshold 1 (nothing) down to 0 (everything)
        return photometric.solarize(x, 1.0 - m.abs())
    if name in ("autocontrast", "equalize"):  # no strength: torchvision's own batched ops
        from torchvision.transforms.v2 import functional as TF

        return TF.autocontrast(x) if name == "autocontrast" else TF.equalize(x)
    raise ValueError(name)


def pixels(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The pixel ops, each on the images that drew it."""
    out = x
    for k, name in enumerate(OPS):
        if name == "identity" or name in GEOMETRIC:
            continue
        chosen = (op == k).nonzero().flatten()
        if len(chosen):
            if out is x:
                out = x.clone()
            idx = chosen.to(x.device)
            out[idx] = apply_op(name, x[idx], m[chosen])
    return out
