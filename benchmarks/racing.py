"""The confirmation rule by simulation (no training): races on values with known true
effects, for the shipped defaults, beside the same race without its futility rule (near-ties
run to max_repeats) and the rule before racing (3 fixed repeats, the
search trial counted as repeat 0, adopt over one standard error and 0.5 points). Then
accuracies that count images (every score a whole number of validation images): the race
counting the rounding's variance in its spread, as the stages run it, beside the same race
without it.

    .venv/bin/python -m benchmarks.racing [--runs 20000]

`spread` is the standard deviation of one paired difference (candidate minus incumbent on
the same seed and fold). The old rule's repeat 0 is the search trial, picked because it
scored high: modelled as + one spread (the winner's curse of a best-of-several pick)."""

from __future__ import annotations

import argparse
import math
import random
import statistics
from dataclasses import replace

from asl_sweep.search.racing import RaceRule, simulate
from benchmarks.common import write_result

SCENARIOS = [  # (name, true effects of the candidates in accuracy, spread)
    ("no true gain, 1 candidate", [0.0], 0.02),
    ("+3 pt, 1 candidate", [0.03], 0.02),
    ("+10 pt, 1 candidate", [0.10], 0.02),
    ("-10 pt, 1 candidate", [-0.10], 0.02),
    ("no true gain, 2 candidates", [0.0, 0.0], 0.02),
    ("+3 pt and 0, 2 candidates", [0.03, 0.0], 0.02),
    ("no true gain, 1 candidate, 2.8 pt spread", [0.0], 0.028),
    ("+3 pt, 1 candidate, 2.8 pt spread", [0.03], 0.028),
]


COUNTED = [  # (name, true effect, spread, validation images)
    ("no true gain, 24 images, 3 pt spread", 0.0, 0.03, 24),
    ("no true gain, 60 images, 3 pt spread", 0.0, 0.03, 60),
    ("no true gain, 180 images, 3 pt spread", 0.0, 0.03, 180),
    ("no true gain, 60 images, 6 pt spread", 0.0, 0.06, 60),
    ("+5 pt, 24 images, 3 pt spread", 0.05, 0.03, 24),
    ("+5 pt, 60 images, 3 pt spread", 0.05, 0.03, 60),
    ("+5 pt, 180 images, 3 pt spread", 0.05, 0.03, 180),
    ("+10 pt, 60 images, 6 pt spread", 0.10, 0.06, 60),
]


def fixed_rule(effects: list[float], spread: float, rng: random.Random,
               repeats: int = 3, floor: float = 0.005) -> int | None:
    noise = spread / math.sqrt(2.0)
    base = [rng.gauss(0.0, noise) for _ in range(repeats)]
    best: tuple[float, int, float] | None = None
    for i, effect in enumerate(effects):
        d = [effect + rng.gauss(0.0, noise) + (spread if r == 0 else 0.0) - base[r]
             for r in range(repeats)]
        mean, se = statistics.fmean(d), statistics.stdev(d) / math.sqrt(repeats)
        if best is None or mean > best[0]:
            best = (mean, i, se)
    mean, i, se = best
    return i if mean > max(se, floor) else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20000)
    args = parser.parse_args()
    rule = RaceRule()
    rows = []
    for k, (name, effects, spread) in enumerate(SCENARIOS):
        row = simulate(effects, spread, rule, runs=args.runs, seed=k, scenario=name)
        endless = simulate(effects, spread, replace(rule, futility=0.0), runs=args.runs,
                           seed=k, scenario=name)
        rng = random.Random(1000 + k)
        picks = [fixed_rule(effects, spread, rng) for _ in range(args.runs)]
        best = max(range(len(effects)), key=lambda i: effects[i])
        gain = effects[best] > 0
        rows.append({"scenario": name, "race_adopted": row.adopted_any,
                     "race_right": row.adopted_best if gain else None,
                     "race_rounds": row.mean_rounds, "race_trainings": row.mean_trainings,
                     "no_futility_adopted": endless.adopted_any,
                     "no_futility_right": endless.adopted_best if gain else None,
                     "no_futility_rounds": endless.mean_rounds,
                     "fixed_adopted": sum(p is not None for p in picks) / args.runs,
                     "fixed_right": (sum(p == best for p in picks) / args.runs) if gain
                     else None, "fixed_rounds": 2, "fixed_trainings": 2 * (1 + len(effects))})
    print("| scenario | adopted: race | no futility | fixed 3 | right one adopted: race "
          "| no futility | fixed 3 | fresh repeats a config: race | no futility | fixed 3 "
          "| trainings: race | fixed 3 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def pct(x):
            return "-" if x is None else f"{x:.1%}"
        print(f"| {r['scenario']} | {pct(r['race_adopted'])} | {pct(r['no_futility_adopted'])} "
              f"| {pct(r['fixed_adopted'])} | {pct(r['race_right'])} | "
              f"{pct(r['no_futility_right'])} | {pct(r['fixed_right'])} | "
              f"{r['race_rounds']:.2f} | {r['no_futility_rounds']:.2f} | {r['fixed_rounds']} | "
              f"{r['race_trainings']:.1f} | {r['fixed_trainings']} |")
    counted = []
    for k, (name, effect, spread, images) in enumerate(COUNTED):
        rounded = simulate([effect], spread, rule, runs=args.runs, seed=100 + k,
                           step=1 / images)
        bare = simulate([effect], spread, rule, runs=args.runs, seed=100 + k,
                        step=1 / images, rounding=False)
        counted.append({"scenario": name, "race_adopted": rounded.adopted_any,
                        "bare_adopted": bare.adopted_any, "race_rounds": rounded.mean_rounds,
                        "bare_rounds": bare.mean_rounds})
    print()
    print("| accuracies that count images | adopted: race (rounding counted) | without "
          "it | fresh repeats a config: race | without it |")
    print("|---|---|---|---|---|")
    for r in counted:
        print(f"| {r['scenario']} | {r['race_adopted']:.1%} | {r['bare_adopted']:.1%} | "
              f"{r['race_rounds']:.2f} | {r['bare_rounds']:.2f} |")
    print(f"written to {write_result('racing', {'rule': vars(rule), 'runs': args.runs, 'rows': rows, 'counted': counted})}")


if __name__ == "__main__":
    main()
