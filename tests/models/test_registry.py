"""Model families: the CNN, its limits, and what each family's record holds."""

import pytest
import torch

from asl_sweep.models.layers import InputSpec
from asl_sweep.models.registry import (
    CNN,
    Deployable,
    build_model,
    check_fits,
    count_parameters,
)
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


def test_on_a_cpu_a_cnns_convolutions_take_the_batch_channels_last_and_give_the_same_answer():
    """oneDNN's CPU convolutions and pooling are faster on channels-last tensors (an epoch
    of the shipped CNNs 0.68-0.86x the time, benchmarks/channels_last.py): the batch, as it
    comes (channels first), is made channels-last before the first convolution, and the
    model's answer is the same as the channels-first model's, up to float rounding."""
    torch.manual_seed(0)
    model = build_model(TrainConfig(model="cnn", hidden=[], cnn={"channels": [8, 16]}), SPEC)
    seen = []
    model.features[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x = torch.rand(4, 3, 32, 32)
    out = model(x)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    first = model.head(model.features(model.normalize(x)))  # the layout it came in
    assert not seen[1].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, first, rtol=1e-5, atol=1e-5)


def test_a_cnn_too_deep_for_its_images_is_a_settings_error():
    cfg = TrainConfig(model="cnn", cnn={"channels": [4] * 6})
    with pytest.raises(SettingsError, match="cnn.channels: 6 pooled blocks need images of at "
                                            "least 64px, these are 32px"):
        build_model(cfg, SPEC)


def test_a_model_is_refused_only_where_its_weights_gradients_and_state_cannot_fit():
    """An MLP on 224px images with a 4096-wide layer: 617 million weights; with Adam each
    trained weight takes 16 bytes (9.2 GiB), with plain SGD 8 (4.6 GiB). A frozen backbone's
    weights are counted once (no gradient, no state)."""
    big = InputSpec(224, 9, (0.5,) * 3, (0.25,) * 3)
    mlp = TrainConfig(model="mlp", hidden=[4096], dropout=[0.0, 0.0], optimizer="adam")
    with pytest.raises(SettingsError, match=r"^the mlp these settings describe has 617 million "
                                            r"weights: training it takes at least 9\.2 GiB "
                                            r"\(weights, gradients, adam's state\), more than "
                                            r"the 8\.0 GiB of here;"):
        check_fits(mlp, big, 8 << 30, "here")
    check_fits(mlp, big, 10 << 30, "here")
    check_fits(mlp.model_copy(update={"optimizer": "sgd", "momentum": 0.0}), big, 5 << 30, "here")
    check_fits(mlp, big, None, "here")  # memory unknown: not refused
    frozen = TrainConfig(model="transfer")  # MobileNetV2 and its head: 2.9 M weights, 0.67 M trained
    check_fits(frozen, big, 24 << 20, "here")  # 19.6 MB
    with pytest.raises(SettingsError):
        check_fits(frozen.model_copy(update={"transfer": frozen.transfer.model_copy(
            update={"trainable": 100})}), big, 24 << 20, "here")  # 46 MB


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


def test_an_image_with_a_non_finite_pixel_gets_nan_probabilities_and_leaves_the_others_be():
    """What the model card says of every export form: a NaN or infinite pixel gives that
    image NaN probabilities (no class), never a confident one, and the other images of the
    batch get the answer they get alone (batch norm in eval mode mixes no images)."""
    torch.manual_seed(0)
    model = Deployable(build_model(TrainConfig(model="cnn", hidden=[], cnn={"channels": [8]}),
                                   SPEC), 32).eval()
    x = torch.rand(3, 3, 40, 40) * 255
    alone = model(x[2:])
    x[0, 1, 5, 7], x[1, 0, 0, 0] = float("nan"), float("inf")
    out = model(x)
    assert out[:2].isnan().all()
    torch.testing.assert_close(out[2:], alone)
