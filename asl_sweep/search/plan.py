"""What a study will do, before anything runs (`asl-sweep run --dry-run`): what it reads (its
data, split as a run splits it, and its pretrained weights) and per stage what it searches,
on which metric, and how many trainings of how many epochs it plans. Reads the settings,
lists the photo folder (no image decoded) and looks for weights files (none read or
downloaded); opens no store. `run` checks the same inputs before it starts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from asl_sweep.data.splits import folders_swapped, person_pattern
from asl_sweep.search.progress import planned_trials, shown
from asl_sweep.settings.config import apply_overrides
from asl_sweep.settings.spec import Searched, StageConfig, StudyConfig

if TYPE_CHECKING:
    import numpy as np


def plan_lines(cfg: StudyConfig, data: Sequence[str]) -> list[str]:
    """The plan, as lines: `data` says what the study reads (input_lines)."""
    lines = [f"study {cfg.study}: dry run: settings read and checked, nothing trained or "
             "recorded" + (f" ({cfg.description})" if cfg.description else ""), *data]
    low = high = 0
    for index, stage in enumerate(cfg.stages):
        least, most = _trainings(stage)
        low, high = low + least, high + most
        lines.append(f"stage {index + 1} of {len(cfg.stages)} {stage.name}: "
                     f"{stage.goal + ' ' if stage.goal else ''}[{stage.metric_heading}, "
                     f"{stage.sampler} sampler, pruner {stage.pruner}]")
        searched = [f"{key} {_range(raw)}" for key, raw in stage.space.items()]
        lines.append(f"  searches: {'; '.join(searched) if searched else 'nothing'}"
                     + (f" (each trial moves {stage.moves})" if stage.moves else ""))
        lines.append(f"  trainings: {_count(least, most)} of {_epochs(cfg, stage)} epochs: "
                     f"{_how(stage)}")
    least, most = _final_repeats(cfg.stages[-1])
    lines.append(_final_line(cfg, least, most))
    if cfg.final_model == "refit":
        low, high = low + least, high + most
    lines.append(f"in all: {_count(low, high)} trainings (a stage's later settings carry what "
                 "the earlier ones adopted; pruning stops some early)")
    return lines


def _final_repeats(stage: StageConfig) -> tuple[int, int]:
    """The fewest and the most repeats the last stage's configuration is scored over: its
    trial and the race's rounds (the incumbent's first round where nothing is raced), the
    fixed rule's repeats, or the one trial of a gate or a stage without confirmation."""
    confirm = stage.confirmation
    if confirm is None:
        return 1, 1
    if not confirm.racing:
        return confirm.repeats, confirm.repeats
    return 1 + confirm.min_repeats, 1 + confirm.max_repeats


def _final_line(cfg: StudyConfig, least: int, most: int) -> str:
    """The final phase: the test scored once, and with final_model: refit the trainings it
    adds (each repeat trained again on every non-test person)."""
    stage = cfg.stages[-1]
    repeats = f"{_count(least, most)} repeat{'s' if most != 1 else ''}"
    line = (f"final: {stage.name}'s configuration scored once on the test split over its "
            f"{repeats} (final_model: {cfg.final_model})")
    if cfg.final_model != "refit":
        return line
    stops = " at most" if apply_overrides(cfg.base, stage.fixed).early_stop else ""
    return (f"{line}; each repeat trained again on every non-test {cfg.data.unit}: "
            f"{_count(least, most)} more training{'s' if most != 1 else ''} of{stops} "
            f"{_epochs(cfg, stage)} epochs")


def _trainings(stage: StageConfig) -> tuple[int, int]:
    """The fewest and the most trainings a stage plans: its race may end at the first look
    or at max_repeats."""
    least = planned_trials(stage)  # a race's first look: min_repeats each
    confirm = stage.confirmation
    if confirm is None or not confirm.racing:
        return least, least
    return least, least + (confirm.top + 1) * (confirm.max_repeats - confirm.min_repeats)


