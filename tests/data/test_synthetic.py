import torch

from asl_sweep.data.splits import groups_of
from asl_sweep.data.synthetic import GROUP_PATTERN, make_synthetic


def test_synthetic_set_is_deterministic_and_varied():
    a, b = make_synthetic(3, 24, seed=1), make_synthetic(3, 24, seed=1)
    c = make_synthetic(3, 24, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.classes == list("ABCDEFGHI") and len(a) == 27
    assert a.images.float().std() > 20  # not blank


def test_every_signer_signs_every_letter_in_a_style_of_their_own():
    s = make_synthetic(12, 32, seed=0, signers=4)
    groups = groups_of(s.names, GROUP_PATTERN)
    assert sorted(set(groups)) == ["s00", "s01", "s02", "s03"]
    for g in set(groups):
        letters = {s.labels[i].item() for i, x in enumerate(groups) if x == g}
        assert letters == set(range(9))
    # A signer's images resemble each other more than another signer's (their style).
    x = s.images.float().flatten(1)
    mean_of = {g: x[[i for i, v in enumerate(groups) if v == g]].mean(0) for g in set(groups)}
    own = sum((x[i] - mean_of[g]).norm() for i, g in enumerate(groups)) / len(groups)
    other = sum((x[i] - mean_of["s00" if g != "s00" else "s01"]).norm()
                for i, g in enumerate(groups)) / len(groups)
    assert own < other


def test_the_letters_kind_is_the_first_set_unchanged():
    from asl_sweep.data.synthetic import synthetic_digest

    first = make_synthetic(2, 16, seed=3, signers=4)
    assert torch.equal(first.images, make_synthetic(2, 16, seed=3, signers=4, kind="letters").images)
    assert first.digest == synthetic_digest(2, 4, 3)  # its caches stay valid


def test_people_differ_as_people_do_and_a_minority_is_unlike_the_rest():
    from asl_sweep.data.synthetic import signer_styles

    styles = signer_styles(400, seed=0, kind="people")
    unusual = [s.unusual for s in styles]
    assert 0.15 < sum(bool(u) for u in unusual) / 400 < 0.35
    assert {"sideways", "far", "close"} <= set(unusual)
    assert all(abs(s.pose) >= 60 for s in styles if s.unusual == "sideways")
    assert all(abs(s.pose) < 40 for s in styles if not s.unusual)
    assert all(s.forearm == (s.unusual == "far") for s in styles)
    assert 0.1 < sum(s.mirrored for s in styles) / 400 < 0.3  # left hands
    s = make_synthetic(4, 32, seed=0, signers=4, kind="people")
    t = make_synthetic(4, 32, seed=0, signers=4, kind="people")
    assert torch.equal(s.images, t.images) and s.digest != make_synthetic(4, 32, 0, 4).digest
    assert s.images.float().std() > 20
    groups = groups_of(s.names, GROUP_PATTERN)
    assert sorted(set(groups)) == ["s00", "s01", "s02", "s03"]
