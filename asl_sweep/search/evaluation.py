"""Scoring stored checkpoints on a split: the final test score of a study and `asl-sweep
evaluate`. Each repeat of a configuration (its seeds, and folds where the data has them) is
scored on its own; the score is their mean +- std, with a 95% bootstrap interval over the
split's people (groups) where it has them, else over its images."""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial

from asl_sweep.data.studydata import StudyData
from asl_sweep.models.views import VIEW_SETS, VIEWS, describe, each_view, set_probabilities
from asl_sweep.runtime import signals
from asl_sweep.runtime.errors import ModelFileError, StoreError, WriteError
from asl_sweep.search.intervals import bca_interval, t_quantile
from asl_sweep.search.progress import final_model_lines, views_lines
from asl_sweep.search.record import save_final
from asl_sweep.search.session import Session
from asl_sweep.search.stageview import StageView
from asl_sweep.search.state import (
    FINAL_CLAIM,
    REFIT_CLAIM,
    RecordKey,
    TrialKey,
    does_job,
    holding,
    outcome_of,
    read,
)
from asl_sweep.search.store import create_stage_study, stage_trials
from asl_sweep.tracking.tracker import Tracker
from asl_sweep.training.checkpoint import ModelFile

BOOTSTRAP, EVAL_BATCH = 2000, 128
MIN_PEOPLE = 5  # below this an interval over people says little: said, and no views chosen
# The view sets `tta: auto` weighs on validation (Bonferroni over them); the others a study
# may name. `turn` is one of those (benchmarks/notes/issue-32-new-people.md).
AUTO_SETS = ("flip", "rotate", "scale", "all")
TEST_RULE = ("test split, never seen by the search (not by training, pruning, early stopping, "
             "selection or confirmation); every repeat of the final configuration scored once")


@dataclass
class Scored:
    trial: int
    fold: int
    model_file: ModelFile
    predictions: np.ndarray
    truth: np.ndarray
    probabilities: np.ndarray | None = None  # [N, classes]
    # "test": every repeat scored the same images; "val": each its own fold's, whose people
    # (None where the data has none) are `people`
    split: str = "test"
    people: np.ndarray | None = None

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.truth).mean())


def ensemble_of(scored: list[Scored], lead: int | None = None) -> Scored:
    """The repeats as one model: their class probabilities averaged, image by image (the
    model file carries every repeat's weights; its state, metrics and identity are those of
    trial `lead`, default the first)."""
    first = next((s for s in scored if s.trial == lead), scored[0]).model_file
    mean = np.mean([s.probabilities for s in scored], axis=0)
    file = ModelFile(first.state, first.config, first.spec, first.classes, first.epoch,
                     dict(first.metrics), dict(first.identity),
                     members=[s.model_file.state for s in scored], views=first.views)
    return Scored(-1, -1, file, mean.argmax(1), scored[0].truth, mean)


def final_candidates(scored: list[Scored], export_trial: int, groups: list[str] | None
                     ) -> tuple[Scored, Scored | None, dict]:
    """The two models the final configuration may be exported as: its best repeat by
    validation (`export_trial`) and, with two repeats or more, their ensemble; and their
    test entries (`best_repeat`, `ensemble`) for the final score."""
    best = next(s for s in scored if s.trial == export_trial)
    entries: dict = {"best_repeat": {"trial": best.trial, "accuracy": best.accuracy}}
    ensemble = ensemble_of(scored, best.trial) if len(scored) >= 2 else None
    if ensemble is not None:
        entries["ensemble"] = summarize([ensemble], groups, "test") | {
            "members": [s.trial for s in scored]}
    return best, ensemble, entries


def load_checkpoint(tracker: Tracker, t: FrozenTrial) -> ModelFile:
    run_id = t.user_attrs.get(TrialKey.RUN)
    if not run_id:
        raise ModelFileError(f"trial {t.number}: no MLflow run, so no checkpoint to score")
    return load_run_checkpoint(tracker, run_id, f"trial {t.number}")


