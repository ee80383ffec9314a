"""Geometric augmentation as one warp of a whole batch: each image's crop, zoom-out, shift,
rotation, mirror, shear and perspective are 3x3 matrices composed into one, applied by one
grid_sample (a perspective makes the matrix projective: the grid is divided by its third
coordinate).

A matrix maps an output position to the input position it samples, in grid_sample's
normalized coordinates ([-1, 1] across the image, align_corners=False, y pointing down), so
a chain of warps is the product of their matrices, outermost (applied last) on the right."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_BASE_GRIDS: dict[tuple, torch.Tensor] = {}


def _base_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The identity sampling grid [1, H*W, 2], made once per size and device."""
    key = (h, w, device, dtype)
    if key not in _BASE_GRIDS:
        eye = torch.eye(2, 3, device=device, dtype=dtype)[None]
        _BASE_GRIDS[key] = F.affine_grid(eye, [1, 1, h, w], align_corners=False).view(1, h * w, 2)
    return _BASE_GRIDS[key]


def identity(b: int) -> torch.Tensor:
    return torch.eye(3).repeat(b, 1, 1)


def _linear(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor,
            tx: torch.Tensor | None = None, ty: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 3, 3] from per-image entries [[a, b, tx], [c, d, ty], [0, 0, 1]]."""
    zero = torch.zeros_like(a)
    tx = zero if tx is None else tx
    ty = zero if ty is None else ty
    return torch.stack([torch.stack([a, b, tx], 1), torch.stack([c, d, ty], 1),
                        torch.stack([zero, zero, torch.ones_like(a)], 1)], 1)


def rotation(degrees: torch.Tensor, mirror: torch.Tensor | None = None) -> torch.Tensor:
    """Counter-clockwise rotation by per-image degrees (torchvision's sense), after a mirror
    where `mirror` is True (the mirror is a sign on the x column: no extra resampling)."""
    theta = degrees.float() * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    sx = torch.ones_like(cos) if mirror is None else 1 - 2 * mirror.float()
    return _linear(cos * sx, -sin, sin * sx, cos)


def crop(top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
         width: torch.Tensor) -> torch.Tensor:
    """Resize each image's box (fractions of the side: top, left, height, width) to the whole
    image: torchvision's resized_crop with the box in continuous coordinates."""
    return _linear(width.float(), torch.zeros_like(width).float(), torch.zeros_like(width).float(),
                   height.float(), 2 * left.float() + width.float() - 1,
                   2 * top.float() + height.float() - 1)


def shift(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Move the content right by dx and down by dy (fractions of the side)."""
    one, zero = torch.ones_like(dx).float(), torch.zeros_like(dx).float()
    return _linear(one, zero, zero, one, -2 * dx.float(), -2 * dy.float())


def shear(mx: torch.Tensor, my: torch.Tensor) -> torch.Tensor:
    """Shear about the centre: x by mx (tan of the angle) per unit of y, y by my per unit of
    x; torchvision's affine(shear=[atan(mx), 0]) and affine(shear=[0, atan(my)])."""
    one = torch.ones_like(mx).float()
    return _linear(one, mx.float(), my.float(), one)


def zoom_out(ratio: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """Shrink each image by `ratio` (>= 1, a side of the result holds `ratio` sides of
    the image) onto a canvas filled with 0, placed at fractions fx, fy of the free room
    (0 = left/top, 1 = right/bottom), canvas resized to the image's size: torchvision's
    RandomZoomOut followed by a resize back."""
    r = ratio.float()
    zero = torch.zeros_like(r)
    return _linear(r, zero, zero, r, (r - 1) * (1 - 2 * fx.float()), (r - 1) * (1 - 2 * fy.float()))


def perspective(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The projective map that moves each image's four points `start` [B, 4, 2] to `end`
    (normalized coordinates, x then y): the output at `end` shows the input at `start`, as
    torchvision's perspective(img, startpoints, endpoints)."""
    b = start.shape[0]
    u, v = end[..., 0].double(), end[..., 1].double()  # output points
    x, y = start[..., 0].double(), start[..., 1].double()  # where they sample
    one, zero = torch.ones_like(u), torch.zeros_like(u)
    rows_x = torch.stack([u, v, one, zero, zero, zero, -u * x, -v * x], -1)
    rows_y = torch.stack([zero, zero, zero, u, v, one, -u * y, -v * y], -1)
    a = torch.cat([rows_x, rows_y], 1)  # [B, 8, 8]
    coeffs = torch.linalg.solve(a, torch.cat([x, y], 1))
    return torch.cat([coeffs, torch.ones(b, 1, dtype=coeffs.dtype)], 1).view(b, 3, 3).float()


def draw_perspective(b: int, distortion: float, generator: torch.Generator,
                     p: float = 0.5) -> torch.Tensor:
    """RandomPerspective's draw, batched: with probability p an image's corners move inward
    by up to `distortion` x half a side each, independently (torchvision draws whole
    pixels; this draws continuously); the others keep the identity."""
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    inward = -corners  # the direction each corner moves in
    move = torch.rand(b, 4, 2, generator=generator) * distortion
    on = (torch.rand(b, generator=generator) < p).float().view(b, 1, 1)
    end = corners + inward * move * on
    return perspective(corners.expand(b, -1, -1), end)


def warp(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Sample float [B, C, H, W] through per-image matrices; outside the image reads 0.
    Images whose matrix is the identity are left as they are, not resampled."""
    moving = (matrices - torch.eye(3)).abs().flatten(1).amax(1) > 0
    if not moving.any():
        return x
    if not moving.all():
        idx = moving.nonzero().flatten()
        out = x.clone()
        out[idx.to(x.device)] = _sample(x[idx.to(x.device)], matrices[idx])
        return out
    return _sample(x, matrices)


def _sample(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    m = matrices.to(x.device, x.dtype)
    base = _base_grid(h, w, x.device, x.dtype).expand(b, -1, -1)
    # The grid as one batched product with the identity grid: what affine_grid computes,
    # in about half its time on a CPU.
    grid = torch.baddbmm(m[:, :2, 2].unsqueeze(1), base, m[:, :2, :2].transpose(1, 2))
    if (m[:, 2, :2] != 0).any():  # projective: divide by the third coordinate
        third = torch.baddbmm(m[:, 2:, 2].unsqueeze(1), base, m[:, 2:, :2].transpose(1, 2))
        grid = grid / third
    return F.grid_sample(x, grid.view(b, h, w, 2), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of float [B, C, H, W] by its own angle; corners fill with 0."""
    return warp(x, rotation(degrees))


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the images where mask is True (no resampling)."""
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def draw_crop(b: int, scale: float, ratio: tuple[float, float],
              generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop's draw, batched: area a fraction in [scale, 1], aspect ratio
    log-uniform in `ratio`, the box anywhere inside the image. Where torchvision tries ten
    draws and falls back to a centre crop, a box wider or taller than the image is clamped
    to it."""
    area = scale + torch.rand(b, generator=generator) * (1 - scale)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + torch.rand(b, generator=generator) * (hi - lo))
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    top = torch.rand(b, generator=generator) * (1 - height)
    left = torch.rand(b, generator=generator) * (1 - width)
    return crop(top, left, height, width)
