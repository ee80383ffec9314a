"""The trainer: train(config, data, device, on_epoch) -> TrainResult.

It knows nothing of Optuna or MLflow: it talks outward through one per-epoch hook, which may
raise to stop the run (a pruned trial, a signal). Checkpoints are atomic and a run resumes
from its last one with the same result as an uninterrupted run."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asl_sweep.data.batches import FeatureBatches, ImageBatches
from asl_sweep.data.studydata import SplitData
from asl_sweep.models.features import frozen_features
from asl_sweep.models.layers import InputSpec
from asl_sweep.models.registry import build_model, check_fits, count_parameters
from asl_sweep.runtime import signals
from asl_sweep.runtime.errors import ConfigError
from asl_sweep.runtime.machine import total_memory
from asl_sweep.settings.config import TrainConfig
from asl_sweep.training.checkpoint import ModelFile
from asl_sweep.training.optim import lr_factor, make_optimizer
from asl_sweep.training.resume import CheckpointWriter, resume, resume_state

EVAL_BATCH = 256


@dataclass
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    images_per_s: float
    # Over the validation people (where the images have people; else equal to val_acc):
    # the mean of their accuracies, their 25th percentile, and the worst person's. Left out
    # (a history written before they were recorded): val_acc, as where there are no people.
    val_person_mean: float = float("nan")
    val_person_q25: float = float("nan")
    val_person_worst: float = float("nan")
    # The stage's metric on each half of the validation people, for each of the PARTITIONS
    # splits of them into two halves (`partitions`: a1, b1, a2, b2, ...): a race scores a
    # repeat at the epoch one half chose on the other half (`crossfit`). Empty where the
    # metric is not a validation metric, or the history was written before they were.
    val_halves: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("val_person_mean", "val_person_q25", "val_person_worst"):
            if math.isnan(getattr(self, name)):
                setattr(self, name, self.val_acc)

    def metric(self, name: str) -> float:
        return float(getattr(self, name))

    def scores(self) -> dict[str, float]:
        """The epoch's numbers as a trial's record keeps them (the halves left out)."""
        return {k: v for k, v in asdict(self).items() if k != "val_halves"}


@dataclass(frozen=True)
class Monitor:
    """Which epoch counts as best: the stage's metric and direction."""

    metric: str = "val_acc"
    direction: str = "maximize"

    def best(self, history: list[EpochStats]) -> EpochStats:
        pick = max if self.direction == "maximize" else min
        return pick(history, key=lambda s: s.metric(self.metric))

    def stalled(self, history: list[EpochStats], patience: int, min_delta: float) -> bool:
        """Whether the last `patience` epochs brought no improvement above `min_delta` over
        the best before them (early stopping)."""
        if len(history) <= patience:
            return False
        sign = 1 if self.direction == "maximize" else -1
        before = max(sign * s.metric(self.metric) for s in history[:-patience])
        recent = max(sign * s.metric(self.metric) for s in history[-patience:])
        return recent <= before + min_delta


@dataclass
class TrainResult:
    history: list[EpochStats]
    best: EpochStats
    model: nn.Module  # carrying the best epoch's weights, in eval mode
    spec: InputSpec
    num_params: int
    checkpoint: Path | None  # best.pt, when a run folder was given
    crossfit: float | None = None  # the best epoch's metric, cross-fitted (`crossfit`)


EpochHook = Callable[[EpochStats], None]