def load_run_checkpoint(tracker: Tracker, run_id: str, who: str) -> ModelFile:
    """The best checkpoint on run `run_id` (of `who`, as messages name it)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.artifact_file(run_id, "checkpoints/best.pt", Path(tmp))
        except (StoreError, WriteError):  # a moved home, a full disk: their own one line
            raise
        except Exception as e:  # MlflowException: the artifact is not there
            # MLflow's words ("The following failures occurred while downloading one or
            # more artifacts from ...:") say neither which nor why: missing, where it is.
            why = ("is missing from the run's artifacts" if not tracker.has_artifact(
                run_id, "checkpoints/best.pt") else
                f"cannot be read ({str(e).splitlines()[0][:160]})")
            raise ModelFileError(f"{who}: its checkpoint (run {run_id}, "
                                 f"checkpoints/best.pt) {why}; rerun the study (asl-sweep "
                                 "run, same arguments) to train it again") from None
        try:
            return ModelFile.load(path)
        except ModelFileError as e:  # named by its temporary copy: name the trial's instead
            why = str(e).split(": ", 1)[-1]
            raise ModelFileError(f"{who}: its checkpoint (run {run_id}, "
                                 f"checkpoints/best.pt) cannot be read ({why}); delete it from "
                                 "the run's artifacts and rerun the study (asl-sweep run, same "
                                 "arguments) to train it again") from None


@torch.inference_mode()
def predict_labels(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    return predict_probabilities(model, x).argmax(1)


def predict_probabilities(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The model's class probabilities for uint8 images [N, 3, S, S] (the image alone)."""
    return _each_view(model, x, x.shape[-1], ("identity",))["identity"].numpy()


