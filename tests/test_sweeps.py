"""Every shipped study runs through the real command line, end to end, with the trainer
swapped for a fast fake that returns real TrainResults and writes real model files (the way
litgpt runs every shipped config): the YAML, its stages, gates, seeds and fixed settings,
the stores, status and report are all real; only the arithmetic of training is skipped."""

import hashlib
from pathlib import Path

import pytest
import torch

import asl_sweep.search.trial
from asl_sweep.cli import main
from asl_sweep.models.layers import InputSpec
from asl_sweep.models.registry import build_model, count_parameters
from asl_sweep.training.checkpoint import ModelFile
from asl_sweep.training.train import EpochStats, Monitor, TrainResult

SWEEPS = sorted((Path(__file__).parent.parent / "sweeps").glob("*.yaml"))


def fake_train(cfg, data, device=None, on_epoch=None, run_dir=None, monitor=None,
               cache_dir=None, identity=None, on_resume_point=None):
    """Curves that depend on the settings (so the search has something to find), reported
    epoch by epoch like the real trainer; the model is real and untrained."""
    monitor = monitor or Monitor()
    digest = int(hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:8], 16)
    quality = 0.3 + 0.6 * (digest % 1000) / 1000
    history = []
    for epoch in range(1, cfg.epochs + 1):
        frac = epoch / cfg.epochs
        stats = EpochStats(epoch, train_loss=2.0 * (1 - frac) + 0.01, train_acc=min(1.0, 2 * frac),
                           val_loss=2.0 - quality * frac, val_acc=quality * frac, seconds=0.001,
                           images_per_s=1000.0)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    spec = InputSpec(data.image_size, len(data.classes), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = build_model(cfg, spec, pretrained=False).eval()
    best = monitor.best(history)
    checkpoint = None
    if run_dir is not None:
        checkpoint = ModelFile({k: v.detach().clone() for k, v in model.state_dict().items()},
                               cfg, spec, list(data.classes), best.epoch, vars(best),
                               dict(identity or {})).save(Path(run_dir) / "best.pt", sync=False)
    return TrainResult(history, best, model, spec, count_parameters(model), checkpoint)


# The student's 5000-unit MLP is 60 MB a checkpoint even at 32 px, written once per fake
# trial: searched here among sizes that write fast (the rest of the YAML as shipped).
SMALLER = {"student.yaml": ["--set", "stages.0.space.hidden=[[500, 50], [50, 20]]"]}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_study_runs_through_the_cli(path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(asl_sweep.search.trial, "train", fake_train)
    home = str(tmp_path / "mlruns")
    # Fewer, smaller synthetic images: the report runs the real (untrained) models over them.
    small = ["--set", "data.synthetic.per_class=24", "--set", "data.image_size=32",
             *SMALLER.get(path.name, [])]
    assert main(["run", str(path), "--home", home, "--trials", "2", "--epochs", "3", *small]) == 0
    out = capsys.readouterr().out
    assert "; carries " in out and out.count("final test accuracy") == 1, out  # each line once
    assert main(["status", str(path), "--home", home, *small]) == 0
    status = capsys.readouterr().out
    assert "not started" not in status and "in progress" not in status, status
    assert main(["report", str(path), "--home", home, "--out", str(tmp_path / "report"),
                 *small]) == 0
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