def resolve_device(name: str = "auto") -> torch.device:
    """The device `base.device` names, checked here: one a machine lacks (cuda on a laptop,
    cuda:1 on a one-GPU machine) is one line, not torch's RuntimeError from the first step."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if (device.index or 0) >= count:
                here = (f"{count} CUDA device{'s' if count > 1 else ''} (cuda:0"
                        f"{f' to cuda:{count - 1}' if count > 1 else ''})" if count
                        else "no CUDA device torch can use")
                raise ConfigError(f"base.device {name}: this machine has {here}; use auto "
                                  "(the best device here) or cpu")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                         and torch.backends.mps.is_available()):
            raise ConfigError(f"base.device {name}: this machine has no Apple GPU (MPS) torch "
                              "can use; use auto (the best device here) or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp32" or device.type != "cuda":
        return None
    return torch.float16 if cfg.precision == "fp16" else torch.bfloat16


def device_memory(device: torch.device) -> tuple[int | None, str]:
    """The memory a model on `device` trains in, and whose it is."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"the GPU {device}"
    return total_memory(), "this machine"


def input_spec(data: SplitData) -> InputSpec:
    """Per-channel pixel statistics of the training images, computed once."""
    x = data.x_train.float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return InputSpec(data.image_size, len(data.classes),
                     tuple(mean.tolist()), tuple(std.tolist()))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             amp: torch.dtype | None = None) -> tuple[float, float]:
    """Mean loss and accuracy of `model` on uint8 images (or float features) x."""
    losses, hits = _scored(model, x, y, amp)
    return _mean(losses), _mean(hits)


def _mean(values: torch.Tensor) -> float:
    return values.float().mean().item() if len(values) else 0.0


