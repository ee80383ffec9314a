"""A pretrained backbone's frozen pass on a CPU with its input channels-last (models/
backbones.py, TransferModel._resized: the resized, normalized batch made channels-last) against
the channels-first layout it had before, on transfer.yaml's built-in people at 224px.

    .venv/bin/python -m benchmarks.transfer_channels_last [--rounds 3] [--images 192]
                                                          [--threads 2]

What is timed is the package's own `extract` (models/features.py), which fills the feature
and prefix caches: every image and augmented view of a transfer study goes through it once
per cache, and the full model (test scoring, test-time views, predict) runs the same pass.
Cases: MobileNetV2 with its ImageNet weights, the whole backbone (the frozen head stages)
and the prefix before the last 5 and last 3 blocks (fine_tune's cached part); ResNet-18 and
AlexNet with random weights (theirs are not on this machine; the layout's speed does not
depend on the values). Not timed here: the fine-tuned blocks' epochs on the cached prefix
(stored contiguous by extract; benchmarks/suffix_channels_last.py). "channels first (before)" puts
the old `_resized` back for that arm only; the arms alternate; seconds per 100 images,
median over the rounds. `max diff` is the largest difference between the two arms' outputs
relative to the outputs' largest magnitude: the same values up to float rounding."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from asl_sweep.data.studydata import StudyData
from asl_sweep.models.backbones import TransferModel, build_transfer
from asl_sweep.models.features import extract
from asl_sweep.models.layers import InputSpec
from asl_sweep.settings.config import apply_overrides
from asl_sweep.settings.studyfile import load_study
from benchmarks.common import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # name: (backbone, weights, fine-tuned blocks, the prefix or the whole backbone)
    "mobilenet_v2 features (head stages)": ("mobilenet_v2", "imagenet", 0, False),
    "mobilenet_v2 prefix before the last 5": ("mobilenet_v2", "imagenet", 5, True),
    "mobilenet_v2 prefix before the last 3": ("mobilenet_v2", "imagenet", 3, True),
    "resnet18 features (random weights)": ("resnet18", "none", 0, False),
    "alexnet features (random weights)": ("alexnet", "none", 0, False),
}
NOW = TransferModel._resized


def _before(self: TransferModel, x: torch.Tensor) -> torch.Tensor:
    """TransferModel._resized as it was: the batch in the layout it came in."""
    if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                          align_corners=False, antialias=x.shape[-1] > self.input_size)
    return self.normalize(x)


ARMS = {"channels first (before)": _before, "channels last (now)": NOW}


def _timed(model: TransferModel, x: torch.Tensor, cfg, prefix: bool) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = extract(model, x, cfg, 0, None, prefix=prefix)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--threads", default="2")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    study = load_study(ROOT / "sweeps" / "transfer.yaml")
    with tempfile.TemporaryDirectory() as cache:
        data = StudyData(study.data, Path(cache), torch.device("cpu"),
                         log=lambda _: None).split(224, 0)
    x = data.x_pool[:args.images]
    spec = InputSpec(224, len(data.classes), (0.5,) * 3, (0.25,) * 3)
    rows = []
    for name in args.cases.split(","):
        backbone, weights, trainable, prefix = CASES[name]
        cfg = apply_overrides(study.base, {"transfer": {"backbone": backbone, "weights": weights,
                                                        "trainable": trainable}})
        torch.manual_seed(0)
        model = build_transfer(cfg, spec)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
            outputs: dict[str, torch.Tensor] = {}
            _timed(model, x[:16], cfg, prefix)  # warm-up: oneDNN's first call
            for _ in range(args.rounds):
                for arm, resized in ARMS.items():
                    TransferModel._resized = resized
                    try:
                        s, outputs[arm] = _timed(model, x, cfg, prefix)
                    finally:
                        TransferModel._resized = NOW
                    seconds[arm].append(round(s / len(x) * 100, 3))
            before, now = (statistics.median(seconds[a]) for a in ARMS)
            old, new = outputs.values()
            row = {"case": name, "threads": threads, "images": len(x),
                   "output": "x".join(map(str, old.shape[1:])),
                   **{f"{a}: s/100 images": statistics.median(v) for a, v in seconds.items()},
                   **{f"{a}: runs": v for a, v in seconds.items()},
                   "ratio": round(now / before, 3),
                   "max diff": f"{float((new - old).abs().max() / old.abs().max()):.1e}"}
            rows.append(row)
            print(f"{name} on {threads} thread(s): {before:.2f} s -> {now:.2f} s per 100 "
                  f"images ({now / before:.2f}x); max diff {row['max diff']}", flush=True)
    result = {"images": args.images, "rounds": args.rounds, "machine": machine(), "rows": rows,
              "when": time.strftime("%Y-%m-%d")}
    print(f"written to {write_result('transfer_channels_last', result)}")


if __name__ == "__main__":
    main()
