import numpy as np
import pytest
import torch
from PIL import Image

from asl_sweep import data as data_mod
from asl_sweep.config import DataConfig
from asl_sweep.data import (
    DataError,
    covering_subset,
    groups_of,
    load_image_set,
    make_synthetic,
    prepare_split,
    split_indices,
)


def test_folder_loads_as_rgb_uint8(data_config, tmp_path):
    s = load_image_set(data_config, tmp_path / "cache")
    assert s.images.dtype == torch.uint8 and s.images.shape == (18, 3, 16, 16)
    assert s.classes == ["A", "B", "C"] and s.labels.tolist().count(0) == 6


def test_grayscale_rgba_and_palette_images_become_rgb(image_folder, tmp_path):
    Image.new("L", (20, 20), 128).save(image_folder / "A" / "p1_A_gray.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 128)).save(image_folder / "A" / "p1_A_rgba.png")
    Image.new("P", (20, 20), 3).save(image_folder / "B" / "p1_B_pal.gif")
    s = load_image_set(DataConfig(root=image_folder, image_size=16), tmp_path / "cache")
    assert s.images.shape == (21, 3, 16, 16)
    gray = s.names.index("A/p1_A_gray.png")
    assert s.images[gray].float().mean() == pytest.approx(128, abs=1)


@pytest.mark.parametrize("name, content, reason", [
    ("p1_A_corrupt.jpg", b"\xff\xd8\xff\xe0 definitely not a jpeg", "cannot be decoded"),
    ("notes.txt", b"hello", "not an image file"),
])
def test_bad_files_are_named_or_skipped(image_folder, tmp_path, name, content, reason):
    bad = image_folder / "A" / name
    bad.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_image_set(DataConfig(root=image_folder, image_size=16), tmp_path / "c1")
    assert str(bad) in str(e.value) and reason in str(e.value)
    messages = []
    s = load_image_set(DataConfig(root=image_folder, image_size=16, on_bad_image="skip"),
                       tmp_path / "c2", log=messages.append)
    assert len(s) == 18
    assert "skipped 1 bad file" in messages[0] and name in messages[0]


def test_truncated_image_is_named(image_folder, tmp_path):
    good = image_folder / "B" / "p1_B_0.png"
    truncated = image_folder / "B" / "p1_B_trunc.jpg"
    Image.open(good).convert("RGB").resize((64, 64)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match="p1_B_trunc.jpg: cannot be decoded"):
        load_image_set(DataConfig(root=image_folder, image_size=16), tmp_path / "c")


def test_empty_class_folder_is_named(image_folder, tmp_path):
    (image_folder / "D").mkdir()
    with pytest.raises(DataError, match=r"/D: empty class folder"):
        load_image_set(DataConfig(root=image_folder, image_size=16), tmp_path / "c")


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match="data.root: .* is not a folder"):
        load_image_set(DataConfig(root=tmp_path / "nope"), tmp_path / "c")


def test_second_load_comes_from_the_cache_without_decoding(data_config, tmp_path, monkeypatch):
    first = load_image_set(data_config, tmp_path / "cache")

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data_mod, "_decode_or_reason", no_decoding)
    second = load_image_set(data_config, tmp_path / "cache")
    assert torch.equal(first.images, second.images) and first.names == second.names


def test_cache_invalidates_when_an_image_changes(data_config, image_folder, tmp_path):
    first = load_image_set(data_config, tmp_path / "cache")
    Image.new("RGB", (20, 20), (255, 255, 255)).save(image_folder / "A" / "p1_A_0.png")
    second = load_image_set(data_config, tmp_path / "cache")
    assert first.content_key != second.content_key
    assert not torch.equal(first.images, second.images)


def test_synthetic_set_is_deterministic_and_varied():
    a, b = make_synthetic(3, 24, seed=1), make_synthetic(3, 24, seed=1)
    c = make_synthetic(3, 24, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.classes == list("ABCDEFGHI") and len(a) == 27
    assert a.images.float().std() > 20  # not blank


def test_split_is_stratified_and_deterministic():
    labels = torch.arange(9).repeat(20)
    t1, v1 = split_indices(labels, 0.25, seed=3)
    t2, v2 = split_indices(labels, 0.25, seed=3)
    _, v3 = split_indices(labels, 0.25, seed=4)
    assert torch.equal(v1, v2) and not torch.equal(v1, v3)
    assert set(t1.tolist()).isdisjoint(v1.tolist()) and len(t1) + len(v1) == 180
    assert torch.bincount(labels[v1]).tolist() == [5] * 9


def test_group_split_keeps_each_person_on_one_side():
    names = [f"p{p}_{c}_{n}.jpg" for p in range(10) for c in "ABC" for n in range(4)]
    labels = torch.tensor([ord(n.split("_")[1]) - 65 for n in names])
    groups = groups_of(names, r"^([^_]+)_")
    train, val = split_indices(labels, 0.3, seed=0, groups=groups)
    train_people = {groups[i] for i in train.tolist()}
    val_people = {groups[i] for i in val.tolist()}
    assert train_people and val_people and train_people.isdisjoint(val_people)
    assert 0.2 <= len(val) / len(names) <= 0.45


def test_group_pattern_that_misses_a_file_is_named():
    with pytest.raises(DataError, match="x.jpg: data.group_pattern"):
        groups_of(["p1_A_1.jpg", "x.jpg"], r"^(p\d+)_")


def test_covering_subset_has_every_class():
    labels = torch.arange(9).repeat(30)
    subset = covering_subset(torch.arange(270), labels, 20, seed=0)
    assert len(subset) == 20 and set(labels[subset].tolist()) == set(range(9))
    with pytest.raises(DataError, match="cannot cover 9 classes"):
        covering_subset(torch.arange(270), labels, 5, seed=0)


def test_prepare_split_puts_tensors_on_the_device(data_config, tmp_path):
    s = load_image_set(data_config, tmp_path / "cache")
    split = prepare_split(s, data_config, torch.device("cpu"))
    assert split.x_train.dtype == torch.uint8 and split.x_train.device.type == "cpu"
    assert len(split.y_train) + len(split.y_val) == 18
    sub = split.subset(3, seed=0)
    assert len(sub.y_train) == 3 and set(sub.y_train.tolist()) == {0, 1, 2}
    assert np.array_equal(sub.x_val.numpy(), split.x_val.numpy())
