"""Speed, side by side with the plain way, on the real photos:

    .venv/bin/python -m benchmarks.suite [--data PATH] [--per-class N] [--repeats 3] [--cases abcdgs]

a) a trainer epoch vs a plain PyTorch loop (ImageFolder + PIL transforms + DataLoader), at 64
   and 224 px, with and without augmentation; b) the decoded cache vs decoding again;
c) batched on-device augmentation vs PIL per image, and torchvision.transforms.v2 on the
   batch, at 64 and 224 px; d) a 10-epoch trial inside a sweep (Optuna, MLflow, checkpoints)
   vs the same training alone; g) that training vs its compute bound (counted FLOPs over the
   measured matrix-product peak); n) a 64 px CNN epoch vs the same network in a plain loop;
   s) start-up: `asl-sweep --help`, and `run` to its first trial. Writes benchmarks/results/suite.json; benchmarks/report.py makes BENCHMARKS.md."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.v2 as T2
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from asl_sweep.data.augment import augment_batch
from asl_sweep.data.images import load_image_set
from asl_sweep.data.studydata import SplitData
from asl_sweep.models.layers import InputSpec
from asl_sweep.models.registry import build_model
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.study import run_study
from asl_sweep.settings.config import AugmentConfig, TrainConfig
from asl_sweep.settings.spec import StudyConfig
from asl_sweep.training.optim import make_optimizer
from asl_sweep.training.train import input_spec, train
from benchmarks.common import (
    ASL,
    matmul_peak,
    median_time,
    per_class,
    shown,
    study_data,
    write_result,
)

AUG = AugmentConfig(rotation=20, flip=True, blur_kernel=3)
# The trial the speed targets are about: 64 px, MLP 12288 -> 500 -> 50 -> 9, SGD, batch 32.
TRIAL = TrainConfig(hidden=[500, 50], optimizer="sgd", lr=0.01, batch_size=32, epochs=10,
                    checkpoint_every=5, device="cpu")


def plain_transforms(size: int, augment: bool) -> T.Compose:
    ops = [T.Resize((size, size))]
    if augment:
        ops += [T.RandomRotation(AUG.rotation), T.RandomHorizontalFlip(),
                T.GaussianBlur(AUG.blur_kernel, AUG.blur_sigma)]
    return T.Compose([*ops, T.ToTensor()])


def subset_indices(folder: ImageFolder, n: int) -> list[int]:
    seen: dict[int, int] = {}
    keep = []
    for i, (_, label) in enumerate(folder.samples):
        if seen.get(label, 0) < n:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    return keep


def plain_epoch_seconds(data: Subset, cfg: TrainConfig, spec: InputSpec, repeats: int) -> float:
    """Seconds of one training epoch the way it is usually written: a DataLoader decoding
    the files with PIL in 2 worker processes, the model stepping on each batch."""
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, num_workers=2)
    torch.manual_seed(0)
    model = build_model(cfg, spec)
    optimizer = make_optimizer(cfg, model)

    def epoch():
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return median_time(epoch, repeats)[0]


def plain_epoch_rate(root: Path, n: int, size: int, augment: bool, cfg: TrainConfig,
                     spec: InputSpec, repeats: int) -> float:
    """Images/s of that plain epoch over the first n photos of each class."""
    folder = ImageFolder(str(root), transform=plain_transforms(size, augment))
    data = Subset(folder, subset_indices(folder, n))
    return len(data) / plain_epoch_seconds(data, cfg, spec, repeats)


def trainer_epoch_rate(split: SplitData, cfg: TrainConfig, repeats: int) -> float:
    rates = [train(cfg.model_copy(update={"epochs": 1}), split, "cpu").history[0].images_per_s
             for _ in range(repeats)]
    return statistics.median(rates)


def case_a(root: Path, n: int, repeats: int, cache: Path) -> list[dict]:
    rows = []
    for size in (64, 224):
        split = per_class(study_data(root, size, cache).split(), n)
        spec = input_spec(split)
        for augment in (False, True):
            cfg = TRIAL.model_copy(update={"epochs": 1,
                                           "augment": AUG if augment else AugmentConfig()})
            ours = trainer_epoch_rate(split, cfg, repeats)
            plain = plain_epoch_rate(root, n, size, augment, cfg, spec, repeats)
            rows.append({"case": "a", "size": size, "augment": augment,
                         "asl_sweep_img_s": round(ours, 1), "plain_img_s": round(plain, 1),
                         "ratio": round(ours / plain, 2)})
            print(rows[-1], flush=True)
    return rows


def case_b(root: Path, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        study_data(root, 224, Path(tmp))  # decodes and writes the cache
        first = time.perf_counter() - started
        again, _ = median_time(lambda: study_data(root, 224, Path(tmp)), repeats)
    folder = ImageFolder(str(root), transform=plain_transforms(224, False))
    plain, _ = median_time(lambda: [folder[i] for i in range(len(folder))], 1)
    row = {"case": "b", "images": len(folder), "first_load_decode_s": round(first, 2),
           "cached_load_s": round(again, 3), "plain_pil_decode_s": round(plain, 2),
           "ratio_vs_decoding": round(first / again, 1), "ratio_vs_plain": round(plain / again, 1)}
    print(row, flush=True)
    return row


def augment_arms(x: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Seconds to augment uint8 images x: asl-sweep's batched path (per-image draws), PIL per
    image (torchvision's classic transforms), torchvision.transforms.v2 on the batch."""
    ours, _ = median_time(lambda: augment_batch(x.float() / 255, AUG,
                                                torch.Generator().manual_seed(0)), repeats)
    pil_images = [T.functional.to_pil_image(img) for img in x]
    per_image = T.Compose([T.RandomRotation(AUG.rotation), T.RandomHorizontalFlip(),
                           T.GaussianBlur(AUG.blur_kernel, AUG.blur_sigma), T.ToTensor()])
    plain, _ = median_time(lambda: [per_image(img) for img in pil_images], repeats)
    # torchvision.transforms.v2 on the whole uint8 batch: fast, but one random angle, flip
    # and sigma for the batch, not one per image.
    batch_v2 = T2.Compose([T2.RandomRotation(AUG.rotation), T2.RandomHorizontalFlip(),
                           T2.GaussianBlur(AUG.blur_kernel, AUG.blur_sigma),
                           T2.ToDtype(torch.float32, scale=True)])
    v2, _ = median_time(lambda: batch_v2(x), repeats)
    return ours, plain, v2


