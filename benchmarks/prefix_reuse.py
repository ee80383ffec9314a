"""The fine-tuning prefix of a later cut computed from a cached prefix of an earlier cut
(models/features.py, _from_earlier_prefix) against computing it from the images, as
transfer.yaml's fine_tune stage meets it: its seed trial fine-tunes the last 8 MobileNetV2
blocks and caches the prefix before them; a trial of the last 5 then needs the prefix before
those, over the same images and augmented views.

    .venv/bin/python -m benchmarks.prefix_reuse [--rounds 2] [--threads 2]

What is timed is the package's own `frozen_features(prefix=True)` for the 5-block model over
the whole pool of transfer.yaml's built-in people (every non-test image, 224 px, its 3 cached
views), each round in a fresh cache folder: empty ("from the images", the plain way and what
the code did before), or holding only the 8-block prefix ("from the cached 8-block prefix").
The arms alternate; `max diff` is the largest difference between the arms' prefixes relative
to their largest magnitude."""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from asl_sweep.data.studydata import StudyData
from asl_sweep.models.backbones import build_transfer
from asl_sweep.models.features import frozen_features
from asl_sweep.settings.config import apply_overrides
from asl_sweep.settings.studyfile import load_study
from asl_sweep.training.train import input_spec
from benchmarks.common import machine, write_result

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    study = load_study(ROOT / "sweeps" / "transfer.yaml")
    stage = next(s for s in study.stages if s.name == "fine_tune")
    cpu = torch.device("cpu")

    def model_of(blocks: int):
        cfg = apply_overrides(study.base, {**stage.fixed, **stage.seed_trials[0].params,
                                           "transfer.trainable": blocks})
        torch.manual_seed(cfg.seed)
        return cfg, build_transfer(cfg, input_spec(data))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = StudyData(study.data, root / "images", cpu, log=lambda _: None).split(224, 0)
        (root / "eight").mkdir()
        cfg, eight = model_of(8)
        frozen_features(eight, cfg, data, cpu, root / "eight", prefix=True)
        cfg, five = model_of(5)
        seconds: dict[str, list[float]] = {"from the images": [], "from the cached 8-block "
                                           "prefix": []}
        prefixes = {}
        for _ in range(args.rounds):
            for arm in seconds:
                folder = root / "cache"  # a fresh one each time: empty, or the 8-block prefix
                if "cached" in arm:
                    shutil.copytree(root / "eight", folder)
                else:
                    folder.mkdir()
                start = time.perf_counter()
                prefixes[arm] = frozen_features(five, cfg, data, cpu, folder, prefix=True)
                seconds[arm].append(round(time.perf_counter() - start, 2))
                shutil.rmtree(folder)
    plain, reused = (statistics.median(v) for v in seconds.values())
    a, b = (p.train for p in prefixes.values())
    row = {"case": "mobilenet_v2: the prefix before the last 5 blocks",
           "images x views": f"{len(data.x_pool)} x {a.shape[0]}",
           "prefix": "x".join(map(str, a.shape[2:])), "threads": args.threads,
           **{f"{arm}: s": round(statistics.median(v), 2) for arm, v in seconds.items()},
           **{f"{arm}: runs": v for arm, v in seconds.items()},
           "ratio": round(reused / plain, 3),
           "max diff": f"{float((a - b).abs().max() / a.abs().max()):.1e}"}
    print(f"the 5-block prefix: {plain:.1f} s from the images, {reused:.1f} s from the cached "
          f"8-block prefix ({reused / plain:.2f}x); max diff {row['max diff']}")
    result = {"rounds": args.rounds, "machine": machine(), "rows": [row],
              "when": time.strftime("%Y-%m-%d")}
    print(f"written to {write_result('prefix_reuse', result)}")


if __name__ == "__main__":
    main()
