"""Wall time of a whole shipped study, and each stage's winner:

    .venv/bin/python -m benchmarks.end_to_end [sweeps/report.yaml] [--data PATH] [--trials N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from asl_sweep.readback import read_stages
from asl_sweep.study import run_study
from asl_sweep.studyfile import load_study
from asl_sweep.workspace import Workspace
from benchmarks.common import shown, write_result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study", nargs="?", default="sweeps/report.yaml")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--trials", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="end_to_end")
    args = parser.parse_args()
    cfg = load_study(args.study, args.overrides, args.data, args.trials)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.at(Path(tmp) / "mlruns")
        started = time.perf_counter()
        run_study(cfg, ws)
        wall = time.perf_counter() - started
        stages = []
        for view in read_stages(cfg, ws):
            w = view.winner
            stages.append({"stage": view.stage.name, "trials": view.by_state(),
                           "winner_trial": w.trial, "status": w.status,
                           "train_acc": round(w.metrics["train_acc"], 4),
                           "val_acc": round(w.metrics["val_acc"], 4)})
    result = {"study": args.study, "data": shown(args.data),
              "image_size": cfg.data.image_size, "trials_override": args.trials,
              "overrides": args.overrides, "wall_s": round(wall, 1), "stages": stages}
    print(f"written to {write_result(args.name, result)}; wall {wall / 60:.1f} min")
    for s in stages:
        print(s)


if __name__ == "__main__":
    main()