def _how(stage: StageConfig) -> str:
    n = len(stage.seed_trials)
    seeds = f" ({n} of them {'seed trials' if n > 1 else 'a seed trial'})" if n else ""
    head = f"the incumbent + {stage.trials} search trials{seeds}"
    if stage.target is not None:
        return f"{head}, until one reaches {stage.shown_metric} {stage.target:g} (a gate)"
    confirm = stage.confirm
    if confirm is None:
        return f"{head}, the best adopted without a race"
    if not confirm.racing:
        return (f"{head}, then the top {confirm.top} and the incumbent {confirm.repeats} "
                "times each (their search trials the first)")
    return (f"{head}, then the top {confirm.top} raced against the incumbent on "
            f"{confirm.min_repeats} to {confirm.max_repeats} fresh paired repeats each")


def _epochs(cfg: StudyConfig, stage: StageConfig) -> str:
    if "epochs" in stage.space:
        return _range(stage.space["epochs"])
    return str(stage.fixed.get("epochs", cfg.base.epochs))


def _range(spec: Searched) -> str:
    """A searched setting as a person reads it (the stage's space holds them parsed)."""
    choices = getattr(spec, "choices", None)
    if choices is not None:
        return "in [" + ", ".join(shown(c) for c in choices) + "]"
    scale = ", log" if spec.log else ""
    step = getattr(spec, "step", None)
    steps = f", step {shown(step)}" if step not in (None, 1) else ""
    return f"from {shown(spec.low)} to {shown(spec.high)}{scale}{steps}"


def _count(least: int, most: int) -> str:
    return str(least) if least == most else f"{least} to {most}"


def data_source(cfg: StudyConfig) -> str:
    """The data a study reads, as its lines name it: the photo folder or the built-in set."""
    syn = cfg.data.synthetic
    return str(cfg.data.root) if cfg.data.root else (
        f"built-in synthetic {syn.kind} ({syn.per_class}/class, {syn.signers} signers)")


def input_lines(cfg: StudyConfig) -> list[str]:
    """What the study reads, checked as a run checks it (a run's refusal is refused here, in
    the same line): its data and how it splits, then the pretrained weights it loads."""
    return [*_data_lines(cfg), *_weights_lines(cfg)]


def _data_lines(cfg: StudyConfig) -> list[str]:
    """What the data is and how it splits, as a run will split it: the photo folder listed
    as a run lists it (no image decoded), the built-in set as it would be drawn. What a run
    refuses before decoding (a folder that is not there, a group_pattern that misses a
    file, too few people for the split) is refused here; the notes a run gives on people
    follow."""
    from asl_sweep.data.images import list_image_set
    from asl_sweep.data.studydata import describe_splits, resolve_splits

    names, labels, classes, skipped = list_image_set(cfg.data, cfg.data.image_size)
    groups, splits = resolve_splits(cfg.data, labels, classes, names)
    shown_classes = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    line = (f"data: {data_source(cfg)}: {len(names)} images ({shown_classes})"
            + (f", {skipped} skipped (data.on_bad_image: skip)" if skipped else "")
            + f", {cfg.data.image_size}px; "
            + describe_splits(cfg.data, splits, groups, len(classes))
            + " (test scored once, after the search)")
    return [line, *people_notes(cfg, names, groups)]


def _weights_lines(cfg: StudyConfig) -> list[str]:
    """Where each pretrained backbone a stage trains (its base, fixed settings and searched
    backbones) finds its weights: a file here, or a download a run will make."""
    wanted: dict[tuple[str, str], None] = {}
    for stage in cfg.stages:
        train = apply_overrides(cfg.base, stage.fixed)
        if train.model != "transfer":
            continue
        searched = getattr(stage.space.get("transfer.backbone"), "choices", None)
        for backbone in searched or [train.transfer.backbone]:
            wanted[(str(backbone), train.transfer.weights)] = None
    if not wanted:  # no pretrained backbone: torchvision is not loaded
        return []
    from asl_sweep.models.backbones import weights_note

    return [weights_note(backbone, weights) for backbone, weights in wanted]