@torch.inference_mode()
def _each_view(model: torch.nn.Module, x: torch.Tensor, size: int,
               names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    batches = [each_view(model, x[i:i + EVAL_BATCH].float().div_(255), size, names)
               for i in range(0, len(x), EVAL_BATCH)]
    if not batches:
        return {v: torch.zeros(0, 0) for v in names}
    return {v: torch.cat([b[v] for b in batches]) for v in names}


@dataclass
class Repeat:
    """One repeat of the final configuration, its checkpoint read once: the model alone (no
    views), built from its file."""
    trial: int
    fold: int
    file: ModelFile
    model: torch.nn.Module

    @classmethod
    def of(cls, trial: int, fold: int, file: ModelFile) -> Repeat:
        """The model of `file` alone: its views set aside (a score chooses its own)."""
        file.views = "none"
        return cls(trial, fold, file, file.build())


def load_repeats(tracker: Tracker, trials: list[FrozenTrial]) -> list[Repeat]:
    repeats = []
    for t in trials:
        signals.check()  # Ctrl-C / SIGTERM: stop between two repeats; nothing is saved yet
        outcome = outcome_of(t)
        repeats.append(Repeat.of(t.number, outcome.fold if outcome else 0,
                                 load_checkpoint(tracker, t)))
    return repeats


def _images(data: StudyData, repeat: Repeat, split: str
            ) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
    """A repeat's images on `split` ("test", or "val": the validation fold it was trained
    against), their labels and their people (None where the data has none)."""
    size = repeat.file.spec.image_size
    if split == "test":
        test = data.test(size)
        return test.x, test.y.numpy(), None
    part = data.split(size, repeat.fold)
    people = data.groups[part.val_index] if data.groups is not None else None  # their names
    return part.x_val.cpu(), part.y_val.cpu().numpy(), people


def score_repeats(data: StudyData, repeats: list[Repeat], split: str = "test",
                  views: str = "none") -> tuple[list[Scored], list[Scored]]:
    """Each repeat on `split`, averaged over test-time `views`, and the same repeats
    without them (the same list where `views` is "none"): each view computed once."""
    scored, plain = [], []
    for r in repeats:
        signals.check()
        x, y, people = _images(data, r, split)
        each = _each_view(r.model, x, r.file.spec.image_size, VIEW_SETS[views])
        p = set_probabilities(each, views).numpy()
        fold = r.fold % len(data.splits.folds)  # repeat r trains on fold r, wrapping
        scored.append(Scored(r.trial, fold, replace(r.file, views=views), p.argmax(1), y, p,
                             split, people))
        if views != "none":  # the image alone: one of the views just computed
            q = each["identity"].numpy()
            plain.append(Scored(r.trial, fold, r.file, q.argmax(1), y, q, split, people))
    return scored, plain or scored


def score_trials(data: StudyData, tracker: Tracker, trials: list[FrozenTrial],
                 split: str = "test", views: str = "none") -> list[Scored]:
    """Each trial's best checkpoint on `split`: "test", or "val" (each repeat on the
    validation fold it was trained against), averaged over test-time `views`."""
    return score_repeats(data, load_repeats(tracker, trials), split, views)[0]


def choose_views(data: StudyData, repeats: list[Repeat], setting: str) -> dict:
    """The test-time views (models/views.py) the final configuration is scored, exported and
    served with, chosen on validation only: every repeat on its own fold's validation
    images, each candidate set against no views, image by image. The gain of a set is the
    mean over validation people (or images, where the data has none) of its accuracy gain,
    pooled over the repeats; `auto` adopts the largest gain whose lower bound over those
    people (one-sided 97.5% Student t over at least MIN_PEOPLE, Bonferroni over the sets;
    `_paired_gain`) is above 0, `off` none, a set's name that set."""
    if setting == "off":
        return {"views": "none", "described": describe("none"), "setting": setting,
                "rule": "tta: off", "gains": {}}
    candidates = list(AUTO_SETS) if setting == "auto" else [setting]
    started = time.perf_counter()
    right: dict[str, list[np.ndarray]] = {v: [] for v in ["none", *candidates]}
    units: list[np.ndarray] = []
    needed = tuple(v for v in VIEWS if any(v in VIEW_SETS[s] for s in right))
    for r in repeats:
        signals.check()
        x, y, people = _images(data, r, "val")
        each = _each_view(r.model, x, r.file.spec.image_size, needed)  # each view once
        for views in right:
            right[views].append(set_probabilities(each, views).argmax(1).numpy() == y)
        # The unit resampled: a person, or an image where the data has none (its index in
        # the whole set). Not a person of a fold: repeats past the last fold wrap to the
        # first, and its people counted twice read as twice the people.
        units.append(people.astype(str) if people is not None else
                     data.split(r.file.spec.image_size, r.fold).val_index.astype(str))
    picked = pick_views({v: np.concatenate(r) for v, r in right.items()},
                        np.concatenate(units), setting,
                        "people" if data.groups is not None else "images")
    return picked | {"seconds": round(time.perf_counter() - started, 1)}


def pick_views(right: dict[str, np.ndarray], unit: np.ndarray, setting: str,
               over: str) -> dict:
    """choose_views' rule on validation: `right[set]` says, image by image, whether the
    model with that set of views was right ("none": no views), `unit` each image's person
    (or the image itself)."""
    plain = right["none"].astype(np.float64)
    sets = [v for v in right if v != "none"]
    # Adopting: a one-sided bound at 97.5%, Bonferroni over the sets compared.
    gains = {v: _paired_gain(right[v] - plain, unit, 2.5 / len(sets)) for v in sets}
    if setting == "auto":
        sure = {v: g for v, g in gains.items() if g["lower"] is not None and g["lower"] > 0}
        views = max(sure, key=lambda v: sure[v]["gain"]) if sure else "none"
        rule = (f"tta: auto, chosen on the validation split of each repeat's own fold: the "
                f"largest gain over no views whose lower bound over validation {over} "
                f"(one-sided 97.5% t over at least {MIN_PEOPLE} of them, Bonferroni "
                f"over the {len(sets)} sets) is above 0; never chosen by test")
    else:
        views = setting
        rule = f"tta: {setting}, set by the study (its validation gain shown, not used)"
    return {"views": views, "described": describe(views), "setting": setting, "rule": rule,
            "gains": gains, "over": over}


def _paired_gain(diff: np.ndarray, unit: np.ndarray, lower_at: float = 2.5) -> dict:
    """The mean over units of each unit's mean paired difference, with its two-sided 95%
    Student t interval (`ci`) and the one-sided bound at percentile `lower_at` (`lower`),
    over the units; below MIN_PEOPLE units no bound (None: a handful of people can agree by
    chance, and two that do have no spread). Student's t, not a percentile bootstrap: at the
    0.625% a Bonferroni over four sets asks for, resampling people adopted one of four sets
    with no true gain 4.4-6.6% of the time on 8-25 people, against the 2.5% promised
    (benchmarks/tta_bound.py)."""
    names, inverse = np.unique(unit, return_inverse=True)
    count = np.bincount(inverse, minlength=len(names))
    per_unit = np.bincount(inverse, weights=diff, minlength=len(names)) / count
    n, gain = len(names), float(per_unit.mean())
    if n < 2:  # one unit has no spread: no interval
        return {"gain": gain, "ci": None, "lower": None, "units": n}
    se = statistics.stdev(per_unit.tolist()) / math.sqrt(n)
    half = t_quantile(0.975, n - 1) * se
    lower = gain - t_quantile(1.0 - lower_at / 100.0, n - 1) * se if n >= MIN_PEOPLE else None
    return {"gain": gain, "ci": [gain - half, gain + half], "lower": lower, "units": n}


def score_final(data: StudyData, tracker: Tracker, trials: list[FrozenTrial], tta: str,
                split: str = "test", chosen: dict | None = None) -> tuple[list[Scored], dict]:
    """The final configuration's repeats scored on `split` with the test-time views chosen
    on validation (`choose_views`; `chosen`: a choice made earlier for these same repeats,
    reused as it stands); where views were adopted, the same repeats' mean without them too
    (`without`), so the report can show what they changed. Each checkpoint is read once."""
    repeats = load_repeats(tracker, trials)
    views = dict(chosen) if chosen else choose_views(data, repeats, tta)
    scored, plain = score_repeats(data, repeats, split, views["views"])
    views.pop("without", None)
    if views["views"] != "none":
        views["without"] = {"split": split, "mean": statistics.fmean(s.accuracy for s in plain)}
    return scored, views


def earlier_views(final: dict | None, trials: list[FrozenTrial], tta: str) -> dict | None:
    """The views the study's final score chose (its record's), where it scored these same
    repeats with the same `tta` setting: what report, export and evaluate reuse instead of
    choosing again."""
    if not final or not final.get("tta") or final.get("trials") != [t.number for t in trials]:
        return None
    return final["tta"] if final["tta"].get("setting") == tta else None


def bootstrap_interval(scored: list[Scored], groups: list[str] | None,
                       seed: int = 0) -> tuple[float, float]:
    """95% expanded BCa interval (search/intervals.py) of the mean accuracy over repeats,
    resampling people (or images where there are no groups) with replacement: on the test
    split the same draw for every repeat (they scored the same images), on validation each
    fold's repeats on one draw of its own (repeats past the last fold score the first fold's
    images again), expanded for the fewest units of a fold. Over simulated test people whose
    accuracies spread as Beta(4, 1) (benchmarks/interval_cover.py), the plain 2.5% and
    97.5% percentiles missed the people's mean accuracy 11.9% of the time over 10 people
    and 6.3% over 30, against 5%; expanded, 7.3% and 5.1%; expanded BCa, 6.7% and 4.3%.
    Where a quarter of the people fail: expanded 13.3% and 8.2%, expanded BCa 10.3% and
    5.9%."""
    rng = np.random.default_rng(seed)
    test = all(s.split == "test" for s in scored)
    folds = [list(range(len(scored)))] if test else [
        [i for i, s in enumerate(scored) if s.fold == fold]
        for fold in dict.fromkeys(s.fold for s in scored)]
    accuracy, full = np.empty((BOOTSTRAP, len(scored))), np.empty(len(scored))
    pieces, units = [], []
    for at in folds:
        people = groups if test else scored[at[0]].people
        accuracy[:, at], full[at], without = _resampled([scored[i] for i in at], people, rng)
        pieces.append((at, without))
        units.append(without.shape[0])
    # The jackknife: the mean over repeats without each unit of each fold in turn.
    left_out = np.concatenate([
        (full.sum() - full[at].sum() + without.sum(axis=1)) / len(scored)
        for at, without in pieces])
    return bca_interval(accuracy.mean(axis=1), float(full.mean()), left_out, min(units))


def _resampled(scored: list[Scored], groups,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over the images the repeats share, split in units (people, or images where `groups`
    is None): [BOOTSTRAP, repeats] each repeat's accuracy on the same draws of units; each
    repeat's accuracy [repeats]; and [units, repeats] each one's without each unit."""
    correct = np.stack([s.predictions == s.truth for s in scored]).astype(np.float64)
    units = np.asarray(groups) if groups is not None else np.arange(correct.shape[1]).astype(str)
    names, inverse = np.unique(units, return_inverse=True)
    # Per unit: how many images, and how many right (per repeat).
    count = np.bincount(inverse, minlength=len(names)).astype(np.float64)
    right = np.stack([np.bincount(inverse, weights=c, minlength=len(names)) for c in correct])
    draws = rng.integers(0, len(names), (BOOTSTRAP, len(names)))
    weights = np.stack([np.bincount(d, minlength=len(names)) for d in draws])  # [B, units]
    rest = np.maximum(count.sum() - count, 1.0)[:, None]  # one unit alone: no jackknife
    return ((weights @ right.T) / (weights @ count)[:, None], right.sum(axis=1) / count.sum(),
            (right.sum(axis=1)[None, :] - right.T) / rest)


def _people_of_folds(scored: list[Scored]) -> list[str] | None:
    """On validation: every repeat's people side by side (None where the data has none)."""
    if any(s.people is None for s in scored):
        return None
    return np.concatenate([s.people for s in scored]).tolist()


def summarize(scored: list[Scored], groups: list[str] | None, split: str) -> dict:
    accs = [s.accuracy for s in scored]
    lo, hi = bootstrap_interval(scored, groups)
    mean = statistics.fmean(accs)
    std = statistics.stdev(accs) if len(accs) >= 2 else 0.0
    own_folds = any(s.split != "test" for s in scored)  # each repeat on its own images
    if own_folds:
        groups = _people_of_folds(scored)
    n_images = sum(len(s.truth) for s in scored) if own_folds else len(scored[0].truth)
    people = len(set(groups)) if groups is not None else 0
    unit = (f"{people} {'person' if people == 1 else 'people'}" if groups is not None
            else f"{n_images} image{'' if n_images == 1 else 's'}")
    if own_folds:
        unit += ", each repeat on its own validation fold"
    if groups is not None and people < MIN_PEOPLE:
        unit += ", too few for a reliable interval"
    # One repeat has no seed spread to show: "+- 0.000" would read as a steady result.
    spread = (f"+- {std:.3f} over {len(accs)} repeats" if len(accs) > 1
              else "from 1 repeat, no seed spread")
    return {"split": split, "trials": [s.trial for s in scored], "folds": [s.fold for s in scored],
            "accuracy": accs, "mean": mean, "std": std, "ci": [lo, hi], "ci_over": unit,
            "n_images": n_images,
            "summary": f"{mean:.3f} {spread} (95% CI {lo:.3f}-{hi:.3f} by BCa bootstrap over "
                       f"{unit})"}


def breakdown(scored: list[Scored], groups: list[str] | None, classes: list[str]) -> dict:
    """Where a configuration fails on a split: accuracy per person (worst first) and per
    class, each the mean over repeats, and the confusion matrix summed over repeats (rows:
    the true class, columns: the predicted). On validation, where each repeat scored its own
    fold, every repeat's images count where they fall."""
    if any(s.split != "test" for s in scored):
        right = np.concatenate([s.predictions == s.truth for s in scored]).astype(np.float64)
        truth = np.concatenate([s.truth for s in scored])
        groups = _people_of_folds(scored)
    else:
        right = np.stack([s.predictions == s.truth for s in scored]).mean(axis=0)  # per image
        truth = scored[0].truth

    def rows(keys: np.ndarray, names: list[str], key: str) -> list[dict]:
        out = []
        for k, name in enumerate(names):
            mask = keys == k
            if mask.any():
                out.append({key: name, "images": int(mask.sum()),
                            "accuracy": round(float(right[mask].mean()), 4)})
        return out

    people = []
    if groups is not None:
        names, inverse = np.unique(np.asarray(groups), return_inverse=True)
        people = sorted(rows(inverse, [str(n) for n in names], "person"),
                        key=lambda r: (r["accuracy"], r["person"]))
    matrix = np.sum([confusion(s, classes) for s in scored], axis=0)
    return {"by_person": people, "by_class": rows(truth, classes, "class"),
            "confusion": matrix.tolist(), "classes": list(classes)}


def failure_lines(b: dict, split: str = "test", limit: int = 5) -> list[str]:
    """The breakdown as a few lines of text: worst people, worst classes, top confusions,
    each naming the split it was measured on."""
    lines = []
    if b["by_person"]:
        shown = ", ".join(f"{r['person']} {r['accuracy']:.2f} ({r['images']})"
                          for r in b["by_person"][:limit])
        lines.append(f"worst {split} people of {len(b['by_person'])} (accuracy, images): "
                     f"{shown}")
    worst = sorted(b["by_class"], key=lambda r: (r["accuracy"], r["class"]))[:limit]
    lines.append(f"worst {split} classes: " + ", ".join(f"{r['class']} {r['accuracy']:.2f}"
                                               for r in worst))
    m, names = np.asarray(b["confusion"]), b["classes"]
    off = [(int(m[i, j]), names[i], names[j]) for i in range(len(names))
           for j in range(len(names)) if i != j and m[i, j]]
    if off:
        pairs = ", ".join(f"{a} -> {p} {n}"
                          for n, a, p in sorted(off, key=lambda o: -o[0])[:limit])
        lines.append(f"most confused on {split} (true -> predicted, images over repeats): "
                     + pairs)
    return lines


def confusion(scored: Scored, classes: list[str]) -> list[list[int]]:
    n = len(classes)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (scored.truth, scored.predictions), 1)
    return matrix.tolist()


def final_score(session: Session) -> dict:
    """The final configuration (the last stage's) scored once per repeat on the test split.
    The model to export is the ensemble of its repeats or its best repeat by validation
    (`final_model`), never chosen by test; both are scored here."""
    if not session.results:
        return {}
    cfg, stage = session.cfg, session.cfg.stages[-1]
    stored = read(session.record).get(RecordKey.FINAL)
    if stored and stored.get("trials") == session.results[-1].repeats:  # scored earlier
        session.log(f"final test accuracy ({stage.name}'s configuration, scored earlier): "
                    f"{stored['summary']}")
        if cfg.final_model == "refit" and "refit" not in stored:  # set after the scoring
            return _refit_after(session, stored)
        return stored
    study = create_stage_study(cfg, len(cfg.stages) - 1, session.storage, session.worker)[0]
    # One process scores it: runs that finish together (several `run`s of one study) each
    # scored and logged the same tables to the study's MLflow run at once (an integrity
    # error on MLflow's tag of logged tables stopped one with a traceback).
    if not does_job(study, FINAL_CLAIM, RecordKey.FINAL, keys_of=session.record):
        stored = read(session.record)[RecordKey.FINAL]
        session.log(f"final test accuracy ({stage.name}'s configuration, scored by another "
                    f"run of the study): {stored['summary']}")
        return stored
    with holding(study, FINAL_CLAIM):  # minutes with refits: the others wait, not redo it
        final = _scored(session, study)
    session.log(f"\nfinal test accuracy of {stage.name}'s configuration: {final['summary']}\n"
                f"  rule: {TEST_RULE}")
    for line in [*final_model_lines(final, cfg.final_model, cfg.data.unit),
                 *views_lines(final["tta"])]:
        session.log(f"  {line}")
    for line in failure_lines(final["breakdown"]):
        session.log(f"  {line}")
    return final


def _scored(session: Session, study: optuna.Study) -> dict:
    """The final score itself, by the run that holds its claim, saved to the record."""
    cfg, stage = session.cfg, session.cfg.stages[-1]
    view = StageView(stage, stage_trials(study), session.results[-1], {})
    test = session.data.test()
    scored, views = score_final(session.data, session.mirror.tracker, view.repeats(), cfg.tta)
    final = summarize(scored, test.groups, "test")
    final.update(stage=stage.name, rule=TEST_RULE, export_trial=view.export_trial().number,
                 tta=views)
    final["breakdown"] = breakdown(scored, test.groups, list(session.data.classes))
    final.update(final_candidates(scored, final["export_trial"], test.groups)[2])
    if cfg.final_model == "refit":
        _refit(session, final, [(s.trial, s.fold, s.model_file) for s in scored])
    signals.check()  # a stop asked for while scoring: exit 130, and a rerun scores again
    save_final(session.record, final)
    session.mirror.final_scored(final, TEST_RULE, session.data.test_dataset())
    return final


def _refit_after(session: Session, stored: dict) -> dict:
    """`final_model: refit` set after the study was scored: its refits trained and scored
    once, by one of the runs that find them missing; the others wait for them (two runs
    of one study each trained every refit: 4 refit runs for 2 repeats)."""
    cfg = session.cfg
    study = create_stage_study(cfg, len(cfg.stages) - 1, session.storage, session.worker)[0]
    if not does_job(study, REFIT_CLAIM, lambda keys: "refit" in keys.get(RecordKey.FINAL, {}),
                    keys_of=session.record):
        stored = read(session.record)[RecordKey.FINAL]
        session.log(f"refit on every non-test {cfg.data.unit} (final_model: refit), trained "
                    f"by another run of the study: test {stored['refit']['mean']:.3f}")
        return stored
    with holding(study, REFIT_CLAIM):
        view = StageView(cfg.stages[-1], stage_trials(study), session.results[-1], {})
        repeats = load_repeats(session.mirror.tracker, view.repeats())
        _refit(session, stored, [(r.trial, r.fold, r.file) for r in repeats])
        save_final(session.record, stored)
    refit = stored["refit"]  # the first score prints it in its block; this run, here
    session.log(f"refit on every non-test {cfg.data.unit}, the exported model (final_model: "
                f"refit): test {refit['mean']:.3f} (its {len(refit['runs'])} models averaged; "
                f"one by one {refit['members_mean']:.3f} +- {refit['members_std']:.3f})")
    return stored


def _refit(session: Session, final: dict, repeats: list[tuple[int, int, ModelFile]]) -> None:
    """`final_model: refit`: each repeat trained again on every non-test person (refit.py),
    scored on test with the views chosen for the repeats; the entry `refit` of `final`."""
    from asl_sweep.search.refit import refit_runs  # the trainer: loaded where it trains

    runs = refit_runs(session, repeats)
    members = load_refits(session.mirror.tracker, runs, [trial for trial, _, _ in repeats])
    final["refit"] = refit_candidate(session.data, members, runs, final["tta"]["views"],
                                     session.data.test().groups)[1]
    session.mirror.refit_scored(final["refit"])


def load_refits(tracker: Tracker, runs: list[str], trials: list[int]) -> list[Repeat]:
    """The refit models on runs `runs` (of repeats `trials`), each read once."""
    members = []
    for run_id, trial in zip(runs, trials, strict=True):
        signals.check()
        members.append(Repeat.of(trial, 0, load_run_checkpoint(
            tracker, run_id, f"the refit of trial {trial}")))
    return members


def refit_candidate(data: StudyData, members: list[Repeat], runs: list[str], views: str,
                    groups: list[str] | None) -> tuple[Scored, dict]:
    """The refit models scored on test with `views` and averaged: the model
    `final_model: refit` exports, and its test entry."""
    scored = score_repeats(data, members, "test", views)[0]
    model = ensemble_of(scored) if len(scored) >= 2 else scored[0]
    entry = summarize([model], groups, "test") | {
        "members": [m.trial for m in members], "runs": runs,
        "members_mean": statistics.fmean(s.accuracy for s in scored),
        "members_std": statistics.stdev(s.accuracy for s in scored) if len(scored) > 1 else 0.0,
        "by_person": breakdown([model], groups, list(data.classes))["by_person"]}
    return model, entry
