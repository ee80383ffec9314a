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
