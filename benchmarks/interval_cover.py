"""How often the final test score's 95% interval covers what it estimates: the mean accuracy
of the people it was drawn from. Simulated test splits (no training): n people, 9, 18 or 27
images each, one repeat, whose accuracies differ as people's do, two ways: `beta` (Beta(4,
1): mean 0.8, a tail of people far below) and `quarter_fail` (three people in four near the
top, Beta(30, 1), one in four failing, Beta(2, 2): what cnn.yaml's test people look like,
median 1.0 and a worst person at 0.3). The interval is asl-sweep's own
(evaluation.bootstrap_interval: expanded BCa, people resampled), beside the expanded
percentiles alone (the rule before) and the plain 2.5% and 97.5% percentiles of the same
draws (the rule before that), with each rule's mean width.

    .venv/bin/python -m benchmarks.interval_cover [--runs 2000]

A 95% interval should miss about 5% of the time."""

from __future__ import annotations

import argparse

import numpy as np

from asl_sweep.search.evaluation import BOOTSTRAP, Scored, bootstrap_interval
from asl_sweep.search.intervals import expanded_tail
from benchmarks.common import write_result

PEOPLE = (5, 10, 20, 30, 60)
RULES = ("bca", "expanded", "plain")


def _people(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "beta":
        return rng.beta(4, 1, size=n)
    return np.where(rng.random(n) < 0.75, rng.beta(30, 1, size=n), rng.beta(2, 2, size=n))


MEAN = {"beta": 0.8, "quarter_fail": 0.75 * 30 / 31 + 0.25 * 0.5}


def percentile_interval(right: np.ndarray, images: np.ndarray, seed: int,
                        tail: float) -> tuple[float, float]:
    """The `tail` and 100 - `tail` percentiles of the pooled accuracy over people resampled
    (the draws bootstrap_interval makes with the same seed)."""
    draws = np.random.default_rng(seed).integers(0, len(images), (BOOTSTRAP, len(images)))
    weights = np.stack([np.bincount(d, minlength=len(images)) for d in draws])
    accuracy = (weights @ right) / (weights @ images)
    lo, hi = np.percentile(accuracy, [tail, 100.0 - tail])
    return float(lo), float(hi)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    for kind in MEAN:
        for n in PEOPLE:
            rng = np.random.default_rng(n)
            missed, width = dict.fromkeys(RULES, 0), dict.fromkeys(RULES, 0.0)
            for k in range(args.runs):
                images = rng.choice([9, 18, 27], size=n)
                right = rng.binomial(images, _people(kind, n, rng))
                people = np.repeat([f"p{i:02d}" for i in range(n)], images)
                truth = np.zeros(len(people), dtype=np.int64)
                correct = np.concatenate([np.arange(m) < r for m, r in zip(images, right,
                                                                              strict=True)])
                scored = Scored(0, 0, None, np.where(correct, 0, 1), truth)  # type: ignore[arg-type]
                for rule, (lo, hi) in (
                        ("bca", bootstrap_interval([scored], list(people), k)),
                        ("expanded", percentile_interval(right, images, k,
                                                         100.0 * expanded_tail(n))),
                        ("plain", percentile_interval(right, images, k, 2.5))):
                    missed[rule] += not lo <= MEAN[kind] <= hi
                    width[rule] += hi - lo
            rows.append({"people_like": kind, "people": n,
                         **{f"missed_{r}": missed[r] / args.runs for r in RULES},
                         **{f"width_{r}": round(width[r] / args.runs, 4) for r in RULES}})
    print("| people like | test people | missed (width): expanded BCa (shipped) | expanded "
          "(before) | plain percentiles |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['people_like']} | {r['people']} | " + " | ".join(
            f"{r[f'missed_{x}']:.1%} ({r[f'width_{x}']:.3f})" for x in RULES) + " |")
    print(f"written to {write_result('interval_cover', {'runs': args.runs, 'rows': rows})}")


if __name__ == "__main__":
    main()
