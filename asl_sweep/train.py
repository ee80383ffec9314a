"""The trainer: train(config, data, device, on_epoch) -> TrainResult.

It knows nothing of Optuna or MLflow: it talks outward through one per-epoch hook, which may
raise to stop the run (a pruned trial, a signal). Checkpoints are atomic and a run resumes
from its last one with the same result as an uninterrupted run."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asl_sweep import signals
from asl_sweep.augment import augment_batch
from asl_sweep.checkpoint import ModelFile, ResumeState
from asl_sweep.config import TrainConfig
from asl_sweep.errors import ModelFileError, UnsafeFileError
from asl_sweep.features import frozen_features
from asl_sweep.layers import InputSpec
from asl_sweep.models import build_model, count_parameters
from asl_sweep.studydata import SplitData

EVAL_BATCH = 256
log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    images_per_s: float

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


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


EpochHook = Callable[[EpochStats], None]


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp32" or device.type != "cuda":
        return None
    return torch.float16 if cfg.precision == "fp16" else torch.bfloat16


def input_spec(data: SplitData) -> InputSpec:
    """Per-channel pixel statistics of the training images, computed once."""
    x = data.x_train.float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return InputSpec(data.image_size, len(data.classes),
                     tuple(mean.tolist()), tuple(std.tolist()))


def make_optimizer(cfg: TrainConfig, module: nn.Module) -> torch.optim.Optimizer:
    """One optimizer over the module's trainable parameters, in the module's own parameter
    groups where it has them (a fine-tuned backbone learns slower than its head). The fused
    update (one pass over each parameter tensor instead of several) halves the step of the
    memory-bound MLP; where a device lacks it, the plain update is used."""
    if hasattr(module, "param_groups"):
        groups = module.param_groups(cfg)
    else:
        groups = [{"params": [p for p in module.parameters() if p.requires_grad], "lr": cfg.lr}]
    for group in groups:
        group["initial_lr"] = group["lr"]  # what the schedule scales
    kinds = {"sgd": (torch.optim.SGD, {"momentum": cfg.momentum}),
             "adam": (torch.optim.Adam, {}), "adamw": (torch.optim.AdamW, {})}
    kind, extra = kinds[cfg.optimizer]
    try:
        return kind(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, **extra)
    except (RuntimeError, TypeError, ValueError):
        return kind(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the learning rate at optimizer step `step` (0-based): a
    pure function of the step, so a resumed run continues the same curve."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total - 1, cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        warm = warm or int(0.3 * total)
        if step < warm:
            return 0.04 + 0.96 * step / warm
        progress = (step - warm) / max(1, total - warm)
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "step":
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    return 1.0


def epoch_order(n: int, copies: int, generator: torch.Generator) -> torch.Tensor:
    """Every sample index `copies` times, shuffled."""
    return torch.randperm(n * copies, generator=generator) % n


class ImageBatches:
    """Batches cut from uint8 tensors on the device; `copies` augmented views per epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig):
        self.x, self.y, self.cfg = x, y, cfg

    def __len__(self) -> int:
        return len(self.y) * self.cfg.augment.copies

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(len(self.y), self.cfg.augment.copies, generator)
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size].to(self.x.device)
            xb = self.x[idx].float().div_(255)
            if self.cfg.augment.transforms:
                xb = augment_batch(xb, self.cfg.augment, generator)
            yield xb, self.y[idx]


class FeatureBatches:
    """Batches of cached frozen-backbone features; each sample draws one of its views."""

    def __init__(self, views: torch.Tensor, y: torch.Tensor, cfg: TrainConfig):
        self.views, self.y, self.cfg = views, y, cfg

    def __len__(self) -> int:
        return len(self.y) * self.cfg.augment.copies

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        k = self.views.shape[0]
        order = epoch_order(len(self.y), self.cfg.augment.copies, generator)
        which = torch.randint(k, (len(order),), generator=generator) if k > 1 else None
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size].to(self.views.device)
            view = 0 if which is None else which[start:start + self.cfg.batch_size].to(idx.device)
            yield self.views[view, idx], self.y[idx]


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             amp: torch.dtype | None = None) -> tuple[float, float]:
    """Mean loss and accuracy of `model` on uint8 images (or float features) x."""
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.inference_mode(), torch.autocast(x.device.type, amp, enabled=amp is not None):
        for start in range(0, len(y), EVAL_BATCH):
            xb = x[start:start + EVAL_BATCH]
            xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb
            logits = model(xb).float()
            yb = y[start:start + EVAL_BATCH]
            total_loss += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
    return total_loss / max(1, len(y)), correct / max(1, len(y))


