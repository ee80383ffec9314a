import pytest
import torch
from pydantic import ValidationError

from asl_sweep.data.studydata import StudyData
from asl_sweep.runtime.errors import ConfigError, UnsafeFileError
from asl_sweep.runtime.files import load_tensors
from asl_sweep.settings.config import DataConfig, TrainConfig
from asl_sweep.training.checkpoint import ModelFile
from asl_sweep.training.train import (
    PARTITIONS,
    EpochStats,
    Monitor,
    crossfit,
    crossfit_step,
    half_scores,
    metric_step,
    partitions,
    person_scores,
    resolve_device,
    train,
    training_loss,
)


@pytest.fixture(scope="module")
def synthetic_split(tmp_path_factory):
    cfg = DataConfig(image_size=16, synthetic={"per_class": 12})
    return StudyData(cfg, tmp_path_factory.mktemp("cache"), torch.device("cpu"),
                     log=lambda _: None).split()


def test_mlp_overfits_20_images_covering_every_class(synthetic_split):
    tiny = synthetic_split.subset(20, seed=0)
    assert set(tiny.y_train.tolist()) == set(range(9))
    cfg = TrainConfig(hidden=[128, 64], lr=1e-3, batch_size=20, epochs=60)
    result = train(cfg, tiny, "cpu")
    # "Quickly": a third of the epochs allowed (it takes about 8 here).
    first_perfect = next((s.epoch for s in result.history if s.train_acc == 1.0), None)
    assert first_perfect is not None and first_perfect <= 20, first_perfect


def test_resume_from_checkpoint_equals_an_uninterrupted_run(synthetic_split, tmp_path):
    cfg = TrainConfig(hidden=[32], epochs=6, checkpoint_every=1, checkpoint_seconds=0, dropout=[0.1, 0.2],
                      augment={"rotation": 15, "flip": True}, batch_size=16)
    straight = train(cfg, synthetic_split, "cpu", run_dir=tmp_path / "a")

    class Crash(Exception):
        pass

    def crash_at_3(stats):
        if stats.epoch == 3:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, synthetic_split, "cpu", on_epoch=crash_at_3, run_dir=tmp_path / "b")
    seen = []
    resumed = train(cfg, synthetic_split, "cpu", on_epoch=lambda s: seen.append(s.epoch),
                    run_dir=tmp_path / "b")
    assert seen == [4, 5, 6]  # continued, did not start over
    assert [s.val_loss for s in resumed.history] == [s.val_loss for s in straight.history]
    for (k, a), b in zip(straight.model.state_dict().items(),
                         resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_best_checkpoint_reloads_the_best_epoch(synthetic_split, tmp_path):
    cfg = TrainConfig(hidden=[32], epochs=4, checkpoint_every=2)
    result = train(cfg, synthetic_split, "cpu", run_dir=tmp_path)
    file = ModelFile.load(result.checkpoint)
    model = file.build()
    assert file.epoch == result.best.epoch
    x = synthetic_split.x_val.float() / 255
    assert torch.equal(model(x).argmax(1), result.model(x).argmax(1))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(UnsafeFileError, match="refused"):
        load_tensors(path)
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_carrying_a_pickle(synthetic_split, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"model": Evil()}, run_dir / "last.pt")
    with pytest.raises(UnsafeFileError):
        train(TrainConfig(hidden=[8], epochs=2), synthetic_split, "cpu", run_dir=run_dir)
    assert not marker.exists()


