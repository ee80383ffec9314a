import torch

from asl_sweep.data.augment import augment_batch, gaussian_blur, hflip, rotate
from asl_sweep.settings.config import AugmentConfig


def _batch(n=4, size=12):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_flip_twice_is_identity_and_flip_mirrors():
    x = _batch()
    mask = torch.tensor([True, False, True, False])
    once = hflip(x, mask)
    assert torch.equal(once[0], x[0].flip(-1)) and torch.equal(once[1], x[1])
    assert torch.equal(hflip(once, mask), x)


def test_rotation_zero_is_identity_and_180_twice_returns():
    x = _batch()
    assert torch.allclose(rotate(x, torch.zeros(4)), x, atol=1e-5)
    quarter = rotate(x, torch.full((4,), 90.0))
    assert not torch.allclose(quarter, x, atol=1e-2)
    # Per-image angles: image 0 unrotated, image 1 rotated by 180 (= flip both axes).
    mixed = rotate(x, torch.tensor([0.0, 180.0, 0.0, 0.0]))
    assert torch.allclose(mixed[0], x[0], atol=1e-5)
    assert torch.allclose(mixed[1], x[1].flip(-1).flip(-2), atol=1e-4)


def test_blur_keeps_constant_images_and_smooths_noise():
    flat = torch.full((2, 3, 10, 10), 0.4)
    assert torch.allclose(gaussian_blur(flat, 3, torch.tensor([1.0, 2.0])), flat, atol=1e-6)
    x = _batch(2)
    blurred = gaussian_blur(x, 3, torch.tensor([1.0, 1.0]))
    assert blurred.std() < x.std()


def test_augment_batch_is_seeded_and_stays_on_the_device():
    x = _batch()
    cfg = AugmentConfig(rotation=20, flip=True, blur_kernel=3)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.device == x.device and a.shape == x.shape
    assert not torch.equal(a, x)
    none = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(1))
    assert torch.equal(none, x)
