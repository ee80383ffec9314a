"""Time to quality: sweeps/report.yaml as shipped (median pruning, no early stopping) beside
the same study with Hyperband pruning in every searched stage and early stopping in every
trial, in one run on the same machine: wall time and final test accuracy of each.

    .venv/bin/python -m benchmarks.time_to_quality [--data PATH] [--study sweeps/report.yaml]"""

from __future__ import annotations

import argparse
from pathlib import Path

from asl_sweep.studyfile import load_study
from benchmarks.common import ASL, shown, write_result
from benchmarks.end_to_end import run


def faster(study: str) -> list[str]:
    cfg = load_study(study)
    sets = [f"stages.{i}.pruner=hyperband" for i, s in enumerate(cfg.stages)
            if s.target is None]
    return [*sets, "base.early_stop={patience: 3}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ASL)
    parser.add_argument("--study", default="sweeps/report.yaml")
    args = parser.parse_args()
    today = run(args.study, args.data, [], None, None)
    quick = run(args.study, args.data, faster(args.study), None, None)
    result = {"study": args.study, "data": shown(args.data),
              "today_wall_s": today["wall_s"], "today_test": today["final_test"],
              "hyperband_early_stop_wall_s": quick["wall_s"],
              "hyperband_early_stop_test": quick["final_test"],
              "wall_ratio": round(quick["wall_s"] / today["wall_s"], 2),
              "test_difference": round(quick["final_test_mean"] - today["final_test_mean"], 4),
              "today_std": today["final_test_std"], "faster_overrides": quick["overrides"],
              "today": today, "hyperband_early_stop": quick}
    print({k: v for k, v in result.items() if k not in ("today", "hyperband_early_stop")})
    print(f"written to {write_result('time_to_quality', result)}")


if __name__ == "__main__":
    main()
