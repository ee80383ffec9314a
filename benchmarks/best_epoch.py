"""What a race compares for each repeat: the best epoch's metric on the validation images
that chose it (the rule before), or cross-fitted (shipped: the epoch one half of the
validation people picks, scored on the other half, and the other way round, averaged over
20 splits of the people into halves; training.train.crossfit), beside the same over one
split only and the last epoch's metric. No training: simulated curves, raced by the
shipped rule (search.racing.judge).

    .venv/bin/python -m benchmarks.best_epoch [--runs 1000]

Each configuration's curve is 12 epochs on a plateau, on a fold's validation people (9
images each). An image of difficulty p (Beta(6, 1.2) over images, a mean of 0.83; the same
images and difficulties for both configurations of a round, a new fold each round) is right
at an epoch with chance p; from one epoch to the next each image keeps its outcome or, with
the configuration's *flip rate*, is drawn again. Every epoch's checkpoint is then worth the
same on new people (the mean difficulty): picking the epoch that scored highest gains
nothing real, but on the images that picked it it counts their luck, the more the more a
curve wavers. The incumbent flips 10% of its images an epoch; the candidate 10%, 30% or 60%
(a higher learning rate, a smaller batch: a curve that wavers more), with no true gain
(the rule promises at most 5% adoptions) or a true gain (each image's chance +5 points,
capped at 1)."""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from asl_sweep.search.racing import RaceRule, judge
from asl_sweep.training.train import (
    EpochStats,
    Monitor,
    crossfit,
    crossfit_step,
    half_scores,
    metric_step,
    person_scores,
)
from benchmarks.common import write_result

EPOCHS = 12
IMAGES = 9  # a person
INCUMBENT_FLIPS = 0.1
ROWS = [  # (metric, validation people, max_repeats, candidate's flip rate, true gain)
    ("val_acc", 18, 6, 0.1, 0.0), ("val_acc", 18, 6, 0.3, 0.0), ("val_acc", 18, 6, 0.6, 0.0),
    ("val_acc", 18, 3, 0.6, 0.0), ("val_acc", 60, 6, 0.6, 0.0),
    ("val_person_q25", 18, 3, 0.6, 0.0),
    ("val_acc", 18, 6, 0.1, 0.05), ("val_acc", 18, 6, 0.6, 0.05),
    ("val_acc", 60, 6, 0.1, 0.05), ("val_acc", 60, 6, 0.6, 0.05),
]
WAYS = ("best epoch (before)", "cross-fitted, 20 splits (shipped)", "cross-fitted, one split",
        "last epoch")


def curve(rng: np.random.Generator, chance: np.ndarray, flips: float) -> np.ndarray:
    """epochs x images: whether each image is right at each epoch."""
    now = rng.random(chance.shape) < chance
    out = [now]
    for _ in range(EPOCHS - 1):
        again = rng.random(chance.shape) < flips
        now = np.where(again, rng.random(chance.shape) < chance, now)
        out.append(now)
    return np.array(out)


def values(right: np.ndarray, people: torch.Tensor, metric: str) -> tuple[float, ...]:
    """The values a race could compare for one simulated training (WAYS)."""
    history = []
    for e, row in enumerate(right):
        hits = torch.from_numpy(row)
        halves = half_scores(metric, torch.zeros(len(row)), hits, people)
        mean, q25, worst = person_scores(hits, people)
        full = {"val_acc": hits.float().mean().item(), "val_person_mean": mean,
                "val_person_q25": q25, "val_person_worst": worst}[metric]
        history.append(EpochStats(e + 1, 0.0, 0.0, 0.0, full, 0.0, 0.0, full, full, full,
                                  halves))  # val_acc here: the stage's metric on every image
    one = [replace(s, val_halves=s.val_halves[:2]) for s in history]
    return (max(s.val_acc for s in history), crossfit(history, Monitor(metric)),
            crossfit(one, Monitor(metric)), history[-1].val_acc)


def race(rng: np.random.Generator, metric: str, n_people: int, max_repeats: int,
         flips: float, gain: float) -> list[bool]:
    """One race of the candidate against the incumbent, run each way (WAYS) on the same
    curves: whether each way adopts it."""
    people = torch.arange(n_people).repeat_interleave(IMAGES)
    plain = metric_step(metric, len(people), people)
    half = metric_step(metric, len(people) // 2, people[: len(people) // 2])
    steps = [plain, crossfit_step(metric, len(people), people), half / 2, plain]
    rule = RaceRule(2, max_repeats)
    ways = range(len(WAYS))
    diffs: list[list[float]] = [[] for _ in ways]
    dropped: list[dict] = [{} for _ in ways]
    adopted = [False for _ in ways]
    done = [False for _ in ways]
    for n in range(1, max_repeats + 1):
        chance = rng.beta(6.0, 1.2, len(people))
        incumbent = values(curve(rng, chance, INCUMBENT_FLIPS), people, metric)
        candidate = values(curve(rng, np.minimum(1.0, chance + gain), flips), people, metric)
        for w in ways:
            if done[w]:
                continue
            diffs[w].append(candidate[w] - incumbent[w])
            if n < 2:
                continue
            verdict = judge({0: diffs[w]}, 1, rule, dropped[w], steps={0: steps[w]})
            dropped[w] = verdict.dropped
            adopted[w], done[w] = verdict.adopt is not None, verdict.done
        if all(done):
            break
    return adopted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    for i, (metric, n_people, max_repeats, flips, gain) in enumerate(ROWS):
        rng = np.random.default_rng(i)
        hits = np.array([race(rng, metric, n_people, max_repeats, flips, gain)
                         for _ in range(args.runs)])
        rows.append({"metric": metric, "people": n_people, "max_repeats": max_repeats,
                     "candidate_flips": flips, "incumbent_flips": INCUMBENT_FLIPS,
                     "gain": gain, **{w: float(hits[:, k].mean()) for k, w in enumerate(WAYS)}})
    print("| metric | validation people | max repeats | flips an epoch: candidate (incumbent "
          f"{INCUMBENT_FLIPS:.0%}) | true gain | adopted: " + " | ".join(WAYS) + " |")
    print("|---|---|---|---|---|" + "---|" * len(WAYS))
    for r in rows:
        print(f"| {r['metric']} | {r['people']} | {r['max_repeats']} | "
              f"{r['candidate_flips']:.0%} | {r['gain'] * 100:+.0f} pt | "
              + " | ".join(f"{r[w]:.1%}" for w in WAYS) + " |")
    print(f"written to {write_result('best_epoch', {'runs': args.runs, 'rows': rows})}")

if __name__ == "__main__":
    main()
