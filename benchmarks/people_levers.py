"""Which augmentations a model can carry on the built-in "people" signers, one training each
on validation fold 0 (or fold s for seed s with --folds; the development set of issue 32,
never its test split): a base augmentation, then each invariance added to it alone. Two
models: the CNN trained from scratch (cnn.yaml's round-3 augmentation, at the architecture
both cnn.yaml arms adopted) and, with --model transfer, MobileNetV2 fine-tuned on its last
two blocks over cached augmented views (transfer.yaml's fine_tune stage and its fixed
augmentation). Validation figures only: they choose the shipped defaults, so they are not
reported as test results.

    .venv/bin/python -m benchmarks.people_levers [--model cnn|transfer] [--seeds 1]
        [--epochs 40] [--folds] [--only LEVER ...] [--transfer KEY=VALUE ...]"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from asl_sweep.data.studydata import StudyData
from asl_sweep.data.synthetic import signer_styles
from asl_sweep.settings.config import DataConfig, TrainConfig
from asl_sweep.training.train import Monitor, evaluate, train
from benchmarks.common import write_result

DATA = DataConfig(synthetic={"per_class": 120, "signers": 120, "seed": 0, "kind": "people"},
                  image_size=48, val_fraction=0.2, test_fraction=0.25)
BASE = dict(model="cnn", cnn={"channels": [16, 32, 64, 128], "kernel": 5, "batch_norm": True,
                              "pool": "max", "dropout": 0.0178},
            hidden=[], dropout=[0.2], optimizer="adamw", lr=3e-3, weight_decay=1e-4,
            batch_size=64, schedule="cosine", warmup_epochs=1, device="cpu")
ROUND3 = {"rotation": 10.0, "translate": 0.05, "brightness": 0.3, "contrast": 0.3,
          "saturation": 0.3, "hue": 0.05}
# transfer.yaml's fine_tune stage: the fixed augmentation of its cached views, and a middle
# point of its searched space (two blocks at a tenth of the head's rate, BN frozen).
TRANSFER_DATA = DATA.model_copy(update={"image_size": 224})
TRANSFER = dict(model="transfer", transfer={"backbone": "mobilenet_v2", "weights": "imagenet",
                                            "trainable": 2, "backbone_lr": 0.1, "bn": "frozen",
                                            "feature_views": 3},
                hidden=[], dropout=[], optimizer="adam", lr=1e-3, weight_decay=0.0,
                batch_size=64, device="cpu")
TRANSFER_AUGMENT = {"rotation": 15.0, "flip": True, "crop_scale": 0.7, "translate": 0.05,
                    "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05}
LEVERS = {"round-3 base": {}, "+ flip": {"flip": True}, "+ zoom_out 1.3": {"zoom_out": 1.3},
          "+ rotation 30": {"rotation": 30.0}, "+ rotation 60": {"rotation": 60.0},
          "+ perspective 0.2": {"perspective": 0.2}, "+ crop 0.7": {"crop_scale": 0.7},
          "+ turn 0.2": {"turn": 0.2}, "+ turn 0.35": {"turn": 0.35},
          "+ turn 0.2, zoom_out 1.5, crop 0.7": {"turn": 0.2, "zoom_out": 1.5, "crop_scale": 0.7},
          # cnn.yaml's start (turn 0.2) with the hands shrunk as the far signers' are
          "+ turn 0.2, zoom_out 1.5": {"turn": 0.2, "zoom_out": 1.5},
          "+ turn 0.2, zoom_out 2.0": {"turn": 0.2, "zoom_out": 2.0},
          # ... on a fifth of the hands only, as the quarter turn is
          "+ turn 0.2, zoom_out 2.0 on 0.2": {"turn": 0.2, "zoom_out": 2.0, "zoom_share": 0.2},
          "+ turn 0.2, zoom_out 2.5 on 0.2": {"turn": 0.2, "zoom_out": 2.5, "zoom_share": 0.2},
          # the augmentation stage's other levers, each beside the start's turn
          "+ turn 0.2, flip": {"turn": 0.2, "flip": True},
          "+ turn 0.2, rotation 30": {"turn": 0.2, "rotation": 30.0},
          "+ turn 0.2, perspective 0.2": {"turn": 0.2, "perspective": 0.2},
          "+ turn 0.2, trivial 0.5": {"turn": 0.2, "trivial": 0.5},
          "+ turn 0.2, erase 0.2": {"turn": 0.2, "erase": 0.2},
          "+ turn 0.2, crop 0.7": {"turn": 0.2, "crop_scale": 0.7},
          # the two that scored above the start on the mean of the folds, together
          "+ turn 0.2, trivial 0.5, crop 0.7": {"turn": 0.2, "trivial": 0.5, "crop_scale": 0.7},
          # ... and the start with every image drawn at 64 px, not 48 (the far hands' pixels)
          "+ turn 0.2, size 64": {"turn": 0.2, "image_size": 64},
          # the start with a focal loss: the images still wrong (unusual hands) weigh more
          "+ turn 0.2, focal 1": {"turn": 0.2, "focal_gamma": 1.0},
          "+ turn 0.2, focal 2": {"turn": 0.2, "focal_gamma": 2.0},
          # the mixing levers and smoothing, never measured on the folds beside the start
          "+ turn 0.2, cutmix 1.0": {"turn": 0.2, "cutmix": 1.0},
          "+ turn 0.2, mixup 0.2": {"turn": 0.2, "mixup": 0.2},
          "+ turn 0.2, smoothing 0.1": {"turn": 0.2, "label_smoothing": 0.1},
          # transfer only: more cached views, so more of the turned ones reach the head
          "+ turn 0.35, feature_views 5": {"turn": 0.35, "transfer": {"feature_views": 5}}}
EPOCHS = {"cnn": 40, "transfer": 15}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["cnn", "transfer"], default="cnn")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: 40 for the CNN, 15 for fine-tuning (transfer.yaml's)")
    parser.add_argument("--folds", action="store_true", help="seed s validates on person "
                        "fold s (fold 0 holds no sideways signer; folds 1 and 2 hold four)")
    parser.add_argument("--only", nargs="*", help="lever names to run (default: all)")
    parser.add_argument("--transfer", nargs="*", default=[], metavar="KEY=VALUE",
                        help="with --model transfer: fine-tuning settings other than the "
                        "base's (trainable=3, backbone_lr=0.3, bn=train)")
    args = parser.parse_args()
    transfer = args.model == "transfer"
    epochs = args.epochs or EPOCHS[args.model]
    base, base_augment = (TRANSFER, TRANSFER_AUGMENT) if transfer else (BASE, ROUND3)
    changed = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.transfer)}
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_cfg = TRANSFER_DATA if transfer else DATA
        studies: dict[int, StudyData] = {}  # one decoded set per image size

        def study_at(size: int | None) -> StudyData:
            size = size or data_cfg.image_size
            if size not in studies:
                studies[size] = StudyData(data_cfg.model_copy(update={"image_size": size}),
                                          Path(tmp), torch.device("cpu"), log=lambda _: None)
            return studies[size]

        # Which validation images are of signers unlike the majority (the generator's own
        # record of each signer): the accuracy on each kind, a finer view than the quantiles
        # over 24 people of 9 images each.
        styles = signer_styles(120, 0, "people")
        for name, extra in LEVERS.items():
            extra = dict(extra)
            lever_transfer = extra.pop("transfer", {})
            size = extra.pop("image_size", None)
            loss = {k: extra.pop(k) for k in ("focal_gamma", "label_smoothing")
                    if k in extra}  # the trainer's, not augment's
            if (args.only and name not in args.only) or (lever_transfer and not transfer):
                continue
            study = study_at(size)
            for seed in range(args.seeds):
                data = study.split(fold=seed if args.folds else 0)
                kinds = [styles[int(g[1:])].unusual or "usual"
                         for g in study.groups[data.val_index]]
                settings = {**base, "epochs": epochs, "seed": seed, **loss,
                            "augment": {**base_augment, **extra}}
                if transfer:
                    settings["transfer"] = {**base["transfer"], **changed, **lever_transfer}
                cfg = TrainConfig(**settings)
                started = time.perf_counter()
                result = train(cfg, data, "cpu", monitor=Monitor("val_person_q25"),
                               cache_dir=Path(tmp) / "features")
                b = result.best
                by_kind = {}
                for k in ("usual", "sideways", "far", "close"):
                    mask = torch.tensor([kind == k for kind in kinds])
                    by_kind[f"val_{k}"] = (  # None: no signer of that kind on this fold
                        round(evaluate(result.model, data.x_val[mask], data.y_val[mask])[1], 4)
                        if mask.any() else None)
                rows.append({"lever": name, "seed": seed, "fold": data.fold,
                             "image_size": study.cfg.image_size,
                             "val_acc": round(b.val_acc, 4),
                             "val_person_q25": round(b.val_person_q25, 4),
                             "val_person_worst": round(b.val_person_worst, 4),
                             **by_kind, "best_epoch": b.epoch,
                             "seconds": round(time.perf_counter() - started, 1)})
                print(rows[-1], flush=True)
    result_name = ("people_levers" + ("_transfer" if transfer else "")
                   + "".join(f"_{k}{v}" for k, v in changed.items())
                   + ("_folds" if args.folds else "")
                   + (f"_{epochs}epochs" if epochs != EPOCHS[args.model] else ""))
    payload = {"data": "people 120", "model": args.model, "epochs": epochs,
               "transfer": changed, "rows": rows}
    print(f"written to {write_result(result_name, payload)}")


if __name__ == "__main__":
    main()
