"""Frozen features: how their extraction meets a stop (the cache is in test_backbones.py,
beside the backbones it serves)."""

import subprocess
import sys

import pytest

EXTRACTING = """
import os, signal
import torch
from asl_sweep.models.backbones import build_transfer
from asl_sweep.models.features import extract
from asl_sweep.models.layers import InputSpec
from asl_sweep.runtime import signals
from asl_sweep.settings.config import TrainConfig

cfg = TrainConfig(model="transfer", hidden=[], transfer={"backbone": "resnet18",
                                                         "weights": "none"})
model = build_transfer(cfg, InputSpec(16, 3, (0.5,) * 3, (0.25,) * 3))
images = torch.zeros(600, 3, 16, 16, dtype=torch.uint8)  # several extraction batches
signals.install()
os.kill(os.getpid(), signal.SIGTERM)
try:
    extract(model, images, cfg, 0, None)
    print("ran to the end")
except KeyboardInterrupt:
    print("stopped")
"""


@pytest.mark.slow
def test_a_stop_while_features_are_extracted_is_taken_between_batches():
    """Extracting a pool's features through a backbone takes a minute on a CPU (once per
    study, before the first transfer trial): a stop was taken after all of it."""
    out = subprocess.run([sys.executable, "-c", EXTRACTING], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "stopped", out.stderr
