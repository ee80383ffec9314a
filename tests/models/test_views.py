"""Test-time views: each view is the augmentation it names (the warps as data/geometry.py
draws them, which match torchvision), the output is the mean of the views' probabilities,
and the set names agree with the setting's."""

import typing

import pytest
import torch

from asl_sweep.data import geometry
from asl_sweep.models.views import (
    DEGREES,
    VIEW_SETS,
    ZOOM,
    TestTimeViews,
    each_view,
    set_probabilities,
    with_views,
)
from asl_sweep.settings.spec import StudyConfig


class Recorder(torch.nn.Module):
    """Logits that are a fixed function of the image, and the images it was shown."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3 * 12 * 12, 4, generator=torch.Generator().manual_seed(0)))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return x.flatten(1) @ self.weight


def views_of(name: str, x: torch.Tensor) -> list[torch.Tensor]:
    model = Recorder()
    TestTimeViews(model, name, 12)(x)
    return model.seen


def test_each_view_is_the_augmentation_it_names():
    x = torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    b = len(x)
    identity, flipped = views_of("flip", x)
    assert torch.equal(identity, x) and torch.equal(flipped, x.flip(-1))
    _, left, right = views_of("rotate", x)
    assert torch.allclose(left, geometry.rotate(x, torch.full((b,), DEGREES)), atol=1e-5)
    assert torch.allclose(right, geometry.rotate(x, torch.full((b,), -DEGREES)), atol=1e-5)
    _, out, in_ = views_of("scale", x)
    half = torch.full((b,), 0.5)
    assert torch.allclose(out, geometry.warp(x, geometry.zoom_out(torch.full((b,), ZOOM), half,
                                                                  half)), atol=1e-5)
    side = torch.full((b,), 1 / ZOOM)
    corner = (1 - side) / 2
    assert torch.allclose(in_, geometry.warp(x, geometry.crop(corner, corner, side, side)),
                          atol=1e-5)
    assert len(views_of("all", x)) == 6
    # A quarter turn each way: the image turned as rot90 turns it, no pixel blended (the
    # training's `turn` draws the same warp, geometry.rotate by 90 degrees).
    _, plus, minus = views_of("turn", x)
    assert {torch.allclose(plus, x.rot90(k, (-2, -1)), atol=1e-5) for k in (1, -1)} == {
        True, False}
    assert torch.allclose(minus, plus.rot90(2, (-2, -1)), atol=1e-5)
    assert torch.allclose(plus, geometry.rotate(x, torch.full((b,), 90.0)), atol=1e-5)


def test_the_output_is_the_mean_of_the_views_probabilities():
    x = torch.rand(3, 3, 12, 12)
    model = Recorder()
    out = TestTimeViews(model, "all", 12)(x)
    mean = torch.stack([torch.softmax(model.forward(v), 1) for v in model.seen[:6]]).mean(0)
    assert torch.allclose(out.softmax(1), mean, atol=1e-6)
    assert with_views(model, "none", 12) is model  # no views: the model itself
    with pytest.raises(ValueError, match="unknown test-time view set 'spin'"):
        TestTimeViews(model, "spin", 12)


def test_the_setting_names_every_view_set():
    setting = typing.get_args(StudyConfig.model_fields["tta"].annotation)
    assert set(setting) == {"auto", "off"} | (set(VIEW_SETS) - {"none"})


def test_each_set_chosen_from_single_views_is_the_set_the_model_averages():
    """Choosing computes every view once and averages per set: the same probabilities the
    exported model (TestTimeViews) gives for that set."""
    model = Recorder().eval()
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    each = each_view(model, x, 12)
    for name in VIEW_SETS:
        shipped = with_views(model, name, 12)(x).softmax(1)
        assert torch.allclose(set_probabilities(each, name), shipped, atol=1e-6), name
