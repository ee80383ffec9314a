"""The study report, read back from what is stored (Optuna trials, MLflow runs, checkpoints):
a Markdown file and a self-contained HTML page that read like the student's log, goal by goal.
Every number says which split it is on; the number to quote is the test score, which nothing
in the search saw."""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
from optuna.importance import get_param_importances
from optuna.trial import FrozenTrial, TrialState

from asl_sweep.results.document import Doc
from asl_sweep.results.export import load_exported
from asl_sweep.results.readback import read_final, read_stages, stopped_stage
from asl_sweep.runtime.errors import ConfigError, environment_fault
from asl_sweep.runtime.files import atomic_write_text, make_folder
from asl_sweep.runtime.workspace import Workspace, shown
from asl_sweep.search import (
    SEARCH_ROLES,
    TEST_RULE,
    Role,
    StageView,
    TrialKey,
    confusion,
    load_stage_study,
    open_data,
    optuna_storage,
    outcome_of,
    role_of,
    views_lines,
)
from asl_sweep.settings.config import CURVE_METRICS
from asl_sweep.settings.spec import StudyConfig
from asl_sweep.tracking.plots import (
    plot_confusion,
    plot_curves_compare,
    plot_gallery,
    plot_history,
    plot_importance,
    plot_repeats,
)
from asl_sweep.tracking.tracker import Tracker

GAP_OVERFIT, FIT_LOW = 0.15, 0.8
MIN_IMPORTANCE_TRIALS = 5  # fewer searched trials say nothing about importance
ROLE = {Role.INCUMBENT: "incumbent", Role.SEED: "human", Role.SEARCH: "search",
        Role.CONFIRM: "repeat"}


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# What a trial's partial curve is, by its state (a failed or interrupted one: stopped).
_PARTIAL = {TrialState.PRUNED: "pruned", TrialState.RUNNING: "so far"}


def _acc(t: FrozenTrial, key: str, which: str = "metrics", reported: str = "") -> str:
    """A trial's `key` at its best epoch (`which` "metrics") or its last ("last")."""
    outcome = outcome_of(t)
    value = getattr(outcome, which).get(key) if outcome is not None else None
    if value is None and key == reported and t.intermediate_values:
        # A trial pruned, stopped or still training has only the epochs it reported (its
        # stage metric, `reported`): the best of them, or the last.
        steps = t.intermediate_values
        if which == "metrics":
            return f"{max(steps.values()):.3f} ({_PARTIAL.get(t.state, 'stopped')})"
        return f"{steps[max(steps)]:.3f} (epoch {max(steps)})"
    return f"{value:.3f}" if value is not None else "-"


def diagnosis(train_acc: float, val_acc: float) -> str:
    gap = train_acc - val_acc
    if train_acc < FIT_LOW:
        return (f"train accuracy {train_acc:.1%} is low: the model underfits; more capacity, "
                "more epochs or a higher learning rate should help before more regularization.")
    if gap > GAP_OVERFIT:
        return (f"train {train_acc:.1%} vs validation {val_acc:.1%} (gap {gap:.1%}): it "
                "overfits; more regularization (dropout, weight decay, augmentation) or more "
                "data should help.")
    return (f"train {train_acc:.1%} vs validation {val_acc:.1%} (gap {gap:.1%}): fit and "
            "generalization are balanced; more capacity may now pay off.")


