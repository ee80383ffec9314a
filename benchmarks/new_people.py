"""Issue 32's measure on the built-in "people" signers (120 signers who differ in pose,
distance, position, hand and light, a quarter unlike the rest; person split with 30 test
signers): a study as it was before the per-person objectives and invariances (the baseline,
benchmarks/studies/*_round3.yaml) or as shipped now, with its wall time, its test mean and its
per-person test figures (mean, 25th percentile, median, worst person).

    .venv/bin/python -m benchmarks.new_people --arm baseline|now [--study cnn|transfer]

One arm per call (each is a whole study: on 2 CPU cores cnn.yaml takes about 20-30 min), so
the two are measured one at a time on an idle machine; results/new_people_<study>_<arm>.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import write_result
from benchmarks.end_to_end import run

STUDIES = Path(__file__).parent / "studies"
# The development set of issue 32, as the shipped studies now name it.
PEOPLE = ["data.synthetic={per_class: 120, signers: 120, seed: 0, kind: people}",
          "data.test_fraction=0.25", "data.val_fraction=0.2"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arm", choices=["baseline", "now"], required=True)
    parser.add_argument("--study", choices=["cnn", "transfer"], default="cnn")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--home", type=Path, help="keep the study here (default: a temporary "
                        "folder), e.g. to export it or read its curves afterwards")
    args = parser.parse_args()
    study = (str(STUDIES / f"{args.study}_round3.yaml") if args.arm == "baseline"
             else f"sweeps/{args.study}.yaml")
    result = run(study, None, [*PEOPLE, *args.overrides], None, None, args.home)
    print({k: result[k] for k in ("wall_s", "final_test", "people")})
    print(f"written to {write_result(f'new_people_{args.study}_{args.arm}', result)}")


if __name__ == "__main__":
    main()
