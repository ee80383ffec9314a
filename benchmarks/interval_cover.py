"""How often the final test score's 95% interval covers what it estimates: the mean accuracy
of the people it was drawn from. Simulated test splits (no training): n people whose
accuracies differ as people's do (Beta(4, 1): mean 0.8, a tail of people far below), 9, 18
or 27 images each, one repeat; the interval is asl-sweep's own (evaluation.bootstrap_interval,
people resampled), beside the plain 2.5% and 97.5% percentiles of the same draws.

    .venv/bin/python -m benchmarks.interval_cover [--runs 2000]

A 95% interval should miss about 5% of the time."""

from __future__ import annotations

import argparse

import numpy as np

from asl_sweep.search.evaluation import BOOTSTRAP, Scored, bootstrap_interval
from benchmarks.common import write_result

PEOPLE = (5, 10, 20, 30, 60)
MEAN = 0.8  # Beta(4, 1)


def plain_interval(right: np.ndarray, images: np.ndarray, seed: int) -> tuple[float, float]:
    """The rule before: the 2.5% and 97.5% percentiles of the pooled accuracy over people
    resampled."""
    draws = np.random.default_rng(seed).integers(0, len(images), (BOOTSTRAP, len(images)))
    accuracy = right[draws].sum(axis=1) / images[draws].sum(axis=1)
    lo, hi = np.percentile(accuracy, [2.5, 97.5])
    return float(lo), float(hi)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    for n in PEOPLE:
        rng = np.random.default_rng(n)
        missed = {"expanded": 0, "plain": 0}
        for k in range(args.runs):
            accuracy = rng.beta(4, 1, size=n)
            images = rng.choice([9, 18, 27], size=n)
            right = rng.binomial(images, accuracy)
            people = np.repeat([f"p{i}" for i in range(n)], images)
            truth = np.zeros(len(people), dtype=np.int64)
            correct = np.concatenate([np.arange(m) < r for m, r in zip(images, right,
                                                                          strict=True)])
            scored = Scored(0, 0, None, np.where(correct, 0, 1), truth)  # type: ignore[arg-type]
            for name, (lo, hi) in (("expanded", bootstrap_interval([scored], list(people), k)),
                                   ("plain", plain_interval(right, images, k))):
                missed[name] += not lo <= MEAN <= hi
        rows.append({"people": n, "missed_expanded": missed["expanded"] / args.runs,
                     "missed_plain": missed["plain"] / args.runs})
    print("| test people | missed: expanded (shipped) | plain percentiles (before) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['people']} | {r['missed_expanded']:.1%} | {r['missed_plain']:.1%} |")
    print(f"written to {write_result('interval_cover', {'runs': args.runs, 'rows': rows})}")


if __name__ == "__main__":
    main()