def write_report(cfg: StudyConfig, ws: Workspace, out: Path | None = None, log=print) -> Path:
    views = read_stages(cfg, ws)
    if not any(v.trials for v in views):
        raise ConfigError(f"study {cfg.study}: nothing recorded yet in {shown(ws.storage)}; "
                          "run it first (asl-sweep run)")
    folder = make_folder((out or ws.reports / cfg.study).resolve())
    tracker = Tracker(ws)
    experiment = tracker.client.get_experiment_by_name(cfg.study)
    if experiment is not None:  # a moved or copied home: refused before anything is written
        tracker.refuse_elsewhere(experiment.artifact_location, f"study {cfg.study}")
    final = read_final(cfg, ws)
    doc = Doc(folder)
    doc.h(1, f"asl-sweep report: {cfg.study}")
    if cfg.description:
        doc.p(cfg.description)
    data = cfg.data
    source = data.root or f"built-in synthetic {data.synthetic.kind} (letters A-I)"
    doc.p(f"Data: {source}, {data.image_size}px; "
          f"test {data.test_fraction}, validation {data.val_fraction}, split seed {data.seed}, "
          + ("person-disjoint" if data.root is None or data.group_pattern
             else "stratified by class") + f". Generated {datetime.now():%Y-%m-%d %H:%M}.")
    doc.h(2, "Summary")
    if final:
        doc.p(f"Final test accuracy of {final['stage']}'s configuration: {final['summary']}. "
              f"Rule: {TEST_RULE}.")
    else:
        stopped = stopped_stage(views)
        doc.p(f"No final test score: the study stopped at stage {stopped.stage.name} "
              f"({stopped.stopped})." if stopped is not None
              else "No final test score yet: the study has not finished.")
    doc.p("Validation numbers below chose the settings, so they are biased upward; each is the "
          "best epoch's, on the stage's validation split (repeats on their own folds).")
    summary_at = len(doc.blocks)
    rows = [_stage_section(doc, i, view, cfg, ws, tracker, folder)
            for i, view in enumerate(views, start=1)]
    header = ["stage", "goal", "decision", "validation (mean of repeats)", "student reported",
              "student's settings re-run", "carried"]
    if all(row[4] == "-" and row[5] == "-" for row in rows):  # no student settings: no columns
        header, rows = header[:4] + header[6:], [row[:4] + row[6:] for row in rows]
    doc.blocks.insert(summary_at, ("table", (header, rows)))
    if final:
        _final_section(doc, cfg, ws, folder)
    md_path = folder / "report.md"
    atomic_write_text(md_path, doc.markdown())
    atomic_write_text(folder / "report.html", doc.html(f"asl-sweep report: {cfg.study}"))
    kept = ""
    if experiment is not None:
        study_run = tracker.find_run(experiment.experiment_id, kind="study")
        if study_run:
            try:
                tracker.log_artifacts(study_run, [md_path, folder / "report.html",
                                                  *doc.images()], "report")
            except Exception as e:
                # A home others may only read (a shared results folder), or one that is full:
                # the report is written where asked; the copy on the run is what is missing.
                fault = environment_fault(e)
                if fault is None:
                    raise
                kept = (f" (not kept on the study's MLflow run: {str(fault).split(';')[0]}; "
                        "rerun report where the home can be written to keep it there)")
    log(f"report: {md_path} and {folder / 'report.html'}{kept}")
    return md_path


