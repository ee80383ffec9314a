"""Speed, side by side with the plain way, on the real photos (or synthetic letters):

    .venv/bin/python -m benchmarks.suite [--data PATH] [--per-class N] [--repeats 3]

a) trainer epoch vs a plain PyTorch loop (ImageFolder + PIL transforms + DataLoader),
   64 and 224 px, with and without augmentation; b) decoded cache vs decoding again;
c) batched on-device augmentation vs torchvision PIL transforms per image; d) the sweep's
overhead per trial (Optuna + MLflow) vs the same training alone; g) the MLP step against the
machine's measured matrix-product peak and memory bandwidth. Writes
benchmarks/results/suite.json; benchmarks/report.py turns results into BENCHMARKS.md."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from asl_sweep.augment import augment_batch
from asl_sweep.config import AugmentConfig, DataConfig, StudyConfig, TrainConfig
from asl_sweep.data import SplitData, load_image_set, prepare_split
from asl_sweep.layers import InputSpec
from asl_sweep.models import build_model
from asl_sweep.train import input_spec, make_optimizer, train
from asl_sweep.workspace import Workspace
from benchmarks.common import ASL, median_time, shown, write_result

AUG = AugmentConfig(rotation=20, flip=True, blur_kernel=3)


def plain_transforms(size: int, augment: bool) -> T.Compose:
    ops = [T.Resize((size, size))]
    if augment:
        ops += [T.RandomRotation(AUG.rotation), T.RandomHorizontalFlip(),
                T.GaussianBlur(AUG.blur_kernel, AUG.blur_sigma)]
    return T.Compose([*ops, T.ToTensor()])


def subset_indices(folder: ImageFolder, per_class: int) -> list[int]:
    seen: dict[int, int] = {}
    keep = []
    for i, (_, label) in enumerate(folder.samples):
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    return keep


def plain_epoch_rate(root: Path, per_class: int, size: int, augment: bool, cfg: TrainConfig,
                     spec: InputSpec, repeats: int) -> float:
    """Images/s of one training epoch the way it is usually written."""
    folder = ImageFolder(str(root), transform=plain_transforms(size, augment))
    data = Subset(folder, subset_indices(folder, per_class))
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, num_workers=2,
                        persistent_workers=False)
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

    seconds, _ = median_time(epoch, repeats)
    return len(data) / seconds


def trainer_epoch_rate(split: SplitData, cfg: TrainConfig, repeats: int) -> float:
    """Images/s of asl-sweep's epoch (decoded once, batches cut from tensors)."""
    rates = []
    for _ in range(repeats):
        result = train(cfg.model_copy(update={"epochs": 1}), split, "cpu")
        rates.append(result.history[0].images_per_s)
    return statistics.median(rates)


def take_per_class(split: SplitData, n: int) -> SplitData:
    idx = torch.cat([torch.nonzero(split.y_train == c).flatten()[:n]
                     for c in range(len(split.classes))])
    return SplitData(split.x_train[idx], split.y_train[idx], split.x_val[:64], split.y_val[:64],
                     split.classes, split.content_key + f"|{n}")


def case_a(root: Path, per_class: int, repeats: int, cache: Path) -> list[dict]:
    rows = []
    for size in (64, 224):
        data_cfg = DataConfig(root=root, image_size=size)
        split = take_per_class(prepare_split(load_image_set(data_cfg, cache), data_cfg,
                                             torch.device("cpu")), per_class)
        spec = input_spec(split)
        for augment in (False, True):
            cfg = TrainConfig(hidden=[500, 50], batch_size=20, epochs=1,
                              augment=AUG if augment else AugmentConfig())
            ours = trainer_epoch_rate(split, cfg, repeats)
            plain = plain_epoch_rate(root, per_class, size, augment, cfg, spec, repeats)
            rows.append({"case": "a", "size": size, "augment": augment,
                         "asl_sweep_img_s": round(ours, 1), "plain_img_s": round(plain, 1),
                         "ratio": round(ours / plain, 2)})
            print(rows[-1], flush=True)
    return rows


def case_b(root: Path, repeats: int) -> dict:
    cfg = DataConfig(root=root, image_size=224)

    def ready(cache: Path) -> None:  # what a study does before its first trial
        prepare_split(load_image_set(cfg, cache), cfg, torch.device("cpu"))

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ready(Path(tmp))  # decodes, writes the cache
        first = time.perf_counter() - started
        again, _ = median_time(lambda: ready(Path(tmp)), repeats)
    folder = ImageFolder(str(root), transform=plain_transforms(224, False))
    plain, _ = median_time(lambda: [folder[i] for i in range(len(folder))], 1)
    row = {"case": "b", "images": len(folder), "first_load_decode_s": round(first, 2),
           "cached_load_s": round(again, 3), "plain_pil_decode_s": round(plain, 2),
           "ratio_vs_decoding": round(first / again, 1), "ratio_vs_plain": round(plain / again, 1)}
    print(row, flush=True)
    return row