def case_c(root: Path, n: int, repeats: int, cache: Path) -> list[dict]:
    rows = []
    for size in (64, 224):
        images = load_image_set(study_data(root, size, cache).cfg, size, cache, lambda _: None)
        x = images.images[: n * 9].clone()
        ours, plain, v2 = augment_arms(x, repeats)
        rows.append({"case": "c", "size": size, "images": len(x),
                     "batched_per_image_params_s": round(ours, 3),
                     "pil_per_image_s": round(plain, 3), "v2_one_draw_per_batch_s": round(v2, 3),
                     "ratio_vs_pil": round(plain / ours, 2)})
        print(rows[-1], flush=True)
    return rows


def trial_flops(data: SplitData, cfg: TrainConfig) -> float:
    """FLOPs of the MLP trial, counted: forward 2 per weight and example; backward 2 for
    the weight gradient and 2 for the input gradient, except the first layer's (the images
    need none); evaluation forward only."""
    widths = [3 * data.image_size ** 2, *cfg.hidden, len(data.classes)]
    layers = list(zip(widths[:-1], widths[1:], strict=True))
    per_train = sum(6 * a * b for a, b in layers) - 2 * layers[0][0] * layers[0][1]
    per_eval = sum(2 * a * b for a, b in layers)
    return cfg.epochs * (len(data.y_train) * per_train + len(data.y_val) * per_eval)