def _stage_section(doc: Doc, index: int, view: StageView, cfg: StudyConfig, ws: Workspace,
                   tracker: Tracker, folder: Path) -> list[str]:
    stage, result = view.stage, view.result
    prefix = folder / f"{index:02d}-{stage.name}"
    doc.h(2, f"Stage {index}: {stage.name}")
    doc.p(f"Goal: {stage.goal or '-'}. Metric: {stage.metric_heading} ({stage.direction})"
          + (f", target {stage.target}" if stage.target is not None else "")
          + f"; budget {view.budget} trials ({stage.sampler} sampler"
          + (f", {stage.moves} setting{'s' if stage.moves > 1 else ''} changed a trial from "
             "the start, in the space's order" if stage.moves else "")
          + ") after the incumbent"
          + (_confirm_words(stage.confirm) if stage.confirm and stage.target is None else "")
          + ".")
    doc.p("Started from: " + (", ".join(f"{k}={_fmt(v)}" for k, v in view.carried.items())
                              or "the base settings") + ".")
    seeds = [t for t in view.trials if role_of(t) == Role.SEED
             and t.state == TrialState.COMPLETE]
    reported = "; ".join(f"{t.user_attrs[TrialKey.REPORTED]:.3f}" for t in seeds
                         if TrialKey.REPORTED in t.user_attrs) or "-"
    rerun = "; ".join(f"{_acc(t, 'val_acc')} (trial {t.number})" for t in seeds) or "-"
    if not view.trials:
        doc.p("Not run yet.")
        return [stage.name, stage.goal, "not run", "-", reported, rerun, "-"]
    # The value the stage ranks and decides on, where the accuracies are not it.
    over = (f"; the mean of {view.folds} folds but for repeats, one fold each"
            if view.folds > 1 else "")
    ranked_by = [f"{stage.shown_metric} (best epoch{over})"] if view.ranked_apart else []
    rows = []
    for t in sorted(view.trials, key=lambda t: t.number):
        role = role_of(t)
        label = ROLE[role] + (
            f" of {t.user_attrs[TrialKey.CONFIRMS]}, r{t.user_attrs[TrialKey.REPEAT]}"
            if role == Role.CONFIRM else "") + (
            " (previous family)" if t.user_attrs.get(TrialKey.PREVIOUS_FAMILY)
            and role == Role.INCUMBENT else "")
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()) or (
            "(drawn when it starts)" if t.state == TrialState.WAITING and role == Role.SEARCH
            else "(as it came)")
        partial = stage.metric if stage.direction == "maximize" else ""  # what pruned ones have
        rows.append([str(t.number), label, t.state.name, params, _acc(t, "train_acc"),
                     _acc(t, "val_acc", reported=partial),
                     _acc(t, "val_acc", "last", partial),
                     *([f"{t.value:.3f}" if t.value is not None else "-"] if ranked_by else [])])
    doc.table(["trial", "role", "state", "parameters", "train acc", "val acc (best epoch)",
               "val acc (final epoch)", *ranked_by], rows)
    if view.stopped:
        doc.p(f"Stopped the study: {view.stopped}.")
        return [stage.name, stage.goal, "stopped the study (target missed)", "-", reported,
                rerun, "-"]
    if result is None:
        doc.p("No decision yet: the stage is unfinished.")
        return [stage.name, stage.goal, "unfinished", "-", reported, rerun, "-"]
    doc.p(f"Decision: {result.decision}.")
    for t in seeds:
        said = (f"the student reported {t.user_attrs[TrialKey.REPORTED]:.3f}; "
                if TrialKey.REPORTED in t.user_attrs else "")
        doc.p(f"Human baseline (trial {t.number}): {said}the same settings re-run here reached "
              f"validation accuracy {_acc(t, 'val_acc')}; the stage's result: "
              f"{stage.shown_metric} {result.value:.3f}.")
    doc.p("Diagnosis: " + diagnosis(result.metrics["train_acc"], result.metrics["val_acc"]))
    _evidence_plot(doc, view, prefix)
    _curves(doc, view, tracker, prefix, seeds)
    _search_plots(doc, view, cfg, ws, prefix)
    value = result.value if result.evidence else result.metrics.get(stage.metric, result.value)
    return [stage.name, stage.goal, result.status, f"{stage.shown_metric} {value:.3f}", reported,
            rerun, ", ".join(f"{k}={_fmt(v)}" for k, v in result.params.items()) or "no change"]


def _confirm_words(confirm) -> str:
    if confirm.racing:
        return (f", then the top {confirm.top} raced against the incumbent on "
                f"{confirm.min_repeats} to {confirm.max_repeats} fresh paired repeats "
                f"(adopted at {confirm.level:.0%} one-sided confidence, Bonferroni over the "
                f"candidates and the looks; each repeat at the best epoch of one half of its "
                f"validation people, scored on the other half, over 20 splits in halves)")
    return f", then the top {confirm.top} confirmed over {confirm.repeats} paired repeats"


def _evidence_plot(doc: Doc, view: StageView, prefix: Path) -> None:
    evidence = view.result.evidence
    if not evidence.get("configs"):
        return
    configs = {}
    for number, stats in evidence["configs"].items():
        name = ("incumbent" if int(number) == evidence["incumbent"] else f"trial {number}")
        configs[f"{name} ({len(stats['values'])})"] = list(stats["values"].values())
    doc.img(plot_repeats(configs, view.stage.metric, prefix.with_name(prefix.name + "-repeats.png"),
                         f"{view.stage.name}: paired repeats"),
            f"{view.stage.name} paired repeats")