def case_c(root: Path, per_class: int, repeats: int, cache: Path) -> dict:
    data_cfg = DataConfig(root=root, image_size=224)
    split = take_per_class(prepare_split(load_image_set(data_cfg, cache), data_cfg,
                                         torch.device("cpu")), per_class)
    x = split.x_train
    ours, _ = median_time(lambda: augment_batch(x.float() / 255, AUG,
                                                torch.Generator().manual_seed(0)), repeats)
    pil_images = [T.functional.to_pil_image(img) for img in x]
    ops = T.Compose([T.RandomRotation(AUG.rotation), T.RandomHorizontalFlip(),
                     T.GaussianBlur(AUG.blur_kernel, AUG.blur_sigma), T.ToTensor()])
    plain, _ = median_time(lambda: [ops(img) for img in pil_images], repeats)
    row = {"case": "c", "images": len(x), "size": 224, "batched_s": round(ours, 3),
           "pil_per_image_s": round(plain, 3), "ratio": round(plain / ours, 1)}
    print(row, flush=True)
    return row


def case_d(repeats: int) -> dict:
    """Seconds a 10-epoch trial spends in Optuna + MLflow beyond the training itself."""
    from asl_sweep.study import run_study

    # The trial of sweeps/report.yaml's MLP stages: 64 px, 864 training images, 500 -> 50.
    spec = {"study": "overhead", "data": {"synthetic": {"per_class": 120}, "image_size": 64},
            "base": {"hidden": [500, 50], "epochs": 10, "batch_size": 32},
            "stages": [{"name": "s", "trials": repeats, "sampler": "random", "pruner": "none",
                        "space": {"lr": [1e-3]}}]}
    cfg = StudyConfig.model_validate(spec)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.at(Path(tmp) / "mlruns")
        run_study(cfg, ws, log=lambda _: None)
        import optuna

        trials = optuna.load_study(study_name="overhead.s", storage=ws.storage).trials
        in_sweep = statistics.median(
            (t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
        split = prepare_split(load_image_set(cfg.data, ws.cache), cfg.data, torch.device("cpu"))
        alone, _ = median_time(lambda: train(cfg.base, split, "cpu"), repeats)
    row = {"case": "d", "epochs": 10, "trial_in_sweep_s": round(in_sweep, 3),
           "training_alone_s": round(alone, 3), "overhead_s": round(in_sweep - alone, 3),
           "overhead_pct": round(100 * (in_sweep - alone) / alone, 1)}
    print(row, flush=True)
    return row


def mlp_step_seconds(fused: bool, repeats: int) -> float:
    cfg = TrainConfig(hidden=[500, 50], batch_size=20)
    model = build_model(cfg, InputSpec(224, 9, (0.5,) * 3, (0.25,) * 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    x, y = torch.rand(20, 3, 224, 224), torch.randint(0, 9, (20,))

    def step():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    return median_time(step, repeats + 2)[0]


def case_g(repeats: int) -> dict:
    """The 224px MLP step (150528 -> 500 -> 50 -> 9, Adam, batch 20) against the limits."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    mm_s, _ = median_time(lambda: a @ b, repeats + 2)
    peak_gflops = 2 * n ** 3 / mm_s / 1e9
    big = torch.empty(64 * 2 ** 20)  # 256 MB
    dst = torch.empty_like(big)
    dst.copy_(big)
    copy_s, _ = median_time(lambda: dst.copy_(big), repeats + 2)
    bandwidth = 2 * big.numel() * 4 / copy_s / 1e9  # read + write
    results = {"default": mlp_step_seconds(False, repeats), "fused": mlp_step_seconds(True, repeats)}
    params = 150528 * 500 + 500 * 50 + 50 * 9
    flops = 3 * 2 * 20 * params  # forward + backward (weight and activation gradients)
    # Bytes the step must move: weights read (forward), gradient written, then Adam reads
    # weight, gradient and two moments and writes weight and two moments.
    traffic = params * 4 * (1 + 1 + 4 + 3)
    step_s = min(results.values())
    row = {"case": "g", "matmul_peak_gflops": round(peak_gflops, 1),
           "copy_bandwidth_gb_s": round(bandwidth, 2),
           "step_s_default_adam": round(results["default"], 4),
           "step_s_fused_adam": round(results["fused"], 4),
           "step_gflops": round(flops / step_s / 1e9, 2),
           "step_traffic_gb_s": round(traffic / step_s / 1e9, 2),
           "compute_bound_pct": round(100 * flops / step_s / 1e9 / peak_gflops, 1),
           "memory_bound_pct": round(100 * traffic / step_s / 1e9 / bandwidth, 1),
           "images_per_s": round(20 / step_s, 1)}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ASL)
    parser.add_argument("--per-class", type=int, default=30, help="photos per class timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="abcdg")
    args = parser.parse_args()
    results: dict[str, object] = {"data": shown(args.data), "per_class": args.per_class,
                                  "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        if "g" in args.cases:
            results["g"] = case_g(args.repeats)
        if "b" in args.cases:
            results["b"] = case_b(args.data, args.repeats)
        if "c" in args.cases:
            results["c"] = case_c(args.data, args.per_class, args.repeats, cache)
        if "d" in args.cases:
            results["d"] = case_d(args.repeats)
        if "a" in args.cases:
            results["a"] = case_a(args.data, args.per_class, args.repeats, cache)
    print(f"written to {write_result('suite', results)}")


if __name__ == "__main__":
    main()
