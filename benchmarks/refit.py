"""The final configuration trained again on every non-test person (issue 32): cnn.yaml's
final configuration (the adopted architecture with the start's augmentation and rate, as
every shipped run has ended) or, with --model transfer, transfer.yaml's (MobileNetV2's last
5 blocks fine-tuned at 0.3x over 3 cached views, its fine_tune stage's seed trial, adopted
in every shipped run), for seeds 0..N-1, each twice:

- repeat: trained on fold s's training people, its best epoch by val_person_q25 (what a
  study's final repeats are, and what it exports);
- refit: the same seed trained on fold s's training and validation people (every non-test
  person), its last epoch (its validation people are in its training: nothing can choose).

With --last, a third: the repeat's training people at its last epoch (last), which splits
the refit's gain into the last epoch's (last - repeat) and the added people's (refit -
last). All are scored on the test split: the paired gain per test person averaged over the
seeds (95% CI by bootstrap over test people), each kind's mean with its seed spread, the
ensembles, and the 25th-percentile, median and worst person. Choose on a selection set
(`--synthetic-seed 1`: other signers, their own split), report on the development set
(`--synthetic-seed 0`, the people BENCHMARKS.md reports).

    .venv/bin/python -m benchmarks.refit --synthetic-seed 1 [--model cnn|transfer]
        [--seeds 3] [--epochs 80 for the CNN, 15 for transfer] [--last]

results/refit_seed<S>.json (refit_transfer_seed<S>.json; _last with --last)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asl_sweep.data.studydata import StudyData
from asl_sweep.search.evaluation import _paired_gain, predict_probabilities
from asl_sweep.settings.config import TrainConfig
from asl_sweep.training.train import Monitor, train
from benchmarks.common import write_result
from benchmarks.end_to_end import people_figures
from benchmarks.people_levers import BASE, DATA, ROUND3, TRANSFER, TRANSFER_AUGMENT, TRANSFER_DATA

START = {**BASE, "augment": {**ROUND3, "turn": 0.2}}  # cnn.yaml's start, adopted network
# transfer.yaml's fine_tune seed trial (adopted in every shipped run) over its fixed views
FINE_TUNE = {**TRANSFER, "transfer": {**TRANSFER["transfer"], "trainable": 5,
                                      "backbone_lr": 0.3},
             "augment": {**TRANSFER_AUGMENT, "turn": 0.2}}
MODELS = {"cnn": (START, DATA, 80), "transfer": (FINE_TUNE, TRANSFER_DATA, 15)}


def person_figures(right: np.ndarray, people: np.ndarray) -> dict:
    """Per-person test figures (end_to_end.people_figures) of one model's right answers."""
    names, inverse = np.unique(people, return_inverse=True)
    per = np.bincount(inverse, weights=right) / np.bincount(inverse)
    rows = sorted(({"person": str(n), "accuracy": float(a)} for n, a in zip(names, per,
                                                                            strict=True)),
                  key=lambda r: r["accuracy"])
    return people_figures({"breakdown": {"by_person": rows}})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic-seed", type=int, default=1,
                        help="1: the selection set the rule reads; 0: the development set")
    parser.add_argument("--model", choices=list(MODELS), default="cnn")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: the study's (80 for the CNN, 15 for fine-tuning)")
    parser.add_argument("--last", action="store_true",
                        help="also the repeat's own people at its last epoch")
    args = parser.parse_args()
    torch.set_num_threads(2)
    settings, data_cfg, epochs = MODELS[args.model]
    epochs = args.epochs or epochs
    data_cfg = data_cfg.model_copy(update={"synthetic": data_cfg.synthetic.model_copy(
        update={"seed": args.synthetic_seed})})
    kinds = ["repeat", "last", "refit"] if args.last else ["repeat", "refit"]
    probs: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        study = StudyData(data_cfg, Path(tmp), torch.device("cpu"), log=lambda _: None)
        test = study.test()
        truth, people = test.y.numpy(), np.asarray(test.groups)
        for seed in range(args.seeds):
            cfg = TrainConfig(**settings, epochs=epochs, seed=seed)
            part = study.split(fold=seed)
            every = part.every_person()
            for kind, data, monitor in (("repeat", part, Monitor("val_person_q25")),
                                        ("last", part, Monitor("epoch")),
                                        ("refit", every, Monitor("epoch"))):
                if kind not in kinds:
                    continue
                started = time.perf_counter()
                result = train(cfg, data, "cpu", monitor=monitor,
                               cache_dir=Path(tmp) / "features")
                p = predict_probabilities(result.model, test.x)
                probs[kind].append(p)
                right = (p.argmax(1) == truth).astype(np.float64)
                rows.append({"kind": kind, "seed": seed, "fold": part.fold,
                             "train_people": len(set(study.groups[data.train_index])),
                             "train_images": len(data.train_index), "epoch": result.best.epoch,
                             "test_acc": round(float(right.mean()), 4),
                             **person_figures(right, people),
                             "seconds": round(time.perf_counter() - started, 1)})
                print(rows[-1], flush=True)
    summary = {}
    for kind, ps in probs.items():
        accs = [float((p.argmax(1) == truth).mean()) for p in ps]
        mean = np.mean(ps, axis=0).argmax(1) == truth
        summary[kind] = {
            "test_mean": round(statistics.fmean(accs), 4),
            "test_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
            "ensemble": round(float(mean.mean()), 4),
            "ensemble_people": person_figures(mean.astype(np.float64), people),
            "people_of_the_mean": person_figures(np.mean(
                [(p.argmax(1) == truth) for p in ps], axis=0), people)}
    for kind in kinds:
        s = summary[kind]
        print(f"{kind}: test {s['test_mean']:.3f} +- {s['test_std']:.3f} over {args.seeds} "
              f"seeds, ensemble {s['ensemble']:.3f}; people of the mean "
              f"{s['people_of_the_mean']}")
    pairs = [("refit", "repeat")] + ([("last", "repeat"), ("refit", "last")] if args.last
                                     else [])
    for better, base in pairs:
        diff = np.mean([(b.argmax(1) == truth).astype(float) - (a.argmax(1) == truth)
                        for b, a in zip(probs[better], probs[base], strict=True)], axis=0)
        gain = _paired_gain(diff, people)
        key = ("paired_gain_per_person" if (better, base) == ("refit", "repeat")
               else f"paired_gain_{better}_minus_{base}")
        summary[key] = {k: (round(v, 4) if isinstance(v, float) else v)
                        for k, v in gain.items()}
        print(f"{better} - {base}, per test person: {100 * gain['gain']:+.1f} pt (95% CI "
              f"{100 * gain['ci'][0]:+.1f} to {100 * gain['ci'][1]:+.1f}, {gain['units']} "
              f"people)")
    payload = {"data": f"people 120, synthetic seed {args.synthetic_seed}", "split": "test",
               "model": args.model, "epochs": epochs, "rows": rows, "summary": summary}
    name = "refit" + ("_transfer" if args.model == "transfer" else "")
    name += "_last" if args.last else ""
    print(f"written to {write_result(f'{name}_seed{args.synthetic_seed}', payload)}")


if __name__ == "__main__":
    main()
