"""Test-time views chosen on validation: how often `tta: auto` adopts a set with no true gain,
and how often one with a true gain, by the rule it ships with (a one-sided Student t bound
over the validation people, at least 5 of them) beside the rule before it (a percentile
bootstrap over the people, 2,000 draws). No training: simulated predictions.

    .venv/bin/python -m benchmarks.tta_bound [--runs 1000]

Each validation person has 9 images; the model without views is right on an image with
chance 0.7. Each of the four sets `auto` compares changes 15% of the images at random: a
changed image is right with chance 0.7 (no true gain) or 1 (a true gain of +4.5 pt).
The rule promises at most 2.5% adoptions of a set with no true gain (one-sided 97.5%,
Bonferroni over the four sets)."""

from __future__ import annotations

import argparse

import numpy as np

from asl_sweep.search.evaluation import pick_views
from benchmarks.common import write_result

SETS = ("flip", "rotate", "scale", "all")
PEOPLE = (2, 3, 5, 8, 12, 25, 50)
IMAGES = 9


def percentile_bootstrap(right: dict[str, np.ndarray], unit: np.ndarray, seed: int) -> str:
    """The rule before: each set's gain per person, resampled 2,000 times; adopted where the
    percentile at 2.5% / 4 of the resampled means is above 0."""
    names, inverse = np.unique(unit, return_inverse=True)
    count = np.bincount(inverse, minlength=len(names))
    draws = np.random.default_rng(seed).integers(0, len(names), (2000, len(names)))
    best, views = 0.0, "none"
    for name in SETS:
        diff = right[name].astype(float) - right["none"]
        per = np.bincount(inverse, weights=diff, minlength=len(names)) / count
        lower = np.percentile(per[draws].mean(axis=1), 2.5 / len(SETS))
        if lower > 0 and per.mean() > best:
            best, views = per.mean(), name
    return views


def case(rng: np.random.Generator, people: int, gain: bool) -> tuple[dict, np.ndarray]:
    unit = np.repeat([f"p{p}" for p in range(people)], IMAGES)
    plain = rng.random(len(unit)) < 0.7
    right = {"none": plain}
    for i, name in enumerate(SETS):
        changed = rng.random(len(unit)) < 0.15
        chance = 1.0 if gain and i == 0 else 0.7
        right[name] = np.where(changed, rng.random(len(unit)) < chance, plain)
    return right, unit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    for people in PEOPLE:
        row: dict = {"people": people, "images": people * IMAGES}
        for gain in (False, True):
            rng = np.random.default_rng(people * 2 + gain)
            t = boot = 0
            for k in range(args.runs):
                right, unit = case(rng, people, gain)
                t += pick_views(right, unit, "auto", "people")["views"] != "none"
                boot += percentile_bootstrap(right, unit, k) != "none"
            key = "true_gain" if gain else "no_gain"
            row[f"{key}_adopted_t"] = t / args.runs
            row[f"{key}_adopted_bootstrap"] = boot / args.runs
        rows.append(row)
    print("| validation people (9 images each) | no true gain adopted: t (shipped) | "
          "bootstrap (before) | a +4.5 pt set adopted: t | bootstrap |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['people']} | {r['no_gain_adopted_t']:.1%} | "
              f"{r['no_gain_adopted_bootstrap']:.1%} | {r['true_gain_adopted_t']:.1%} | "
              f"{r['true_gain_adopted_bootstrap']:.1%} |")
    print(f"written to {write_result('tta_bound', {'runs': args.runs, 'rows': rows})}")


if __name__ == "__main__":
    main()