def test_a_checkpoint_of_another_trial_is_never_resumed(synthetic_split, tmp_path, caplog):
    cfg = TrainConfig(hidden=[32], epochs=4, checkpoint_every=1, checkpoint_seconds=0,
                      device="cpu")
    old = {"study": "s", "stage": "a", "stage_uid": "first-store", "trial": "0",
           "settings": "aaaa"}

    def stop_at_2(stats):
        if stats.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, synthetic_split, "cpu", on_epoch=stop_at_2, run_dir=tmp_path, identity=old)
    assert (tmp_path / "last.pt").exists()
    # The stores were deleted and the study rerun: trial 0 now has other settings.
    new = {**old, "stage_uid": "second-store", "settings": "bbbb"}
    seen = []
    wider = cfg.model_copy(update={"hidden": [48]})  # would not even load the old weights
    result = train(wider, synthetic_split, "cpu", on_epoch=lambda s: seen.append(s.epoch),
                   run_dir=tmp_path, identity=new)
    assert seen == [1, 2, 3, 4]  # from the start, not from the leftover
    assert "a leftover checkpoint of another trial" in caplog.text and "removed" in caplog.text
    assert ModelFile.load(result.checkpoint).identity == new
    same = []
    train(wider, synthetic_split, "cpu", on_epoch=lambda s: same.append(s.epoch),
          run_dir=tmp_path, identity=new)
    assert same == [1, 2, 3, 4]  # a finished run leaves no resume file behind


@pytest.mark.parametrize("schedule", ["constant", "step", "cosine", "onecycle"])
def test_schedules_start_warm_and_end_where_they_say(schedule):
    from asl_sweep.training.optim import lr_factor

    cfg = TrainConfig(epochs=10, schedule=schedule, warmup_epochs=2)
    factors = [lr_factor(cfg, step, 5) for step in range(50)]
    assert all(0 < f <= 1.0 + 1e-9 for f in factors)
    if schedule == "constant":
        assert factors[0] == pytest.approx(0.1) and factors[9:] == [1.0] * 41
    if schedule == "step":
        assert factors[20] == 1.0 and factors[35] == pytest.approx(0.1)
        assert factors[45] == pytest.approx(0.01)
    if schedule == "cosine":
        assert factors[10] == pytest.approx(1.0) and factors[-1] < 0.01
    if schedule == "onecycle":
        assert factors[0] < 0.1 and max(factors) == pytest.approx(1.0, abs=0.02)
        assert factors[-1] < 0.01


def test_early_stopping_stops_and_keeps_the_best_epoch(synthetic_split):
    # A learning rate this small leaves validation accuracy flat: it stops after `patience`.
    cfg = TrainConfig(hidden=[32], epochs=40, lr=1e-7, device="cpu",
                      early_stop={"patience": 3})
    result = train(cfg, synthetic_split, "cpu")
    assert len(result.history) < 40
    assert result.best.epoch <= len(result.history) - 3
    best = max(result.history, key=lambda s: s.val_acc)
    assert result.best.val_acc == best.val_acc


def assert_resumes_exactly(cfg, split, run_dir, straight):
    """A run stopped at epoch 2 and run again ends with the uninterrupted run's numbers."""
    def crash_at_2(stats):
        if stats.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, split, "cpu", on_epoch=crash_at_2, run_dir=run_dir)
    resumed = train(cfg, split, "cpu", run_dir=run_dir)
    assert [s.val_loss for s in resumed.history] == [s.val_loss for s in straight.history]


def test_a_cnn_trains_and_a_scheduled_run_resumes_exactly(synthetic_split, tmp_path):
    cfg = TrainConfig(model="cnn", hidden=[16], epochs=4, checkpoint_every=1, device="cpu",
                      checkpoint_seconds=0,
                      cnn={"channels": [8, 16]}, schedule="cosine", warmup_epochs=1,
                      augment={"rotation": 10, "flip": True})
    straight = train(cfg, synthetic_split, "cpu", run_dir=tmp_path / "a")
    assert_resumes_exactly(cfg, synthetic_split, tmp_path / "b", straight)


EVERY_LEVER = {"crop_scale": 0.5, "translate": 0.1, "rotation": 10, "brightness": 0.3,
               "contrast": 0.3, "saturation": 0.3, "hue": 0.05, "erase": 0.3, "trivial": 0.5,
               "mixup": 0.2, "cutmix": 1.0}


