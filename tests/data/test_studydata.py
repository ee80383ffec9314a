"""The data resolver: splits computed once, tensors per size and fold, test kept apart."""

import numpy as np
import torch

from asl_sweep.data.studydata import StudyData
from asl_sweep.settings.config import DataConfig


def test_folds_and_sizes_share_one_split_and_test_stays_out(tmp_path):
    data = StudyData(DataConfig(image_size=16, synthetic={"per_class": 24}), tmp_path,
                     torch.device("cpu"), log=lambda _: None)
    test = set(data.splits.test.tolist())
    for fold in range(len(data.splits.folds)):
        for size in (16, 24):
            part = data.split(size, fold)
            assert part.image_size == size and part.x_train.dtype == torch.uint8
            assert not test & set(part.train_index.tolist())
            assert not test & set(part.val_index.tolist())
            assert len(part.y_train) == len(part.train_index)
            assert torch.equal(part.x_pool[part.val_pos], part.x_val)
    assert np.array_equal(data.split(24, 0).val_index, data.split(16, 0).val_index)
    assert data.test(24).x.shape[-1] == 24 and set(data.test().index.tolist()) == test
    sub = data.split(16).subset(9, seed=0)
    assert len(sub.y_train) == 9 and set(sub.y_train.tolist()) == set(range(9))
    assert torch.equal(sub.x_val, data.split(16).x_val)
    assert "person-disjoint" in data.describe()
    # final_model: refit trains on every non-test image of a fold: its training and
    # validation images, each once, with their own labels; test still out
    part, every = data.split(16, 1), data.split(16, 1).every_person()
    assert sorted(every.train_index.tolist()) == sorted(
        part.train_index.tolist() + part.val_index.tolist())
    assert len(set(every.train_index.tolist())) == len(data.pool) and not test & set(
        every.train_index.tolist())
    assert torch.equal(every.x_pool[every.train_pos], every.x_train)
    assert torch.equal(every.y_train[len(part.y_train):], part.y_val)


def test_photos_in_a_folder_per_person_split_by_person(tmp_path):
    """A/anna/01.png: the person is the folder below the class; the split keeps each person
    on one side."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in "ABC":
        for person in ("anna", "ben", "cleo", "dan", "eve", "finn"):
            folder = tmp_path / "photos" / c / person
            folder.mkdir(parents=True)
            for n in range(3):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                    folder / f"{n:02d}.png")
    cfg = DataConfig(root=tmp_path / "photos", image_size=12, group_pattern=r"^([^/]+)/",
                     val_fraction=0.2, test_fraction=0.2)
    data = StudyData(cfg, tmp_path / "cache", torch.device("cpu"), log=lambda _: None)
    assert sorted(set(data.groups.tolist())) == ["anna", "ben", "cleo", "dan", "eve", "finn"]
    sides = [set(data.groups[i].tolist()) for i in (data.splits.train, data.splits.val,
                                                    data.splits.test)]
    assert all(sides) and not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert "person-disjoint" in data.describe()
