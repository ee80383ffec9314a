"""Model families: the CNN, its limits, and what each family's record holds."""

import pytest
import torch

from asl_sweep.models.layers import InputSpec
from asl_sweep.models.registry import CNN, build_model, count_parameters
from asl_sweep.runtime.errors import SettingsError
from asl_sweep.settings.config import TrainConfig

SPEC = InputSpec(32, 9, (0.5,) * 3, (0.25,) * 3)


def test_cnn_blocks_follow_the_settings():
    cfg = TrainConfig(model="cnn", hidden=[16], dropout=[0.1, 0.2],
                      cnn={"channels": [8, 16], "kernel": 5, "batch_norm": False,
                           "pool": "avg", "dropout": 0.25})
    model = build_model(cfg, SPEC)
    assert isinstance(model, CNN)
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Conv2d", "ReLU", "AvgPool2d", "Dropout2d", "Conv2d", "ReLU", "AvgPool2d",
                     "Dropout2d", "AdaptiveAvgPool2d", "Flatten"]
    assert model.features[0].kernel_size == (5, 5)
    assert model(torch.rand(4, 3, 32, 32)).shape == (4, 9)
    with_bn = build_model(cfg.model_copy(update={"cnn": cfg.cnn.model_copy(
        update={"batch_norm": True})}), SPEC)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules())
    assert count_parameters(with_bn) > 0


def test_a_cnn_too_deep_for_its_images_is_a_settings_error():
    cfg = TrainConfig(model="cnn", cnn={"channels": [4] * 6})
    with pytest.raises(SettingsError, match="cnn.channels: 6 pooled blocks need images of at "
                                            "least 64px, these are 32px"):
        build_model(cfg, SPEC)


def test_the_record_holds_only_what_applies_to_the_model():
    mlp = TrainConfig(model="mlp", hidden=[64, 32], dropout=[0.1, 0.2, 0.3, 0.9]).applicable()
    assert "cnn" not in mlp and "transfer" not in mlp
    assert mlp["dropout"] == [0.1, 0.2, 0.3]  # the fourth rate drops no layer's output
    cnn = TrainConfig(model="cnn").applicable()
    assert "cnn" in cnn and "transfer" not in cnn
    frozen = TrainConfig(model="transfer").applicable()
    assert "feature_views" in frozen["transfer"] and "backbone_lr" not in frozen["transfer"]
    assert "cache_prefix" not in frozen["transfer"]
    # Fine-tuning on the cached prefix draws its augmented views as a frozen head does.
    tuned = TrainConfig(model="transfer", transfer={"trainable": 2}).applicable()
    assert "backbone_lr" in tuned["transfer"] and "feature_views" in tuned["transfer"]
    whole = TrainConfig(model="transfer", transfer={"trainable": 2,
                                                    "cache_prefix": False}).applicable()
    assert "backbone_lr" in whole["transfer"] and "feature_views" not in whole["transfer"]