def test_the_whole_toolbox_trains_and_resumes_exactly(synthetic_split, tmp_path):
    """Every augmentation, mixup and cutmix and label smoothing at once: the run learns, and
    one cut short resumes to the same numbers (every draw comes from the seeded generator)."""
    cfg = TrainConfig(model="cnn", hidden=[], epochs=4, checkpoint_every=1, device="cpu",
                      checkpoint_seconds=0, cnn={"channels": [8, 16]}, batch_size=16,
                      label_smoothing=0.1, augment=EVERY_LEVER)
    straight = train(cfg, synthetic_split, "cpu", run_dir=tmp_path / "a")
    assert all(torch.isfinite(torch.tensor(s.train_loss)) for s in straight.history)
    assert_resumes_exactly(cfg, synthetic_split, tmp_path / "b", straight)


def test_label_smoothing_and_mixup_keep_the_training_loss_off_zero(synthetic_split):
    """On 20 images an MLP fits the labels to near-zero loss; smoothed targets (their
    entropy is the floor) and mixed pairs cannot be fit that far."""
    tiny = synthetic_split.subset(20, seed=0)
    base = TrainConfig(hidden=[128, 64], lr=1e-3, batch_size=20, epochs=60, device="cpu")
    plain = train(base, tiny, "cpu").history[-1]
    smooth = train(base.model_copy(update={"label_smoothing": 0.2}), tiny, "cpu").history[-1]
    mixed = train(TrainConfig(**{**base.model_dump(), "augment": {"mixup": 1.0}}), tiny,
                  "cpu").history[-1]
    # The focal loss trains with it: the images learnt weigh next to nothing, so its loss
    # falls below the plain loss's on the same run.
    focal = train(base.model_copy(update={"focal_gamma": 2.0}), tiny, "cpu").history[-1]
    assert focal.train_acc == 1.0 and focal.train_loss < plain.train_loss / 10
    assert plain.train_loss < 0.05 and plain.train_acc == 1.0
    assert smooth.train_loss > 0.5 and smooth.train_acc == 1.0  # the floor: 0.84 nats
    assert mixed.train_loss > 0.2


def test_the_focal_loss_is_cross_entropy_at_zero_and_weighs_what_is_still_wrong():
    import math

    import torch.nn.functional as F

    torch.manual_seed(0)
    logits = torch.randn(16, 9)
    hard, soft = torch.randint(0, 9, (16,)), torch.softmax(torch.randn(16, 9), dim=1)
    for target in (hard, soft):  # class indices, and mixup's rows of class weights
        for smoothing in (0.0, 0.1):
            plain = F.cross_entropy(logits, target, label_smoothing=smoothing)
            assert training_loss(logits, target, smoothing) == plain
            assert torch.allclose(training_loss(logits, target, smoothing, 1e-9), plain)
    # Two images of letter 0, one learnt (p 0.9), one wrong (p 0.1): at gamma 2 each one's
    # cross-entropy is weighed by (1 - p)^2, 0.01 and 0.81.
    two = torch.log(torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    expected = -(0.01 * math.log(0.9) + 0.81 * math.log(0.1)) / 2
    assert training_loss(two, torch.tensor([0, 0]), gamma=2.0).item() == \
        pytest.approx(expected, rel=1e-5)


def test_person_scores_count_each_person_once():
    # Person 0: 4 of 4 right; person 1: 1 of 2; person 2: 0 of 1; person 3: 3 of 4.
    right = torch.tensor([1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0], dtype=torch.bool)
    people = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    mean, q25, worst = person_scores(right, people)
    assert mean == pytest.approx((1 + 0.5 + 0 + 0.75) / 4)
    assert q25 == pytest.approx(torch.quantile(torch.tensor([1, 0.5, 0, 0.75]), 0.25).item())
    assert worst == 0.0
    # No people: every figure is the pooled accuracy.
    assert person_scores(right, None) == pytest.approx((8 / 11,) * 3)


def test_metric_step_is_the_least_change_one_image_makes():
    """A race counts the rounding to the metric's step in the spread of paired differences:
    never more than what one image, right or wrong, really changes (else it would ask for
    more evidence than the data can show), and exactly that for the pooled and the
    person-mean accuracy."""
    right = torch.tensor([1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0], dtype=torch.bool)
    people = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 4])
    before = person_scores(right, people)
    changes: list[list[float]] = [[], [], []]
    for i in range(len(right)):
        flipped = right.clone()
        flipped[i] = ~flipped[i]
        for k, (a, b) in enumerate(zip(before, person_scores(flipped, people), strict=True)):
            if abs(a - b) > 1e-9:
                changes[k].append(abs(a - b))
    names = ("val_person_mean", "val_person_q25", "val_person_worst")
    for name, seen in zip(names, changes, strict=True):
        assert 0 < metric_step(name, len(right), people) <= min(seen) + 1e-9, name
    assert metric_step("val_person_mean", len(right), people) == pytest.approx(min(changes[0]))
    assert metric_step("val_acc", len(right), people) == pytest.approx(1 / 13)
    assert metric_step("val_person_mean", len(right), None) == pytest.approx(1 / 13)
    assert metric_step("val_loss", len(right), people) == 0.0
    assert metric_step("train_acc", len(right), people) == 0.0


