"""Resuming a run exactly: resume points (model, optimizer, epoch history, every random
state), written on a thread of their own from a snapshot so training does not wait for the
disk, and read back only for the trial they belong to."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from asl_sweep.runtime.errors import ModelFileError, UnsafeFileError
from asl_sweep.training.checkpoint import ModelFile, ResumeState

log = logging.getLogger(__name__)


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


def snapshot(tree):
    """A copy of the tensors in a (nested) state dict: training goes on changing them."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: snapshot(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(snapshot(v) for v in tree)
    return tree


def resume_state(identity, model, optimizer, scaler, generator, history) -> ResumeState:
    """Everything a resumed run needs, copied as it is at this epoch."""
    return ResumeState(
        identity=identity, model=snapshot(model.state_dict()),
        optimizer=snapshot(optimizer.state_dict()),
        history=[asdict(s) for s in history], rng_torch=torch.get_rng_state(),
        rng_cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        generator=generator.get_state(), scaler=scaler.state_dict())


def resume(last_path: Path, best_path: Path, identity: dict[str, str], model, optimizer,
           scaler, generator, device) -> tuple[list[dict], dict] | None:
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
    history = list(state.history)
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
