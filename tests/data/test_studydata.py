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