def _epoch(n: int, full: float, *halves: float) -> EpochStats:
    return EpochStats(n, 0.0, 0.0, 0.0, full, 0.0, 0.0, val_halves=halves)


def test_crossfit_scores_each_half_at_the_epoch_the_other_half_chose():
    """The best epoch on all the images counts their luck (epoch 2's 0.80 here, where each
    half peaked at another epoch); cross-fitted, each half's choice is scored on the other
    half, and so for every split of the people into halves, averaged."""
    history = [_epoch(1, 0.70, 0.80, 0.60, 0.70, 0.70), _epoch(2, 0.80, 0.78, 0.82, 0.90, 0.70),
               _epoch(3, 0.70, 0.55, 0.85, 0.60, 0.80)]
    assert Monitor("val_acc").best(history).epoch == 2
    # Split 1: a picks epoch 1, scored on b 0.60; b picks epoch 3, scored on a 0.55.
    # Split 2: a picks epoch 2 (b 0.70); b picks epoch 3 (a 0.60).
    assert crossfit(history, Monitor("val_acc")) == pytest.approx(
        (0.60 + 0.55 + 0.70 + 0.60) / 4)
    # A loss is minimised: split 1 a picks 3 (b 0.85), b picks 1 (a 0.80); split 2 a picks
    # 3 (b 0.80), b picks 1 or 2, the first (a 0.70).
    assert crossfit(history, Monitor("val_loss", "minimize")) == pytest.approx(
        (0.85 + 0.80 + 0.80 + 0.70) / 4)
    # A history written before the halves were recorded has none: the race reads the value.
    assert crossfit([EpochStats(1, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0)], Monitor()) is None


def test_partitions_keep_each_person_whole_split_evenly_and_the_same_every_time():
    people = torch.tensor([7, 7, 3, 3, 3, 9, 1, 1, 5])
    second = partitions(5)
    assert second.shape == (PARTITIONS, 5)
    assert second[0].tolist() == [False, True, False, True, False]  # every other person
    assert all(int(row.sum()) == 2 for row in second)  # halves of 3 and 2 people
    assert len({tuple(row.tolist()) for row in second}) >= 5  # of the 10 there are
    assert torch.equal(second, partitions(5))  # paired configurations: the same splits
    right = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0], dtype=torch.bool)
    scores = half_scores("val_acc", torch.zeros(9), right, people)
    assert len(scores) == 2 * PARTITIONS
    codes = torch.unique(people, return_inverse=True)[1]  # 1 3 5 7 9 -> 0 1 2 3 4
    for k, row in enumerate(second):
        in_b = row[codes]  # each image in its person's half
        assert scores[2 * k] == pytest.approx(right[~in_b].float().mean().item())
        assert scores[2 * k + 1] == pytest.approx(right[in_b].float().mean().item())
    worst = half_scores("val_person_worst", torch.zeros(9), right, people)
    per = [right[people == p].float().mean().item() for p in (1, 3, 5, 7, 9)]
    assert worst[0] == pytest.approx(min(per[0], per[2], per[4]))
    assert half_scores("train_acc", torch.zeros(9), right, people) == ()


