"""Issue 20's goal on the built-in signers (person-disjoint test split): sweeps/cnn.yaml as
shipped now beside sweeps/cnn.yaml as it was before the augmentation toolbox
(benchmarks/studies/cnn_round2.yaml), with the same wall time: the new study runs first, then
the old one with each stage's search bounded by a timeout so that it spends as long.

    .venv/bin/python -m benchmarks.cnn_signers [--data PATH] [--set K=V ...]

On 2 CPU cores both arms together take about 40 minutes."""

from __future__ import annotations

import argparse
from pathlib import Path

from asl_sweep.settings.studyfile import load_study
from benchmarks.common import shown, write_result
from benchmarks.end_to_end import run

BEFORE = str(Path(__file__).parent / "studies" / "cnn_round2.yaml")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=None, help="default: the built-in signers")
    parser.add_argument("--study", default="sweeps/cnn.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    now = run(args.study, args.data, args.overrides, None, None)
    # The old arm gets the new arm's wall time: each stage searches for its share of it
    # (confirmation included in the share by leaving it a fifth), with budget to spare.
    stages = len(load_study(BEFORE).stages)
    share = round(0.8 * now["wall_s"] / stages)
    matched = [f"stages.{i}.timeout={share}" for i in range(stages)]
    matched += [f"stages.{i}.trials=200" for i in range(stages)]
    before = run(BEFORE, args.data, [*args.overrides, *matched], None, None)
    result = {"data": shown(args.data), "now": now, "before": before,
              "wall_ratio": round(now["wall_s"] / before["wall_s"], 2),
              "test_gain_points": round(100 * (now["final_test_mean"]
                                               - before["final_test_mean"]), 1)}
    print({k: result[k] for k in ("wall_ratio", "test_gain_points")})
    name = "cnn_signers" if args.data is None else "cnn_" + args.data.name
    print(f"written to {write_result(name, result)}")


if __name__ == "__main__":
    main()