def train(cfg: TrainConfig, data: SplitData, device: torch.device | str | None = None,
          on_epoch: EpochHook | None = None, run_dir: Path | None = None,
          monitor: Monitor = Monitor(), cache_dir: Path | None = None,
          identity: dict[str, str] | None = None) -> TrainResult:
    """cache_dir: where frozen-backbone features are cached (None: computed, not kept).
    identity: what the checkpoints in run_dir belong to (study, stage, trial, settings); a
    checkpoint written for anything else is removed, never resumed from."""
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    amp = autocast_dtype(cfg, device)
    identity = dict(identity or {})
    torch.manual_seed(cfg.seed)
    spec = input_spec(data)
    model = build_model(cfg, spec).to(device)
    if getattr(model, "frozen", False):
        # Frozen backbone: features once (or from the cache), then only the head trains.
        features = frozen_features(model, cfg, data, device, cache_dir, amp)
        trained, x_val = model.head, features.val
        batches = FeatureBatches(features.train, data.y_train, cfg)
    else:
        trained, x_val = model, data.x_val
        batches = ImageBatches(data.x_train, data.y_train, cfg)
    optimizer = make_optimizer(cfg, trained)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    history: list[EpochStats] = []
    best_state: dict | None = None

    last_path = run_dir / "last.pt" if run_dir else None
    best_path = run_dir / "best.pt" if run_dir else None
    if last_path is not None and last_path.exists():
        resumed = _resume(last_path, best_path, identity, model, optimizer, scaler, generator,
                          device)
        if resumed is not None:
            history, best_state = resumed

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
            for step, (xb, yb) in enumerate(batches.epoch(generator),
                                            start=(epoch - 1) * steps_per_epoch):
                signals.check()  # Ctrl-C / SIGTERM: stop here, between two steps
                if scheduled:
                    factor = lr_factor(cfg, step, steps_per_epoch)
                    for group in optimizer.param_groups:
                        group["lr"] = group["initial_lr"] * factor
                with torch.autocast(device.type, amp, enabled=amp is not None):
                    logits = trained(xb)
                loss = F.cross_entropy(logits.float(), yb)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                # Accumulate on the device: no host sync per step.
                loss_sum += loss.detach() * len(yb)
                correct += (logits.detach().argmax(1) == yb).sum()
                seen += len(yb)
            train_seconds = time.perf_counter() - started
            val_loss, val_acc = evaluate(trained, x_val, data.y_val, amp)
            train_loss = loss_sum.item() / seen
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss {train_loss})")
            stats = EpochStats(epoch, train_loss, correct.item() / seen, val_loss, val_acc,
                               time.perf_counter() - started, seen / train_seconds)
            history.append(stats)
            if monitor.best(history) is stats:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            stop = early is not None and monitor.stalled(history, early.patience, early.min_delta)
            final = stop or epoch == cfg.epochs
            # A resume point every `checkpoint_every` epochs, but not more often than every
            # `checkpoint_seconds`: a short trial is cheaper to rerun than to checkpoint.
            due = (epoch % cfg.checkpoint_every == 0
                   and time.monotonic() - last_resume_point >= cfg.checkpoint_seconds)
            if run_dir is not None and (due or final):
                best_file = ModelFile(best_state, cfg, spec, list(data.classes),
                                      monitor.best(history).epoch,
                                      asdict(monitor.best(history)), identity)
                if final:  # the result: written now, and fsynced
                    writer.wait()
                    best_file.save(best_path, sync=True)
                    last_path.unlink(missing_ok=True)  # nothing is left to resume
                else:
                    # A resume point, written on the writer's thread while training goes on, from
                    # a snapshot of this epoch. best.pt first: a crash between the two leaves a
                    # best that a replay reproduces. Not fsynced: one cut short by a power cut is
                    # found damaged and training restarts.
                    resume = _resume_state(identity, model, optimizer, scaler, generator,
                                           history)
                    writer.submit(lambda b=best_file, r=resume: (b.save(best_path, sync=False),
                                                                 r.save(last_path, sync=False)))
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
                       best_path)


class CheckpointWriter:
    """Writes resume points on a thread of its own, one at a time and in order, so that the
    training loop does not wait for the disk; an error of a write surfaces at the next
    checkpoint or at the end."""

    def __init__(self):
        self.pool: ThreadPoolExecutor | None = None
        self.pending: Future | None = None

    def submit(self, write: Callable[[], object]) -> None:
        self.wait()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self.pending = self.pool.submit(write)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown()


def _snapshot(tree):
    """A copy of the tensors in a (nested) state dict: training goes on changing them."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: _snapshot(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_snapshot(v) for v in tree)
    return tree


def _resume_state(identity, model, optimizer, scaler, generator, history) -> ResumeState:
    """Everything a resumed run needs, copied as it is at this epoch."""
    return ResumeState(
        identity=identity, model=_snapshot(model.state_dict()),
        optimizer=_snapshot(optimizer.state_dict()),
        history=[asdict(s) for s in history], rng_torch=torch.get_rng_state(),
        rng_cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        generator=generator.get_state(), scaler=scaler.state_dict())


def _resume(last_path: Path, best_path: Path, identity: dict[str, str], model, optimizer,
            scaler, generator, device) -> tuple[list[EpochStats], dict] | None:
    """Continue from last.pt when it belongs to this run; otherwise remove it (and best.pt)
    and start over. A file that needs pickle to load is refused, never removed silently."""
    try:
        state = ResumeState.load(last_path, map_location=device)
    except UnsafeFileError:
        raise
    except ModelFileError as e:  # cut short by a crash: resume points are not fsynced
        log.warning("%s; removed, training from the start", e)
        last_path.unlink(missing_ok=True)
        return None
    if state.identity != identity:
        log.warning("%s: a leftover checkpoint of another trial (%s), not this one (%s); "
                    "removed, training from the start", last_path.parent,
                    _describe(state.identity), _describe(identity))
        last_path.unlink(missing_ok=True)
        best_path.unlink(missing_ok=True)
        return None
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    if state.scaler:
        scaler.load_state_dict(state.scaler)
    torch.set_rng_state(state.rng_torch.cpu())
    if state.rng_cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state.rng_cuda])
    generator.set_state(state.generator.cpu())
    history = [EpochStats(**s) for s in state.history]
    best_state = None
    if best_path.exists():
        try:
            best = ModelFile.load(best_path)
        except ModelFileError:  # damaged: the replay of later epochs finds the best again
            best = None
        if best is not None and best.identity == identity and best.epoch <= len(history):
            best_state = best.state
    if best_state is None:  # the replay of later epochs will find the best again
        best_state = copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})
    return history, best_state


def _describe(identity: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in identity.items()) or "no identity"
