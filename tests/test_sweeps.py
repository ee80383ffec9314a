"""Every shipped study runs through the real command line, end to end, with the trainer
swapped for a fast fake that returns real TrainResults and writes real model files (the way
litgpt runs every shipped config): the YAML, its stages, gates, seeds and fixed settings,
the stores, status and report are all real; only the arithmetic of training is skipped."""

import hashlib
from pathlib import Path

import pytest

import asl_sweep.search.trial
from asl_sweep.cli import main
from tests.fakes import fake_trainer

SWEEPS = sorted((Path(__file__).parent.parent / "sweeps").glob("*.yaml"))


def _quality(cfg) -> float:
    """Settings' own score, from their digest: the search has something to find."""
    digest = int(hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:8], 16)
    return 0.3 + 0.6 * (digest % 1000) / 1000


fake_train = fake_trainer(_quality)


# The student's 5000-unit MLP is 60 MB a checkpoint even at 32 px, written once per fake
# trial: searched here among sizes that write fast (the rest of the YAML as shipped).
SMALLER = {"student.yaml": ["--set", "stages.0.space.hidden=[[500, 50], [50, 20]]"],
           # Choosing test-time views runs MobileNetV2 at 224 px on six views of every
           # repeat's validation images (100 s of this test on 2 cores); the views are
           # tested in tests/models/test_views.py and every export form in test_export.
           # Half the images too: MobileNetV2 sees every one at 224 px, whatever the size
           # (27 s -> 20 s).
           "transfer.yaml": ["--set", "tta=off", "--set", "data.synthetic.per_class=12"]}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_study_runs_through_the_cli(path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(asl_sweep.search.trial, "train", fake_train)
    home = str(tmp_path / "mlruns")
    # Fewer, smaller synthetic images: the report runs the real (untrained) models over them.
    small = ["--set", "data.synthetic.per_class=24", "--set", "data.image_size=32",
             *SMALLER.get(path.name, [])]
    # Its plan first, as shipped: every stage planned, nothing recorded.
    assert main(["run", str(path), "--home", home, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert plan.count("\n  trainings: ") == plan.count("\nstage ") > 0 and "in all: " in plan
    assert not (tmp_path / "mlruns").exists()
    assert main(["run", str(path), "--home", home, "--trials", "2", "--epochs", "3", *small]) == 0
    out = capsys.readouterr().out
    assert "; carries " in out and out.count("final test accuracy") == 1, out  # each line once
    assert main(["status", str(path), "--home", home, *small]) == 0
    status = capsys.readouterr().out
    assert "not started" not in status and "in progress" not in status, status
    assert main(["report", str(path), "--home", home, "--out", str(tmp_path / "report"),
                 *small]) == 0
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