def _curves(doc: Doc, view: StageView, tracker: Tracker, prefix: Path,
            seeds: list[FrozenTrial]) -> None:
    """The carried trial's learning curves beside the human baseline's."""
    runs = {}
    for label, t in [(f"carried (trial {view.result.trial})", view.trial(view.result.trial)),
                     *((f"human (trial {s.number})", s) for s in seeds[:1])]:
        run_id = t.user_attrs.get(TrialKey.RUN)
        if run_id and label not in runs:
            history = {k: tracker.metric_history(run_id, k) for k in CURVE_METRICS}
            runs[label] = ([m.step for m in history["val_acc"]],
                           {k: [m.value for m in v] for k, v in history.items()})
    if runs:
        doc.img(plot_curves_compare(runs, prefix.with_name(prefix.name + "-curves.png"),
                                    f"{view.stage.name}: learning curves"),
                f"{view.stage.name} learning curves")


def _search_plots(doc: Doc, view: StageView, cfg: StudyConfig, ws: Workspace,
                  prefix: Path) -> None:
    stage = view.stage
    searched = sorted((t for t in view.trials if t.state == TrialState.COMPLETE
                       and role_of(t) in SEARCH_ROLES), key=lambda t: t.number)
    # A pruned trial is drawn at the best value it reported before it was stopped (it never
    # counts toward the best so far).
    pick = max if stage.direction == "maximize" else min
    pruned = sorted((t.number, pick(t.intermediate_values.values())) for t in view.trials
                    if t.state == TrialState.PRUNED and role_of(t) in SEARCH_ROLES
                    and t.intermediate_values)
    if searched or pruned:
        doc.img(plot_history([t.number for t in searched], [t.value for t in searched],
                             stage.metric, stage.direction == "maximize",
                             prefix.with_name(prefix.name + "-history.png"),
                             f"{stage.name}: search", pruned=pruned),
                f"{stage.name} search history")
    if len(searched) < MIN_IMPORTANCE_TRIALS or len(stage.space) < 2:
        return  # importance needs enough trials to compare and more than one parameter
    study = load_stage_study(cfg, stage, optuna_storage(ws.storage))
    try:
        with warnings.catch_warnings():  # Optuna's notes on its estimate stay off the terminal
            warnings.filterwarnings("ignore", category=UserWarning, module=r"optuna\.")
            importance = get_param_importances(study, params=list(stage.space))
    except (RuntimeError, ValueError, ZeroDivisionError):  # nothing varied enough
        return
    doc.img(plot_importance(importance, prefix.with_name(prefix.name + "-importance.png"),
                            f"{stage.name}: parameter importance"),
            f"{stage.name} parameter importance")


