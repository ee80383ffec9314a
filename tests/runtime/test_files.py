"""Weights-only loads: a payload that would run code is named unsafe, a damaged file damaged,
and torch's own notes stay out of the terminal."""

import os
import pickle
import warnings

import pytest
import torch

from asl_sweep.runtime.errors import ModelFileError, UnsafeFileError
from asl_sweep.runtime.files import load_tensors


class RunsACommand:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


class Evaluates:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("payload", [RunsACommand, Evaluates])
def test_a_torch_saved_payload_is_refused_as_unsafe_not_damaged(tmp_path, payload):
    path = tmp_path / "model.pt"
    torch.save({"model": payload()}, path)
    with pytest.raises(UnsafeFileError, match="would run arbitrary code"):
        load_tensors(path)
    assert not (tmp_path / "pwned").exists()


def test_a_raw_pickle_is_refused_without_torchs_protocol_warning(tmp_path):
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"x": 1}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail the test
        with pytest.raises(ModelFileError, match="not a file asl-sweep wrote"):
            load_tensors(path)
