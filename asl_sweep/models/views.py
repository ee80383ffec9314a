"""Test-time augmentation: a model's class probabilities averaged over a few fixed views of
each image (the image itself, its mirror, small rotations, a zoom out and in, quarter turns).

Which set a study uses is chosen on validation (search/evaluation.py), never on test; the
chosen set's name travels in the model file (`ModelFile.views`), so every form built from
it (TorchScript, ONNX, the registered model, `predict`) averages the same views. The views
are fixed warps of the model's own input size, computed once: tracing and export see one
flip and one grid_sample per view, nothing drawn at random."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DEGREES = 15.0  # the small rotations, each way
ZOOM = 1.25  # zoom out: the image shrinks to 1/ZOOM of the side (canvas filled with 0); in: x ZOOM

# name -> its views; "none" is the model alone. A view is "identity", "flip" (mirrored left to
# right) or a warp named in _WARPS.
VIEW_SETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flip": ("identity", "flip"),
    "rotate": ("identity", "rotate+", "rotate-"),
    "scale": ("identity", "zoom_out", "zoom_in"),
    "all": ("identity", "flip", "rotate+", "rotate-", "zoom_out", "zoom_in"),
    # A hand held sideways (the arm in from the side) turned upright by one of the two.
    "turn": ("identity", "turn+", "turn-"),
}


def _rotation(degrees: float) -> list[list[float]]:
    t = math.radians(degrees)
    return [[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]]


# Each warp as the 2x3 matrix that maps an output position to the input position it samples
# (grid_sample's normalized coordinates, as data/geometry.py writes its augmentations).
_WARPS: dict[str, list[list[float]]] = {
    "rotate+": _rotation(DEGREES),
    "rotate-": _rotation(-DEGREES),
    "zoom_out": [[ZOOM, 0.0, 0.0], [0.0, ZOOM, 0.0]],
    "zoom_in": [[1 / ZOOM, 0.0, 0.0], [0.0, 1 / ZOOM, 0.0]],
    "turn+": _rotation(90.0),
    "turn-": _rotation(-90.0),
}


def describe(views: str) -> str:
    """A view set in words, for the terminal, report and model card."""
    words = {"identity": "the image", "flip": "its mirror",
             "rotate+": f"rotated {DEGREES:g} degrees each way", "rotate-": None,
             "zoom_out": f"zoomed out and in by {ZOOM:g}x", "zoom_in": None,
             "turn+": "turned a quarter each way", "turn-": None}
    shown = [words[v] for v in VIEW_SETS[views] if words[v]]
    if views == "none":
        return "none (the image alone)"
    return f"{views} (the mean over {len(VIEW_SETS[views])} views: {', '.join(shown)})"


def _grids(names: list[str], image_size: int) -> torch.Tensor:
    """The sampling grids of the warps among `names` [warps, S, S, 2], in their order."""
    warps = [_WARPS[v] for v in names if v in _WARPS]
    if not warps:
        return torch.zeros(0, image_size, image_size, 2)
    return F.affine_grid(torch.tensor(warps), [len(warps), 1, image_size, image_size],
                         align_corners=False)


def _warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(x, grid.unsqueeze(0).expand(x.shape[0], -1, -1, -1), mode="bilinear",
                         padding_mode="zeros", align_corners=False)


class TestTimeViews(nn.Module):
    """`model` (float images [B, 3, S, S] in [0, 1] -> logits) averaged over the views of
    `views`: its output is the log of the mean class probabilities, so a softmax of it is
    that mean (as Ensemble's)."""

    __test__ = False  # not a pytest class

    def __init__(self, model: nn.Module, views: str, image_size: int):
        super().__init__()
        if views not in VIEW_SETS:
            raise ValueError(f"unknown test-time view set {views!r}; one of {sorted(VIEW_SETS)}")
        self.model = model
        self.views = views
        self.flip = "flip" in VIEW_SETS[views]
        grids = _grids(list(VIEW_SETS[views]), image_size)
        self.register_buffer("grids", grids, persistent=False)  # [warps, S, S, 2]
        self.warps = len(grids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.softmax(self.model(x), dim=1)
        if self.flip:
            total = total + torch.softmax(self.model(x.flip(-1)), dim=1)
        for k in range(self.warps):
            total = total + torch.softmax(self.model(_warp(x, self.grids[k])), dim=1)
        mean = total / (1 + int(self.flip) + self.warps)
        return torch.log(mean.clamp_min(1e-12))


def with_views(model: nn.Module, views: str, image_size: int) -> nn.Module:
    """The model averaged over `views`; the model itself for "none"."""
    return model if views == "none" else TestTimeViews(model, views, image_size).eval()


VIEWS = tuple(dict.fromkeys(v for views in VIEW_SETS.values() for v in views))  # every view


@torch.inference_mode()
def each_view(model: nn.Module, x: torch.Tensor, image_size: int,
              names: tuple[str, ...] = VIEWS) -> dict[str, torch.Tensor]:
    """Each of the single views `names`' class probabilities for float images [B, 3, S, S]
    in [0, 1]: what choosing among the sets needs, each view computed once (a set's
    probabilities are the mean of its views')."""
    warps = [v for v in names if v in _WARPS]
    grids = dict(zip(warps, _grids(warps, image_size), strict=True))
    shown = {"identity": x, "flip": x.flip(-1)}
    return {v: torch.softmax(model(shown[v] if v in shown else _warp(x, grids[v])), dim=1)
            for v in names}


def set_probabilities(views: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """A set's probabilities from its single views' (`each_view`)."""
    return torch.stack([views[v] for v in VIEW_SETS[name]]).mean(0)