def _final_section(doc: Doc, cfg: StudyConfig, ws: Workspace, folder: Path) -> None:
    exported = load_exported(cfg, ws)
    test, classes = exported.test, exported.classes
    doc.h(2, "Final model")
    doc.p(f"Test accuracy of {exported.view.stage.name}'s configuration: {test['summary']}. "
          f"Per repeat: " + ", ".join(f"trial {n}: {a:.3f}" for n, a in
                                       zip(test["trials"], test["accuracy"], strict=True)) + ".")
    best = test["best_repeat"]
    ens = test.get("ensemble")
    one = " (one repeat: that repeat)" if cfg.final_model == "ensemble" and not ens else ""
    doc.p(f"The exported model is {exported.described} (final_model: {cfg.final_model}{one}, "
          f"fixed before the test split was read); on the test split it scores "
          f"{exported.scored.accuracy:.3f}. "
          + (f"Both candidates on test: the ensemble of the {len(test['trials'])} repeats "
             f"{ens['mean']:.3f} (95% CI "
             f"{ens['ci'][0]:.3f}-{ens['ci'][1]:.3f}), the best repeat by validation (trial "
             f"{best['trial']}) {best['accuracy']:.3f}, the repeats' mean {test['mean']:.3f}."
             if ens else f"The best repeat by validation is trial {best['trial']}.")
          + (f" The refit on every non-test {cfg.data.unit} (the repeats' settings and seeds "
             f"trained again on the training and validation {cfg.data.units}, the last epoch "
             "kept) "
             f"{test['refit']['mean']:.3f} (95% CI {test['refit']['ci'][0]:.3f}-"
             f"{test['refit']['ci'][1]:.3f}; one by one {test['refit']['members_mean']:.3f} "
             f"+- {test['refit'].get('members_std', 0.0):.3f})."
             if "refit" in test else ""))
    views = "; ".join(line.strip() for line in views_lines(test["tta"]))
    doc.p(views[0].upper() + views[1:] + ".")
    matrix = confusion(exported.scored, classes)
    doc.img(plot_confusion(matrix, classes, folder / "confusion.png",
                           f"test split, {exported.title}"), "confusion matrix")
    doc.p(f"Per class, the exported model ({exported.title}) on the test split, as in the "
          "confusion matrix:")
    doc.table(["class", "test accuracy", "images"],
              [[c, f"{matrix[i][i] / max(1, sum(matrix[i])):.1%}", str(sum(matrix[i]))]
               for i, c in enumerate(classes)])
    b = test.get("breakdown")
    if b and b["by_person"]:
        doc.h(3, "Where it fails: the test people, worst first")
        doc.p(f"Accuracy of each test person (mean over the {len(test['trials'])} repeats), the "
              "people the search never saw. A few people far below the rest point at hands, "
              "backgrounds or lighting the training people lacked; the same letters failing "
              "for everyone point at the classes.")
        doc.table(["person", "test accuracy", "images"],
                  [[r["person"], f"{r['accuracy']:.1%}", str(r["images"])]
                   for r in b["by_person"]])
    if b:
        doc.p(f"Per class, the mean over the configuration's repeats ({len(test['trials'])}): "
              + ", ".join(f"{r['class']} {r['accuracy']:.1%}" for r in b["by_class"]) + ".")
    _gallery(doc, cfg, ws, exported, folder)


GALLERY_PEOPLE = 4  # the worst test people shown
GALLERY_PAIRS = 3  # the most confused (true, predicted) pairs shown


def _gallery(doc: Doc, cfg: StudyConfig, ws: Workspace, exported, folder: Path) -> None:
    """What fails, as pictures: the exported model's misclassified test images of the worst
    test people and of the most confused pairs, each with its true and predicted letter and
    the confidence of the prediction."""
    scored, classes = exported.scored, exported.classes
    test = open_data(cfg, ws).test(exported.image_size)
    wrong = np.flatnonzero(scored.predictions != scored.truth)
    if not len(wrong):
        return
    confidence = (scored.probabilities.max(1) if scored.probabilities is not None
                  else np.full(len(scored.truth), np.nan))

    def item(i: int) -> tuple:
        return (test.x[i].numpy(), f"{classes[scored.truth[i]]} -> {classes[scored.predictions[i]]}"
                                   f" {confidence[i]:.2f}")

    rows = []
    if test.groups is not None:
        groups = np.asarray(test.groups)
        people = sorted(set(groups), key=lambda g: ((scored.predictions == scored.truth)[
            groups == g].mean(), g))[:GALLERY_PEOPLE]
        for g in people:
            mine = wrong[groups[wrong] == g]
            acc = (scored.predictions == scored.truth)[groups == g].mean()
            rows.append((f"{g}\n{acc:.0%} right", [item(i) for i in mine]))
    pairs: dict[tuple[int, int], list[int]] = {}
    for i in wrong:
        pairs.setdefault((int(scored.truth[i]), int(scored.predictions[i])), []).append(int(i))
    for (t, p), idx in sorted(pairs.items(), key=lambda kv: -len(kv[1]))[:GALLERY_PAIRS]:
        rows.append((f"{classes[t]} read as {classes[p]}\n{len(idx)} images",
                     [item(i) for i in idx]))
    doc.h(3, "What fails, as pictures")
    doc.p(f"Misclassified test images of {exported.title}: the worst test people (rows "
          "named by person), then the most confused pairs; each image says its true letter "
          "-> the predicted one, and the model's confidence in that prediction.")
    doc.img(plot_gallery(rows, folder / "failures.png", "test split: what the model gets wrong"),
            "failure gallery")
