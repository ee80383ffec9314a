"""The same search two ways, side by side: asl-sweep, and Optuna + optuna-integration's
MLflowCallback + torchvision ImageFolder/DataLoader written the way their docs show it.

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python -m benchmarks.peer [--data PATH]

6 trainings x 10 epochs of a 64 px MLP (12288 -> h -> 50 -> 9, SGD with momentum, batch 32),
random sampler, per-epoch metrics in MLflow, 70/15/15 split of the photos. asl-sweep's six
are its incumbent and 5 sampled trials; both start from an empty store and no decoded cache."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.study import run_study
from asl_sweep.settings.spec import StudyConfig
from benchmarks.common import ASL, shown, write_result

TRIALS, EPOCHS = 6, 10
SPACE_HIDDEN = [250, 500, 1000]


def ours(root: Path, home: Path) -> float:
    spec = {"study": "peer", "data": {"root": str(root), "image_size": 64},
            "base": {"hidden": [500, 50], "optimizer": "sgd", "momentum": 0.9, "lr": 0.01,
                     "batch_size": 32, "epochs": EPOCHS, "device": "cpu"},
            "stages": [{"name": "s", "trials": TRIALS - 1, "sampler": "random",
                        "pruner": "none", "confirm": None,
                        "space": {"hidden": [[h, 50] for h in SPACE_HIDDEN],
                                  "lr": {"low": 1e-3, "high": 1e-1, "log": True}}}]}
    started = time.perf_counter()
    run_study(StudyConfig.model_validate(spec), Workspace.at(home), log=lambda _: None,
              score=False)
    return time.perf_counter() - started


def peer(root: Path, home: Path) -> float:
    """As the Optuna and MLflow documentation show it."""
    import mlflow
    import optuna
    import torchvision.transforms as T
    from optuna_integration.mlflow import MLflowCallback
    from torch.utils.data import DataLoader, random_split
    from torchvision.datasets import ImageFolder

    started = time.perf_counter()
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    transform = T.Compose([T.Resize((64, 64)), T.ToTensor(),
                           T.Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])])
    dataset = ImageFolder(str(root), transform=transform)
    n = len(dataset)
    train_set, val_set, _ = random_split(dataset, [n - 2 * round(0.15 * n), round(0.15 * n),
                                                   round(0.15 * n)],
                                         generator=torch.Generator().manual_seed(0))
    mlflc = MLflowCallback(tracking_uri=tracking, metric_name="val_acc")

    @mlflc.track_in_mlflow()
    def objective(trial: optuna.Trial) -> float:
        hidden = trial.suggest_categorical("hidden", SPACE_HIDDEN)
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, hidden), nn.ReLU(),
                              nn.Linear(hidden, 50), nn.ReLU(), nn.Linear(50, 9))
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        train_loader = DataLoader(train_set, batch_size=32, shuffle=True, num_workers=2)
        val_loader = DataLoader(val_set, batch_size=256, num_workers=2)
        val_acc = 0.0
        for epoch in range(EPOCHS):
            model.train()
            for x, y in train_loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
            model.eval()
            correct = total = 0
            with torch.no_grad():
                for x, y in val_loader:
                    correct += (model(x).argmax(1) == y).sum().item()
                    total += len(y)
            val_acc = correct / total
            mlflow.log_metrics({"train_loss": loss.item(), "val_acc": val_acc}, step=epoch)
            trial.report(val_acc, epoch)
        return val_acc

    study = optuna.create_study(direction="maximize", study_name="peer",
                                storage=f"sqlite:///{home / 'optuna.db'}",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=TRIALS, callbacks=[mlflc])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ASL)
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        mine = ours(args.data, Path(tmp) / "ours")
        theirs = peer(args.data, Path(tmp) / "peer")
    result = {"data": shown(args.data), "trials": TRIALS, "epochs": EPOCHS,
              "asl_sweep_s": round(mine, 1), "optuna_mlflowcallback_dataloader_s": round(theirs, 1),
              "ratio": round(theirs / mine, 2)}
    print(result)
    print(f"written to {write_result('peer', result)}")


if __name__ == "__main__":
    main()