def case_dg(root: Path, repeats: int, cache: Path) -> tuple[dict, dict]:
    """d) the trial inside a sweep vs alone; g) alone vs its compute bound."""
    data = study_data(root, 64, cache).split()
    alone, alone_all = median_time(lambda: train(TRIAL, data, "cpu"), repeats)
    spec = {"study": "overhead", "data": {"root": str(root), "image_size": 64},
            "base": TRIAL.model_dump(mode="json"),
            "stages": [{"name": "s", "trials": repeats, "sampler": "random", "pruner": "none",
                        "confirm": None, "space": {"lr": [0.01]}}]}
    cfg = StudyConfig.model_validate(spec)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.at(Path(tmp) / "mlruns")
        run_study(cfg, ws, log=lambda _: None, score=False)
        import optuna

        trials = optuna.load_study(study_name="overhead.s", storage=ws.storage).trials
        in_sweep = statistics.median((t.datetime_complete - t.datetime_start).total_seconds()
                                     for t in trials[1:])  # after the first (warm-up) trial
    overhead = in_sweep - alone
    d = {"case": "d", "epochs": TRIAL.epochs, "trial_in_sweep_s": round(in_sweep, 3),
         "training_alone_s": round(alone, 3), "overhead_s": round(overhead, 3),
         "overhead_pct": round(100 * overhead / alone, 1)}
    peak = matmul_peak()
    flops = trial_flops(data, TRIAL)
    bound = flops / (peak * 1e9)
    g = {"case": "g", "train_images": len(data.y_train), "val_images": len(data.y_val),
         "gflop": round(flops / 1e9, 1), "matmul_peak_gflops": round(peak, 1),
         "compute_bound_s": round(bound, 2), "training_alone_s": round(alone, 2),
         "alone_runs_s": [round(t, 2) for t in alone_all], "x_bound": round(alone / bound, 2)}
    print(d, g, sep="\n", flush=True)
    return d, g


def case_s(repeats: int) -> dict:
    cli = [sys.executable, "-m", "asl_sweep.cli"]
    help_s, _ = median_time(lambda: subprocess.run([*cli, "--help"], capture_output=True),
                            repeats)
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "s.yaml"
        home = Path(tmp) / "mlruns"

        def write(name: str) -> None:
            study.write_text(f"study: {name}\ndata: {{image_size: 32}}\nbase: {{epochs: 1, "
                             "hidden: [64]}\nstages: [{name: s, trials: 1, confirm: null, "
                             "space: {lr: [0.001]}}]\n")

        write("warm")
        subprocess.run([*cli, "run", str(study), "--home", str(home)], capture_output=True)
        firsts = []
        for k in range(repeats):  # a new study each time, in a home with stores and cache
            write(f"s{k}")
            started = time.perf_counter()
            proc = subprocess.Popen([*cli, "run", str(study), "--home", str(home)],
                                    stdout=subprocess.PIPE, text=True)
            for line in proc.stdout:
                if "trial 0 the incumbent complete" in line:
                    took = float(line.rsplit("(", 1)[1].split("s)")[0])
                    firsts.append(time.perf_counter() - started - took)
                    break
            proc.wait()
    row = {"case": "s", "help_s": round(help_s, 2),
           "run_to_first_trial_s": round(statistics.median(firsts), 2)}
    print(row, flush=True)
    return row


def case_n(root: Path, repeats: int, cache: Path) -> dict:
    """A 64 px CNN epoch on all training photos: asl-sweep's trainer vs the same network in
    a plain ImageFolder + DataLoader loop."""
    split = study_data(root, 64, cache).split()
    cfg = TrainConfig(model="cnn", hidden=[], cnn={"channels": [16, 32, 64]}, epochs=1,
                      optimizer="adamw", lr=3e-3, batch_size=64, device="cpu")
    ours = [train(cfg, split, "cpu").history[0] for _ in range(repeats)]
    folder = ImageFolder(str(root), transform=plain_transforms(64, False))
    train_set = Subset(folder, [int(i) for i in split.train_index])
    plain = plain_epoch_seconds(train_set, cfg, input_spec(split), repeats)
    mine = statistics.median(s.seconds for s in ours)
    row = {"case": "n", "model": "cnn 16-32-64, 64 px", "train_images": len(split.y_train),
           "asl_sweep_epoch_s": round(mine, 2), "plain_epoch_s": round(plain, 2),
           "ratio": round(plain / mine, 2)}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ASL)
    parser.add_argument("--per-class", type=int, default=30, help="photos per class timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="abcdgns")
    args = parser.parse_args()
    results: dict[str, object] = {"data": shown(args.data), "per_class": args.per_class,
                                  "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        if "s" in args.cases:
            results["s"] = case_s(args.repeats)
        if "b" in args.cases:
            results["b"] = case_b(args.data, args.repeats)
        if "c" in args.cases:
            results["c"] = case_c(args.data, args.per_class, args.repeats, cache)
        if "d" in args.cases or "g" in args.cases:
            results["d"], results["g"] = case_dg(args.data, args.repeats, cache)
        if "n" in args.cases:
            results["n"] = case_n(args.data, args.repeats, cache)
        if "a" in args.cases:
            results["a"] = case_a(args.data, args.per_class, args.repeats, cache)
    print(f"written to {write_result('suite', results)}")


if __name__ == "__main__":
    main()