def test_crossfit_step_is_never_more_than_one_image_changes():
    """The race counts the rounding of the values it compares: one image changes some of
    the halves' scores, so the average of all of them by at least the step."""
    right = torch.tensor([1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0], dtype=torch.bool)
    people = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 4])
    for name in ("val_acc", "val_person_mean", "val_person_q25", "val_person_worst"):
        before = half_scores(name, torch.zeros(13), right, people)
        seen = []
        for i in range(len(right)):
            flipped = right.clone()
            flipped[i] = ~flipped[i]
            after = half_scores(name, torch.zeros(13), flipped, people)
            change = abs(sum(after) - sum(before)) / len(before)
            if change > 1e-9:
                seen.append(change)
        assert 0 < crossfit_step(name, len(right), people) <= min(seen) + 1e-6, name
    assert crossfit_step("val_loss", len(right), people) == 0.0


def test_every_epoch_reports_its_validation_people(synthetic_split):
    cfg = TrainConfig(model="mlp", hidden=[32], epochs=2, lr=1e-3, batch_size=64)
    result = train(cfg, synthetic_split, device="cpu")
    people = len(torch.unique(synthetic_split.val_people))
    assert people >= 2
    for s in result.history:
        assert 0 <= s.val_person_worst <= s.val_person_q25 <= s.val_person_mean <= 1
        # Each signer has as many images of each letter here: the person mean is pooled.
        assert s.val_person_mean == pytest.approx(s.val_acc, abs=0.05)
        # The stage's metric (val_acc by default) on both halves of every split of the
        # validation people: about half the images each, so each pair's mean is near the
        # whole split's.
        assert len(s.val_halves) == 2 * PARTITIONS
        assert (s.val_halves[0] + s.val_halves[1]) / 2 == pytest.approx(s.val_acc, abs=0.1)
    a = max(result.history, key=lambda s: s.val_halves[0])
    b = max(result.history, key=lambda s: s.val_halves[1])
    one_split = (a.val_halves[1] + b.val_halves[0]) / 2
    assert min(h.val_acc for h in result.history) - 0.1 <= one_split <= result.best.val_acc + 0.1
    assert result.crossfit is not None and result.crossfit <= result.best.val_acc + 0.1
    assert "val_halves" not in result.best.scores()


def test_an_ensemble_file_averages_its_members_probabilities(synthetic_split, tmp_path):
    from asl_sweep.models.registry import Deployable, Ensemble

    files = []
    for seed in (0, 1):
        cfg = TrainConfig(hidden=[16], epochs=2, lr=3e-3, seed=seed)
        files.append(ModelFile.load(train(cfg, synthetic_split, "cpu", run_dir=tmp_path / str(seed))
                                    .checkpoint))
    one = files[0]
    both = ModelFile(one.state, one.config, one.spec, one.classes, one.epoch, one.metrics,
                     one.identity, members=[f.state for f in files])
    loaded = ModelFile.load(both.save(tmp_path / "ensemble.pt"))  # weights_only, as any file
    model = loaded.build()
    assert isinstance(model, Ensemble) and len(model.members) == 2
    x = synthetic_split.x_val[:5]
    mean = torch.stack([Deployable(f.build(), 16)(x) for f in files]).mean(0)
    assert torch.allclose(Deployable(model, 16)(x), mean, atol=1e-6)
    assert not ModelFile.load(files[0].save(tmp_path / "single.pt")).members


def test_a_device_this_machine_lacks_is_one_line_before_anything_trains():
    with pytest.raises(ConfigError, match=r"^base.device cuda:99: this machine has .*; use auto "
                                          r"\(the best device here\) or cpu$"):
        resolve_device("cuda:99")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="base.device cuda: this machine has no CUDA"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="base.device mps: this machine has no Apple GPU"):
            resolve_device("mps")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", "CPU", ""])
def test_a_device_name_torch_does_not_know_is_refused_with_the_settings(name):
    with pytest.raises(ValidationError, match="is not a device: give auto, cpu, cuda, cuda:N "
                                              "or mps"):
        TrainConfig(device=name)
