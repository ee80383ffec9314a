"""Every augmentation against torchvision's own transform on the same image and parameters
(equal within interpolation tolerance), and the batch pipeline seeded and exactly repeatable."""

import math

import pytest
import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from asl_sweep.data import geometry, mixing, photometric, trivial
from asl_sweep.data.augment import augment_batch
from asl_sweep.settings.config import AugmentConfig, TrainConfig

BILINEAR = InterpolationMode.BILINEAR


def _batch(n=4, size=24, seed=0):
    """Smooth random images (bilinear resampling of smooth images is comparable)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                           align_corners=False)


def _close(a, b, atol=1e-5, inner=0):
    if inner:
        a, b = a[..., inner:-inner, inner:-inner], b[..., inner:-inner, inner:-inner]
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"max difference {diff} > {atol}"


# ---------------------------------------------------------------- geometry
def test_rotation_is_torchvisions_rotate_inside_the_image():
    x = _batch()
    angles = torch.tensor([0.0, 17.0, -40.0, 90.0])
    ours = geometry.rotate(x, angles)
    for i, a in enumerate(angles.tolist()):
        theirs = TF.rotate(x[i], a, interpolation=BILINEAR)
        # The corners that rotate in from outside differ in how they blend with the fill.
        _close(ours[i], theirs, atol=2e-3, inner=6)


def test_mirror_is_torchvisions_horizontal_flip_exactly():
    x = _batch()
    mask = torch.tensor([True, False, True, False])
    ours = geometry.hflip(x, mask)
    assert torch.equal(ours[0], TF.horizontal_flip(x[0])) and torch.equal(ours[1], x[1])
    mirrored = geometry.warp(x, geometry.rotation(torch.zeros(4), mask))
    _close(mirrored, ours, atol=1e-5)


@pytest.mark.parametrize("box", [(0, 0, 24, 24), (3, 5, 12, 16), (10, 2, 14, 9)])
def test_crop_is_torchvisions_resized_crop(box):
    x = _batch()
    top, left, h, w = box
    frac = [torch.full((4,), v / 24) for v in box]
    ours = geometry.warp(x, geometry.crop(*frac))
    theirs = TF.resized_crop(x, top, left, h, w, [24, 24], interpolation=BILINEAR,
                             antialias=False)
    # Inside, the same bilinear sampling; at the box's edge torchvision clamps to the box
    # while the warp reads the neighbouring pixels of the image.
    _close(ours, theirs, atol=1e-4, inner=2)


def test_crop_draws_lie_inside_the_image_with_the_asked_area():
    m = geometry.draw_crop(2000, 0.25, (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    width, height = m[:, 0, 0], m[:, 1, 1]
    left = (m[:, 0, 2] + 1 - width) / 2
    top = (m[:, 1, 2] + 1 - height) / 2
    assert (left >= -1e-6).all() and (left + width <= 1 + 1e-6).all()
    assert (top >= -1e-6).all() and (top + height <= 1 + 1e-6).all()
    area = width * height
    assert area.min() >= 0.25 * 0.75 and area.max() <= 1.0 + 1e-6
    assert 0.5 < area.mean() < 0.7  # uniform in [0.25, 1], less what was clamped


def test_shift_is_torchvisions_affine_translate():
    x = _batch()
    ours = geometry.warp(x, geometry.shift(torch.full((4,), 3 / 24), torch.full((4,), -2 / 24)))
    theirs = TF.affine(x, angle=0.0, translate=[3, -2], scale=1.0, shear=[0.0, 0.0],
                       interpolation=BILINEAR)
    _close(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1])
def test_shear_is_torchvisions_affine_shear(axis):
    x = _batch()
    m = torch.full((4,), 0.3)
    zero = torch.zeros(4)
    ours = geometry.warp(x, geometry.shear(m, zero) if axis == 0 else geometry.shear(zero, m))
    angle = math.degrees(math.atan(0.3))
    theirs = TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0,
                       shear=[angle, 0.0] if axis == 0 else [0.0, angle],
                       interpolation=BILINEAR)
    _close(ours, theirs, atol=2e-3, inner=5)


@pytest.mark.parametrize("ratio,left,top", [(2.0, 12, 0), (1.5, 3, 9), (3.0, 0, 48)])
def test_zoom_out_is_torchvisions_zoom_out_then_resize(ratio, left, top):
    x = _batch()
    side = int(24 * ratio)
    free = side - 24
    fx, fy = torch.full((4,), left / free), torch.full((4,), top / free)
    ours = geometry.warp(x, geometry.zoom_out(torch.full((4,), ratio), fx, fy))
    # RandomZoomOut's canvas: the image padded with 0 at (left, top) of a side x side canvas.
    canvas = TF.pad(x, [left, top, free - left, free - top], fill=0.0)
    theirs = TF.resize(canvas, [24, 24], interpolation=BILINEAR, antialias=False)
    _close(ours, theirs, atol=1e-4)


def test_zoom_out_draws_shrink_the_image_inside_the_frame():
    x = torch.ones(64, 3, 24, 24)
    out = augment_batch(x, AugmentConfig(zoom_out=3.0), torch.Generator().manual_seed(0))
    filled = out.mean(dim=(1, 2, 3))
    # The share of the frame the image covers is 1/ratio^2, ratio in [1, 3].
    assert filled.max() <= 1 + 1e-6 and filled.min() >= 1 / 9 - 0.02
    assert filled.std() > 0.05  # every image its own ratio


def test_zoom_share_shrinks_about_its_share_and_leaves_the_rest_as_they_were():
    x = _batch(n=400)
    out = augment_batch(x, AugmentConfig(zoom_out=3.0, zoom_share=0.25),
                        torch.Generator().manual_seed(0))
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert 0.18 < 1 - sum(kept) / len(x) < 0.32  # about a quarter of them zoomed out
    ones = torch.ones(400, 3, 24, 24)
    filled = augment_batch(ones, AugmentConfig(zoom_out=3.0, zoom_share=0.25),
                           torch.Generator().manual_seed(0)).mean(dim=(1, 2, 3))
    shrunk = filled[filled < 1 - 1e-6]
    # those zoomed keep the whole range of ratios: covering 1/9 to all of the frame
    assert shrunk.min() < 0.2 and shrunk.max() > 0.8


def test_turn_gives_about_its_share_of_images_torchvisions_quarter_turn_either_way():
    x = _batch(n=400)
    out = augment_batch(x, AugmentConfig(turn=0.3), torch.Generator().manual_seed(0))
    left = torch.rot90(x, 1, dims=(-2, -1))  # torchvision's rotate(+90): counter-clockwise
    assert torch.equal(TF.rotate(x[0], 90.0), left[0])
    right = torch.rot90(x, -1, dims=(-2, -1))
    kept, turned = 0, {"left": 0, "right": 0}
    for i in range(len(x)):
        if torch.equal(out[i], x[i]):
            kept += 1
            continue
        # a quarter turn of a square grid through the warp: torchvision's, within rounding
        side = "left" if (out[i] - left[i]).abs().max() < 1e-4 else "right"
        _close(out[i], left[i] if side == "left" else right[i], atol=1e-4)
        turned[side] += 1
    assert 0.22 < (len(x) - kept) / len(x) < 0.38  # about p = 0.3 of them
    assert turned["left"] > 30 and turned["right"] > 30  # either way


def test_turn_adds_a_quarter_to_the_rotation_drawn():
    x = _batch(n=200)
    g = torch.Generator().manual_seed(1)
    out = augment_batch(x, AugmentConfig(rotation=5.0, turn=1.0), g)
    # every image turned about 90 degrees: far from the original, close to a quarter turn
    near = [min((out[i] - torch.rot90(x[i], k, dims=(-2, -1)))[..., 6:-6, 6:-6].abs().mean()
                for k in (1, -1)) for i in range(len(x))]
    far = [(out[i] - x[i])[..., 6:-6, 6:-6].abs().mean() for i in range(len(x))]
    assert max(near) < min(far)


@pytest.mark.parametrize("end", [
    [[2, 1], [20, 0], [23, 22], [1, 19]],
    [[0, 0], [23, 3], [20, 20], [3, 23]],
])
def test_perspective_is_torchvisions_perspective(end):
    x = _batch()
    start = [[0, 0], [23, 0], [23, 23], [0, 23]]

    def norm(points):  # torchvision's pixel coordinates -> the warp's normalized ones
        return torch.tensor(points, dtype=torch.float32).mul(2 / 24).sub(1).expand(4, -1, -1)

    ours = geometry.warp(x, geometry.perspective(norm(start), norm(end)))
    theirs = TF.perspective(x, start, end, interpolation=BILINEAR)
    _close(ours, theirs, atol=3e-3, inner=5)


def test_perspective_draws_move_corners_inward_for_half_the_images():
    m = geometry.draw_perspective(400, 0.5, torch.Generator().manual_seed(0))
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
    inverse = torch.linalg.inv(m.double())
    moved = torch.einsum("bij,kj->bki", inverse, corners.double())
    end = moved[..., :2] / moved[..., 2:]
    shift = (end - corners[:, :2].double()).abs().amax(dim=(1, 2))
    identity = shift < 1e-5
    assert 0.4 < identity.float().mean() < 0.6
    assert shift.max() <= 0.5 + 1e-5
    assert (end.abs() <= 1 + 1e-5).all()  # inward: the corners stay inside the frame


# ---------------------------------------------------------------- pixels
@pytest.mark.parametrize("name,ours,theirs,factors", [
    ("brightness", photometric.brightness, TF.adjust_brightness, [0.0, 0.6, 1.0, 1.7]),
    ("contrast", photometric.contrast, TF.adjust_contrast, [0.0, 0.6, 1.0, 1.7]),
    ("saturation", photometric.saturation, TF.adjust_saturation, [0.0, 0.6, 1.0, 1.7]),
    ("hue", photometric.hue, TF.adjust_hue, [-0.5, -0.2, 0.0, 0.35]),
    ("sharpness", photometric.sharpness, TF.adjust_sharpness, [0.0, 0.5, 1.0, 1.99]),
    ("solarize", photometric.solarize, TF.solarize, [0.0, 0.3, 0.7, 1.0]),
])
def test_each_pixel_op_is_torchvisions_per_image(name, ours, theirs, factors):
    x = _batch()
    x[1, :, :4, :4] = 0.5  # a grey patch: hue undefined, saturation 0
    x[2, 1, :4, :4] = x[2, 0, :4, :4]  # ties between channels: red and green,
    x[3, 2, :4, :4] = x[3, 1, :4, :4]  # green and blue
    out = ours(x, torch.tensor(factors))
    for i, f in enumerate(factors):
        _close(out[i], theirs(x[i], f), atol=2e-5)


def test_posterize_is_torchvisions_on_float_images():
    x = _batch()
    bits = torch.tensor([8, 5, 3, 1])
    out = photometric.posterize(x, bits)
    for i, b in enumerate(bits.tolist()):
        _close(out[i], TF.posterize(x[i], b), atol=1e-6)
        assert len(out[i].unique()) <= 2 ** b


def test_blur_is_torchvisions_gaussian_blur():
    x = _batch()
    sigma = torch.tensor([0.3, 0.8, 1.2, 2.0])
    out = photometric.gaussian_blur(x, 5, sigma)
    for i, s in enumerate(sigma.tolist()):
        _close(out[i], TF.gaussian_blur(x[i], [5, 5], [s, s]), atol=1e-5)


def test_erase_is_torchvisions_erase():
    x = _batch()
    boxes = torch.tensor([[2, 3, 5, 7], [0, 0, 24, 24], [10, 10, 0, 4], [20, 1, 4, 23]])
    out = photometric.erase(x, boxes)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        theirs = TF.erase(x[i], top, left, h, w, torch.tensor(0.0)) if h else x[i]
        assert torch.equal(out[i], theirs)


def test_erase_draws_lie_inside_and_follow_the_probability():
    boxes = photometric.draw_erase(4000, 32, 32, 0.25, torch.Generator().manual_seed(0))
    erased = boxes[:, 2] > 0
    assert abs(erased.float().mean().item() - 0.25) < 0.03
    assert (boxes[:, 0] + boxes[:, 2] <= 32).all() and (boxes[:, 1] + boxes[:, 3] <= 32).all()


# ---------------------------------------------------------------- TrivialAugment
@pytest.mark.parametrize("name,theirs", [
    ("brightness", lambda x, m: TF.adjust_brightness(x, 1 + 0.99 * m)),
    ("color", lambda x, m: TF.adjust_saturation(x, 1 + 0.99 * m)),
    ("contrast", lambda x, m: TF.adjust_contrast(x, 1 + 0.99 * m)),
    ("sharpness", lambda x, m: TF.adjust_sharpness(x, 1 + 0.99 * m)),
    ("posterize", lambda x, m: TF.posterize(x, int(8 - round(6 * abs(m))))),
    ("solarize", lambda x, m: TF.solarize(x, 1.0 - abs(m))),
    ("autocontrast", lambda x, m: TF.autocontrast(x)),
    ("equalize", lambda x, m: TF.equalize(x)),
])
def test_each_trivial_pixel_op_is_torchvisions(name, theirs):
    x = _batch()
    m = torch.tensor([0.9, -0.5, 0.2, -1.0])
    out = trivial.apply_op(name, x, m)
    for i in range(4):
        _close(out[i], theirs(x[i], m[i].item()), atol=2e-5)


@pytest.mark.parametrize("name,theirs", [
    ("shear_x", lambda x, m: TF.affine(x, 0.0, [0, 0], 1.0, [math.degrees(math.atan(0.99 * m)),
                                                               0.0], BILINEAR)),
    ("shear_y", lambda x, m: TF.affine(x, 0.0, [0, 0], 1.0, [0.0, math.degrees(
        math.atan(0.99 * m))], BILINEAR)),
    ("translate_x", lambda x, m: TF.affine(x, 0.0, [round(m * 32 / 224 * 28), 0], 1.0,
                                           [0.0, 0.0], BILINEAR)),
    ("translate_y", lambda x, m: TF.affine(x, 0.0, [0, round(m * 32 / 224 * 28)], 1.0,
                                           [0.0, 0.0], BILINEAR)),
    ("rotate", lambda x, m: TF.rotate(x, 135.0 * m, BILINEAR)),
])
def test_each_trivial_geometric_op_is_torchvisions(name, theirs):
    x = _batch(size=28)
    m = torch.tensor([0.75, -0.5, 0.25, -1.0])  # whole pixels of shift at 28 px (4 px a unit)
    op = torch.full((4,), trivial.OPS.index(name))
    out = geometry.warp(x, trivial.matrices(op, m))
    for i in range(4):
        _close(out[i], theirs(x[i], m[i].item()), atol=3e-3, inner=8)


def test_trivial_gives_each_image_one_op_and_identity_leaves_it():
    x = _batch(n=64)
    op, m = trivial.draw(64, 1.0, torch.Generator().manual_seed(3))
    assert set(op.tolist()) == set(range(len(trivial.OPS)))
    assert m.abs().max() <= 1.0 and (m < 0).any() and (m > 0).any()
    out = trivial.pixels(geometry.warp(x, trivial.matrices(op, m)), op, m)
    same = op == trivial.OPS.index("identity")
    _close(out[same], x[same], atol=1e-5)


# ---------------------------------------------------------------- mixing
def test_mixup_is_torchvisions_mixup():
    x, y = _batch(n=6), torch.arange(6)
    torch.manual_seed(5)
    theirs_x, theirs_y = v2.MixUp(alpha=0.4, num_classes=9)(x, y)
    lam = theirs_y[0, 0].item()
    ours_x, ours_y = mixing.mixup(x, y, 9, lam)
    _close(ours_x, theirs_x, atol=1e-6)
    _close(ours_y, theirs_y, atol=1e-6)


def test_cutmix_is_torchvisions_cutmix():
    x, y = _batch(n=6), torch.arange(6)
    torch.manual_seed(11)
    theirs_x, theirs_y = v2.CutMix(alpha=1.0, num_classes=9)(x, y)
    changed = (theirs_x[0] != x[0]).any(0).nonzero()
    box = (changed[:, 0].min().item(), changed[:, 1].min().item(),
           changed[:, 0].max().item() + 1, changed[:, 1].max().item() + 1)
    ours_x, ours_y = mixing.cutmix(x, y, 9, box)
    assert torch.equal(ours_x, theirs_x)
    _close(ours_y, theirs_y, atol=1e-6)


def test_mix_batch_is_seeded_and_targets_sum_to_one():
    x, y = _batch(n=8), torch.arange(8) % 3
    cfg = AugmentConfig(mixup=0.2, cutmix=1.0)
    a = mixing.mix_batch(x, y, 3, cfg, torch.Generator().manual_seed(2))
    b = mixing.mix_batch(x, y, 3, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    _close(a[1].sum(1), torch.ones(8), atol=1e-6)
    features = mixing.mix_batch(torch.rand(8, 5), y, 3, cfg, torch.Generator().manual_seed(2),
                                images=False)
    assert features[0].shape == (8, 5)


def test_cutmix_on_a_frozen_backbone_is_refused_in_one_line():
    with pytest.raises(ValueError, match="augment.mixup"):
        TrainConfig(model="transfer", augment={"cutmix": 1.0})
    TrainConfig(model="transfer", augment={"mixup": 0.2})
    TrainConfig(model="transfer", transfer={"trainable": 1}, augment={"cutmix": 1.0})


# ---------------------------------------------------------------- the pipeline
EVERYTHING = dict(rotation=20, flip=True, blur_kernel=3, crop_scale=0.5, translate=0.1,
                  brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, erase=0.5,
                  trivial=1.0, zoom_out=2.0, perspective=0.4, turn=0.25)


@pytest.mark.parametrize("setting", sorted(EVERYTHING))
def test_each_setting_changes_the_batch_repeatably_and_off_is_identity(setting):
    x = _batch(n=8)
    cfg = AugmentConfig(**{setting: EVERYTHING[setting]})
    assert cfg.transforms
    a = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1 + 1e-6
    assert torch.equal(augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(1)), x)


def test_everything_at_once_is_seeded_and_stays_on_the_device():
    x = _batch(n=8)
    cfg = AugmentConfig(**EVERYTHING)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.device == x.device
