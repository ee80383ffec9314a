"""Pixel-level augmentation of a float batch in [0, 1], each image with its own strength:
colour jitter (brightness, contrast, saturation, hue), sharpness, posterize, solarize,
Gaussian blur and random erasing. Each op means what torchvision's functional op of the
same name means for one image (the tests hold them equal), batched."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
_LUMA = (0.2989, 0.587, 0.114)


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device, x.dtype).view(-1, 1, 1, 1)


def _blend(x: torch.Tensor, other: torch.Tensor | float, factor: torch.Tensor) -> torch.Tensor:
    f = _per_image(factor, x)
    return (f * x + (1 - f) * other).clamp_(0.0, 1.0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, 0.0, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean grey level of each image."""
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with each image's own grey version."""
    return _blend(x, grayscale(x), factor)


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Turn each image's hues by `shift` turns (-0.5..0.5): torchvision's HSV round trip in
    one pass. A hue turn keeps each pixel's largest channel (value) and its spread (chroma),
    so each channel is value - chroma * ramp(its distance from the hue); the hue is in
    sixths of a turn, from the largest channel (ties: red, then green). Without the round
    trip's max-with-index and per-channel passes it takes a third of the time on a CPU
    (benchmarks/jitter.py)."""
    r, g, b = x.unbind(1)
    value = x.amax(dim=1)
    chroma = value - x.amin(dim=1)
    is_r = r == value
    is_g = (g == value) & ~is_r
    # chroma * the hue in sixths: red's sector at 0, green's at 2, blue's at 4.
    turned = torch.where(is_r, g - b, torch.where(is_g, b - r, (r - g).add_(4.0 * chroma)))
    turned.add_(is_g * (2.0 * chroma))
    # A grey pixel (chroma 0) has 0 over the dtype's tiniest number as its hue; it stays grey.
    h6 = turned.div_(chroma.clamp_min(torch.finfo(x.dtype).tiny))
    h6.add_(_per_image(shift, x)[:, 0] * 6.0)
    sector = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(h6.unsqueeze(1) + sector, 6.0)
    ramp = k.sub_(2.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)  # min(k, 4 - k) in [0, 1]
    return ramp.mul_(-chroma.unsqueeze(1)).add_(value.unsqueeze(1)).clamp_(0.0, 1.0)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with a smoothed copy (3x3 kernel, centre 5, the rest 1, over 13; the border
    pixels kept): factor > 1 sharpens, < 1 softens."""
    b, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return _blend(x, smooth, factor)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep `bits` bits (1..8) of each channel: torchvision's float posterize."""
    levels = _per_image(torch.pow(2.0, bits.float()), x)
    return torch.minimum(torch.floor(x * levels), levels - 1) / levels


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the pixels at or above each image's threshold."""
    return torch.where(x >= _per_image(threshold, x), 1.0 - x, x)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own sigma: per-image kernels applied as one grouped conv
    (measured faster on the CPU than separable passes for small kernels)."""
    b, c, h, w = x.shape
    half = (kernel - 1) / 2
    offsets = torch.linspace(-half, half, kernel, device=x.device, dtype=x.dtype)
    g = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma.to(x.device, x.dtype)[:, None] ** 2))
    g = g / g.sum(1, keepdim=True)  # [B, k]
    weight = (g[:, :, None] * g[:, None, :]).repeat_interleave(c, 0).unsqueeze(1)  # [B*C,1,k,k]
    padded = F.pad(x.reshape(1, b * c, h, w), [kernel // 2] * 4, mode="reflect")
    return F.conv2d(padded, weight, groups=b * c).view(b, c, h, w)


def erase(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Set each image's box (pixel rows top:top+height, columns left:left+width; [B, 4] as
    top, left, height, width; height 0 = nothing) to 0, torchvision's erase with value 0."""
    _, _, h, w = x.shape
    boxes = boxes.to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    top, left, height, width = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside = ((rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width))
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def draw_erase(b: int, h: int, w: int, p: float, generator: torch.Generator,
               scale: tuple[float, float] = (0.02, 0.33),
               ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """RandomErasing's draw, batched: with probability p a box of area `scale` of the image
    and aspect ratio log-uniform in `ratio`, clamped to the image (torchvision retries up to
    ten times instead). Returns [B, 4] boxes; images not erased get height 0."""
    chosen = torch.rand(b, generator=generator) < p
    area = (scale[0] + torch.rand(b, generator=generator) * (scale[1] - scale[0])) * h * w
    lo, hi = torch.log(torch.tensor(ratio[0])), torch.log(torch.tensor(ratio[1]))
    aspect = torch.exp(lo + torch.rand(b, generator=generator) * (hi - lo))
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (torch.rand(b, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(b, generator=generator) * (w - ew + 1)).long()
    return torch.stack([top, left, eh * chosen, ew], 1)
