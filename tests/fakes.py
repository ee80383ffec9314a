"""A trainer of milliseconds with the real one's contract (epochs reported one by one to
`on_epoch`, a real model file, a TrainResult), for the tests that run whole studies and the
fleet benchmark: what they measure is the search, the stores and the workers, not training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from asl_sweep.models.layers import InputSpec
from asl_sweep.models.registry import build_model, count_parameters
from asl_sweep.training.checkpoint import ModelFile
from asl_sweep.training.train import EpochStats, Monitor, TrainResult


def fake_trainer(quality: Callable) -> Callable:
    """A `train` whose validation accuracy climbs to `quality(cfg)` (so the search has
    something to find); the model is real and untrained."""

    def train(cfg, data, device=None, on_epoch=None, run_dir=None, monitor=None,
              cache_dir=None, identity=None, on_resume_point=None):
        monitor = monitor or Monitor()
        q, history = quality(cfg), []
        for epoch in range(1, cfg.epochs + 1):
            frac = epoch / cfg.epochs
            stats = EpochStats(epoch, train_loss=2.0 * (1 - frac) + 0.01,
                               train_acc=min(1.0, 2 * frac), val_loss=2.0 - q * frac,
                               val_acc=q * frac, seconds=0.001, images_per_s=1000.0)
            history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
        spec = InputSpec(data.image_size, len(data.classes), (0.5,) * 3, (0.25,) * 3)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, spec, pretrained=False).eval()
        best = monitor.best(history)
        checkpoint = None
        if run_dir is not None:
            checkpoint = ModelFile(
                {k: v.detach().clone() for k, v in model.state_dict().items()}, cfg, spec,
                list(data.classes), best.epoch, vars(best), dict(identity or {}),
            ).save(Path(run_dir) / "best.pt", sync=False)
        return TrainResult(history, best, model, spec, count_parameters(model), checkpoint)

    return train
