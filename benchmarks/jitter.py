"""Colour jitter's hue turn: torchvision's HSV round trip as the batched op did it before
(to HSV with a max-with-index, back with a pass per channel), against the one-pass form
photometric.hue has now, and torchvision's own adjust_hue image by image (the plain
alternative); then what it does to an epoch of cnn.yaml's CNN with the real trainer (its
start jitters every image's hue).

    .venv/bin/python -m benchmarks.jitter [--rounds 3] [--epochs 12] [--threads 2,1]

Op: milliseconds a batch, the median of `--rounds` timings of 50 calls each (cnn.yaml's
batch of 64 at 48 px, and at 128 px). Trainer: the median seconds of an epoch after the
first (benchmarks.common.epoch_seconds), the arms alternating, `--rounds` trainings each."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms.functional as TF

from asl_sweep.data import photometric
from asl_sweep.data.studydata import StudyData
from asl_sweep.settings.studyfile import load_study
from benchmarks.common import epoch_seconds, write_result

ROOT = Path(__file__).resolve().parents[1]
NOW = photometric.hue


def _round_trip(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """photometric.hue as it was: RGB to HSV and back, batched."""
    r, g, b = x.unbind(1)
    value, which = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    sat = chroma / torch.where(value > 0, value, torch.ones_like(value))
    h = torch.where(which == 0, (g - b) / safe,
                    torch.where(which == 1, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.where(chroma > 0, h, torch.zeros_like(h))
    h = torch.remainder(torch.remainder(h / 6.0, 1.0) + shift.view(-1, 1, 1), 1.0)

    def channel(n: float) -> torch.Tensor:
        k = torch.remainder(n + h * 6.0, 6.0)
        return value - value * sat * (torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))

    return torch.stack([channel(5.0), channel(3.0), channel(1.0)], 1).clamp_(0.0, 1.0)


def _torchvision(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return torch.stack([TF.adjust_hue(img, float(s)) for img, s in zip(x, shift, strict=True)])


OPS = {"torchvision adjust_hue, image by image": _torchvision,
       "HSV round trip, batched (before)": _round_trip,
       "one pass, batched (now)": NOW}


def _op_ms(fn, x: torch.Tensor, shift: torch.Tensor, rounds: int, calls: int = 50) -> float:
    fn(x, shift)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn(x, shift)
        times.append((time.perf_counter() - started) / calls * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", default="2,1")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    own = torch.get_num_threads()  # the machine line says it; each row says its own
    thread_counts = [int(t) for t in args.threads.split(",")]
    ops, trainer = [], []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for size in (48, 128):
            x = torch.rand(64, 3, size, size, generator=generator)
            shift = (torch.rand(64, generator=generator) * 2 - 1) * 0.05
            answer = NOW(x, shift)
            worst = max((_round_trip(x, shift) - answer).abs().max().item(),
                        (_torchvision(x, shift) - answer).abs().max().item())
            for arm, fn in OPS.items():
                ms = _op_ms(fn, x, shift, args.rounds)
                ops.append({"arm": arm, "threads": threads, "size": size, "ms_a_batch": round(ms, 3),
                            "largest_difference_from_now": worst})
                print(f"hue, {threads} thread(s), 64 x {size} px: {arm} {ms:.2f} ms", flush=True)
    cfg = load_study(ROOT / "sweeps" / "cnn.yaml")
    with tempfile.TemporaryDirectory() as cache:
        data = StudyData(cfg.data, Path(cache), torch.device("cpu"),
                         log=lambda _: None).split(cfg.data.image_size, 0)
        for threads in thread_counts:
            torch.set_num_threads(threads)
            seconds: dict[str, list[float]] = {"before": [], "now": []}
            for _ in range(args.rounds):
                for arm, fn in (("before", _round_trip), ("now", NOW)):
                    photometric.hue = fn
                    try:
                        took, _ = epoch_seconds(cfg.base, data, args.epochs, Path(cache))
                    finally:
                        photometric.hue = NOW
                    seconds[arm].append(round(took, 4))
            before, now = (statistics.median(seconds[a]) for a in ("before", "now"))
            trainer.append({"threads": threads, "images": len(data.y_train),
                            "epoch_s_before": before, "epoch_s_now": now,
                            "now_over_before": round(now / before, 3), "runs": seconds})
            print(f"cnn.yaml's CNN, {threads} thread(s): an epoch {before:.3f} s before, "
                  f"{now:.3f} s now ({now / before:.2f}x)", flush=True)
    torch.set_num_threads(own)
    print(f"written to {write_result('jitter', {'ops': ops, 'trainer': trainer, 'epochs': args.epochs, 'when': time.strftime('%Y-%m-%d')})}")


if __name__ == "__main__":
    main()