def _scored(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            amp: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image its loss and whether the prediction is right (on the device)."""
    model.eval()
    losses, hits = [], []
    with torch.inference_mode(), torch.autocast(x.device.type, amp, enabled=amp is not None):
        for start in range(0, len(y), EVAL_BATCH):
            xb = x[start:start + EVAL_BATCH]
            xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb
            logits = model(xb).float()
            yb = y[start:start + EVAL_BATCH]
            losses.append(F.cross_entropy(logits, yb, reduction="none"))
            hits.append(logits.argmax(1) == yb)
    if not hits:
        return torch.zeros(0, device=y.device), torch.zeros(0, dtype=torch.bool, device=y.device)
    return torch.cat(losses), torch.cat(hits)


def training_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0,
                  gamma: float = 0.0) -> torch.Tensor:
    """The mean training loss of a batch: cross-entropy against `target` (class indices, or
    a row of class weights from mixup or cutmix), its labels smoothed by `smoothing`; with
    `gamma` > 0 each class term weighed by (1 - p)^gamma (the focal loss, Lin et al. 2017),
    which is the plain cross-entropy at 0."""
    if gamma == 0.0:
        return F.cross_entropy(logits, target, label_smoothing=smoothing)
    classes = logits.shape[1]
    weights = target if target.dim() == 2 else F.one_hot(target, classes).to(logits.dtype)
    if smoothing:
        weights = weights * (1.0 - smoothing) + smoothing / classes
    log_p = F.log_softmax(logits, dim=1)
    return -(weights * (1.0 - log_p.exp()).pow(gamma) * log_p).sum(dim=1).mean()


def person_scores(right: torch.Tensor, people: torch.Tensor | None) -> tuple[float, float, float]:
    """(mean, 25th percentile, worst) of per-person accuracy: `right` says per image whether
    it was classified right, `people` its person as an integer code (None: every image is
    its own unit, so the three are the pooled accuracy)."""
    if people is None or len(right) == 0:
        acc = right.float().mean().item() if len(right) else 0.0
        return acc, acc, acc
    good, count = _unit_sums(right, people)
    per = (good / count).cpu()
    return per.mean().item(), torch.quantile(per, 0.25).item(), per.min().item()


def metric_step(metric: str, images: int, people: torch.Tensor | None) -> float:
    """The least change one validation image (of `images`; `people`: each one's person, as
    in person_scores) can make to a validation accuracy `metric`; 0 for a loss, whose values
    do not come in steps. The race counts the rounding to it in the spread of paired
    differences (search/racing.py)."""
    if not metric.startswith("val_") or metric.endswith("loss") or images == 0:
        return 0.0
    if people is None or metric == "val_acc":
        return 1.0 / images
    sizes = torch.bincount(torch.unique(people, return_inverse=True)[1])  # images a person
    most, count = int(sizes.max()), len(sizes)
    if metric == "val_person_mean":
        return 1.0 / (count * most)
    if metric == "val_person_q25":  # linear between the two people around the quarter
        where = 0.25 * (count - 1)
        share = where - math.floor(where)
        return (min(share, 1.0 - share) if share else 1.0) / most
    return 1.0 / most  # val_person_worst


PARTITIONS = 20  # splits of the validation people into two halves a cross-fit averages
PARTITION_SEED = 0  # the same splits for every configuration validated on the same people


def partitions(units: int, count: int = PARTITIONS) -> torch.Tensor:
    """count x units: for each split of the validation units (people, or images where the
    images have no people) into two halves, which units are in the second half. The first
    takes every other unit; the rest are random halvings from a fixed seed, so every
    configuration validated on the same people is split the same way (a race pairs them)."""
    first = torch.arange(units) % 2 == 1
    generator = torch.Generator().manual_seed(PARTITION_SEED)
    rest = [first[torch.randperm(units, generator=generator)] for _ in range(count - 1)]
    return torch.stack([first, *rest])


@lru_cache(maxsize=16)
def _halves(units: int) -> torch.Tensor:
    """(2 x PARTITIONS) x units: both halves of every split (`partitions`), a1, b1, a2, ...;
    built once for a validation split's size (every epoch of every training reads it)."""
    second = partitions(units)
    return torch.stack([~second, second], 1).reshape(-1, units)


def _units(n: int, people: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Each validation image's unit (its person, in the order of their codes; else itself)."""
    if people is None:
        return torch.arange(n), n
    inverse = torch.unique(people.cpu(), return_inverse=True)[1]
    return inverse, int(inverse.max()) + 1


def _unit_sums(values: torch.Tensor, people: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit (`_units`), on `values`' device: the sum of `values` (one per image) over
    its images, and how many images it has."""
    unit, count = _units(len(values), people)
    unit = unit.to(values.device)
    size = torch.zeros(count, device=values.device).index_add_(
        0, unit, torch.ones_like(values, dtype=torch.float32))
    total = torch.zeros(count, device=values.device).index_add_(0, unit, values.float())
    return total, size


def half_scores(metric: str, losses: torch.Tensor, right: torch.Tensor,
                people: torch.Tensor | None) -> tuple[float, ...]:
    """The validation metric `metric` on both halves of every split of the validation units
    (`partitions`), a1, b1, a2, b2, ...: from per-unit sums, so the splits cost little. Empty
    for a metric that is not scored on validation, or fewer than 2 units."""
    if not metric.startswith("val_") or len(right) < 2:
        return ()
    total, size = _unit_sums(losses if metric == "val_loss" else right, people)
    if len(size) < 2:
        return ()
    # Each person's accuracy, once, where the metric counts people (else pooled over a half).
    per_unit = None if metric in ("val_loss", "val_acc") or people is None else total / size
    out = []
    for half in _halves(len(size)).to(right.device):  # a1, b1, a2, ...
        if per_unit is None:
            out.append(total[half].sum() / size[half].sum())
        else:
            per = per_unit[half]
            out.append({"val_person_mean": per.mean(), "val_person_worst": per.min(),
                        "val_person_q25": torch.quantile(per, 0.25)}[metric])
    return tuple(torch.stack(out).tolist())


def crossfit(history: list[EpochStats], monitor: Monitor) -> float | None:
    """The stage's metric at the best epoch, with the choosing and the scoring on different
    people: for each split of the validation people into two halves, the epoch one half
    picks scored on the other, both ways; averaged over both ways and every split (one split
    alone gives the same value on average, with more spread). Picking the best of many
    epochs on the same images that score it counts the luck of a curve's highest point (the
    more a curve wavers, the more), so a configuration whose curve wavers more looks better
    than it is; a race on these values compares what each best checkpoint is worth on
    people it was not chosen on (benchmarks/best_epoch.py). None where the halves were not
    recorded."""
    if not history or any(len(s.val_halves) != len(history[0].val_halves) or
                          not s.val_halves for s in history):
        return None
    pick = max if monitor.direction == "maximize" else min
    values = []
    for a in range(0, len(history[0].val_halves), 2):
        by_a = pick(history, key=lambda s: s.val_halves[a])
        by_b = pick(history, key=lambda s: s.val_halves[a + 1])
        values += [by_a.val_halves[a + 1], by_b.val_halves[a]]
    return sum(values) / len(values)


def crossfit_step(metric: str, images: int, people: torch.Tensor | None) -> float:
    """The least change one validation image makes to `crossfit`'s value, taken the safe
    way: the finest step of any half (metric_step over its images), over the number of
    values averaged (an image may count in one of them only); 0 for a loss."""
    if not metric.startswith("val_") or images < 2:
        return metric_step(metric, images, people)
    unit, count = _units(images, people)
    if count < 2:
        return metric_step(metric, images, people)
    steps = []
    for half in _halves(count):
        mask = half[unit]
        steps.append(metric_step(metric, int(mask.sum()),
                                 None if people is None else people.cpu()[mask]))
    return min(steps) / len(steps)


def train(cfg: TrainConfig, data: SplitData, device: torch.device | str | None = None,
          on_epoch: EpochHook | None = None, run_dir: Path | None = None,
          monitor: Monitor = Monitor(), cache_dir: Path | None = None,
          identity: dict[str, str] | None = None,
          on_resume_point: Callable[[Path, Path], None] | None = None) -> TrainResult:
    """cache_dir: where frozen-backbone features are cached (None: computed, not kept).
    identity: what the checkpoints in run_dir belong to (study, stage, trial, settings); a
    checkpoint written for anything else is removed, never resumed from. on_resume_point:
    called with (best.pt, last.pt) after each resume point is written, on the writer's
    thread (to keep a copy where another machine can resume from it)."""
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    amp = autocast_dtype(cfg, device)
    identity = dict(identity or {})
    torch.manual_seed(cfg.seed)
    spec = input_spec(data)
    check_fits(cfg, spec, *device_memory(device))
    model = build_model(cfg, spec).to(device)
    if getattr(model, "frozen", False):
        # Frozen backbone: features once (or from the cache), then only the head trains.
        features = frozen_features(model, cfg, data, device, cache_dir, amp)
        trained, x_val = model.head, features.val
        batches = FeatureBatches(features.train, data.y_train, cfg, len(data.classes))
    elif cfg.caches_prefix:
        # Fine-tuning: the frozen prefix once per image and view (or from the cache), then
        # each step runs only the fine-tuned blocks and the head.
        from asl_sweep.models.backbones import Suffix  # torchvision: loaded where used

        features = frozen_features(model, cfg, data, device, cache_dir, amp, prefix=True)
        trained, x_val = Suffix(model), features.val
        batches = FeatureBatches(features.train, data.y_train, cfg, len(data.classes))
    else:
        trained, x_val = model, data.x_val
        batches = ImageBatches(data.x_train, data.y_train, cfg, len(data.classes))
    optimizer = make_optimizer(cfg, trained)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    history: list[EpochStats] = []
    best_state: dict | None = None

    last_path = run_dir / "last.pt" if run_dir else None
    best_path = run_dir / "best.pt" if run_dir else None
    if last_path is not None and last_path.exists():
        resumed = resume(last_path, best_path, identity, model, optimizer, scaler, generator,
                         device)
        if resumed is not None:
            history = [EpochStats(**s) for s in resumed[0]]
            best_state = resumed[1]

    steps_per_epoch = math.ceil(len(batches) / cfg.batch_size)
    scheduled = cfg.schedule != "constant" or cfg.warmup_epochs > 0
    early = cfg.early_stop
    if early is not None and monitor.stalled(history, early.patience, early.min_delta):
        return _finish(model, history, best_state, monitor, spec, best_path)  # stopped earlier
    writer = CheckpointWriter()
    last_resume_point = time.monotonic()
    try:
        for epoch in range(len(history) + 1, cfg.epochs + 1):
            started = time.perf_counter()
            trained.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = 0
            for step, (xb, yb, target) in enumerate(batches.epoch(generator),
                                            start=(epoch - 1) * steps_per_epoch):
                signals.check()  # Ctrl-C / SIGTERM: stop here, between two steps
                if scheduled:
                    factor = lr_factor(cfg, step, steps_per_epoch)
                    for group in optimizer.param_groups:
                        group["lr"] = group["initial_lr"] * factor
                with torch.autocast(device.type, amp, enabled=amp is not None):
                    logits = trained(xb)
                loss = training_loss(logits.float(), target, cfg.label_smoothing,
                                     cfg.focal_gamma)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                # Accumulate on the device: no host sync per step.
                loss_sum += loss.detach() * len(yb)
                correct += (logits.detach().argmax(1) == yb).sum()
                seen += len(yb)
            train_seconds = time.perf_counter() - started
            losses, right = _scored(trained, x_val, data.y_val, amp)
            val_loss, val_acc = _mean(losses), _mean(right)
            people = person_scores(right, data.val_people)
            half = half_scores(monitor.metric, losses, right, data.val_people)
            train_loss = loss_sum.item() / seen
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss {train_loss})")
            stats = EpochStats(epoch, train_loss, correct.item() / seen, val_loss, val_acc,
                               time.perf_counter() - started, seen / train_seconds, *people,
                               half)
            history.append(stats)
            if monitor.best(history) is stats:
                best_state = {k: v.detach().to("cpu", copy=True)
                              for k, v in model.state_dict().items()}
            stop = early is not None and monitor.stalled(history, early.patience, early.min_delta)
            final = stop or epoch == cfg.epochs
            # A resume point every `checkpoint_every` epochs, but not more often than every
            # `checkpoint_seconds`: a short trial is cheaper to rerun than to checkpoint.
            due = (epoch % cfg.checkpoint_every == 0
                   and time.monotonic() - last_resume_point >= cfg.checkpoint_seconds)
            if run_dir is not None and (due or final):
                best_file = ModelFile(best_state, cfg, spec, list(data.classes),
                                      monitor.best(history).epoch,
                                      monitor.best(history).scores(), identity)
                if final:  # the result: written now, and fsynced
                    writer.wait()
                    best_file.save(best_path, sync=True)
                    last_path.unlink(missing_ok=True)  # nothing is left to resume
                else:
                    # A resume point, written on the writer's thread while training goes on, from
                    # a snapshot of this epoch. best.pt first: a crash between the two leaves a
                    # best that a replay reproduces. Not fsynced: one cut short by a power cut is
                    # found damaged and training restarts.
                    point = resume_state(identity, model, optimizer, scaler, generator,
                                         history)
                    def write(b=best_file, r=point) -> None:
                        b.save(best_path, sync=False)
                        r.save(last_path, sync=False)
                        if on_resume_point is not None:
                            on_resume_point(best_path, last_path)

                    writer.submit(write)
                    last_resume_point = time.monotonic()
            if on_epoch is not None:
                on_epoch(stats)
            if stop:
                break
    finally:
        writer.close()  # a pending resume point is written (or its error raised) first
    return _finish(model, history, best_state, monitor, spec, best_path)


def _finish(model, history, best_state, monitor, spec, best_path) -> TrainResult:
    """The best epoch's weights restored (also after early stopping)."""
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(history, monitor.best(history), model, spec, count_parameters(model),
                       best_path, crossfit(history, monitor))