def people_notes(cfg: StudyConfig, names: Sequence[str],
                 groups: np.ndarray | None) -> list[str]:
    """What a run says where the data's people and the stages' metrics disagree: a stage
    that chooses on people over images that name none (the metric falls back to val_acc),
    or file names that look as if they name people while the split is by image; and
    photos that look kept as PERSON/CLASS/FILE, whose classes would be the people."""
    swapped = folders_swapped(names)
    if swapped is not None:
        tops, subs = swapped

        def few(items: list[str]) -> str:
            return ", ".join(items[:6]) + (", ..." if len(items) > 6 else "")

        source = data_source(cfg)
        return [f"note: every folder in {source} ({len(tops)}: {few(tops)}) holds the same "
                f"{len(subs)} folders ({few(subs)}); if those are the classes and the folders "
                f"above them people ({source}/anna/{subs[0]}/01.jpg), this study learns to "
                f"tell the {len(tops)} people apart: keep a folder per class at the top "
                f"({source}/{subs[0]}/anna/01.jpg, then data.group_pattern '^([^/]+)/' splits "
                "by person)"]
    counting = [s for s in cfg.stages if s.metric.startswith("val_person")]
    if groups is not None:
        return _lone_groups_note(cfg, names, groups, counting)
    found = person_pattern(names)
    source = data_source(cfg)
    if counting:  # the person metrics fall back to val_acc
        several = len(counting) > 1
        return [f"note: stage{'s' if several else ''} {', '.join(s.name for s in counting)} "
                f"choose{'' if several else 's'} on people "
                f"({', '.join(sorted({s.metric for s in counting}))}), but the images in "
                f"{source} have none (data.group_pattern is not set), so the metric is val_acc "
                "here and no split is person-disjoint: set data.group_pattern to a regex whose "
                f"group 1 names each file's person (e.g. '{found[0] if found else '^([^_]+)_'}')"
                " to choose on people and score on new ones"]
    if found:
        return [f"note: the file names in {source} look as if they name people "
                f"(data.group_pattern '{found[0]}' finds {found[1]}, most in several classes), "
                "but without data.group_pattern the split is by image: one person's photos can "
                "sit in training and in test, and the test score reads high for new people; "
                f"set data.group_pattern: '{found[0]}' (or --set data.group_pattern="
                f"'{found[0]}') for a person-disjoint split"]
    return []


def _lone_groups_note(cfg: StudyConfig, names: Sequence[str], groups: np.ndarray,
                      counting: list[StageConfig]) -> list[str]:
    """A group_pattern that gives most images a group of their own (such as '(.*)', or one
    that takes in the file's number): the split is then by image in effect, and a person
    metric scores each image alone (0 or 1). A note, not a refusal: a set may hold one
    photo a person."""
    import numpy as np

    _, sizes = np.unique(groups, return_counts=True)
    alone = int((sizes == 1).sum())
    if cfg.data.root is None or len(sizes) < 3 or alone <= len(sizes) / 2:
        return []
    metrics = (f", and the person metrics ({', '.join(sorted({s.metric for s in counting}))})"
               " score each of those images alone, 0 or 1" if counting else "")
    found = person_pattern(names)
    hint = f" (e.g. '{found[0]}')" if found else ""
    return [f"note: data.group_pattern '{cfg.data.group_pattern}' gives {alone} of "
            f"{len(groups)} images a group of their own ({len(sizes)} groups): if group 1 "
            "should name the person, it takes in more than the person, so one person's "
            "photos fall in several groups and can sit in training and in test"
            f"{metrics}; write group 1 to capture the person only{hint}"]
