"""What a study will do, before anything runs (`asl-sweep run --dry-run`): its data, and per
stage what it searches, on which metric, and how many trainings of how many epochs it plans.
Reads the settings and lists the photo folder (no image decoded); opens no store."""

from __future__ import annotations

from asl_sweep.search.progress import planned_trials, shown
from asl_sweep.settings.spec import Searched, StageConfig, StudyConfig


def plan_lines(cfg: StudyConfig, data: str) -> list[str]:
    """The plan, as lines: `data` says what the data is (data_line)."""
    lines = [f"study {cfg.study}: dry run: settings read and checked, nothing trained or "
             "recorded" + (f" ({cfg.description})" if cfg.description else ""),
             f"data: {data}, {cfg.data.image_size}px; validation {cfg.data.val_fraction:g} "
             f"and test {cfg.data.test_fraction:g} of the "
             + ("people" if cfg.data.group_pattern or cfg.data.root is None else "images")
             + " (test scored once, after the search)"]
    low = high = 0
    for index, stage in enumerate(cfg.stages):
        least, most = _trainings(stage)
        low, high = low + least, high + most
        lines.append(f"stage {index + 1} of {len(cfg.stages)} {stage.name}: "
                     f"{stage.goal + ' ' if stage.goal else ''}[{stage.metric}, "
                     f"{stage.sampler} sampler, pruner {stage.pruner}]")
        searched = [f"{key} {_range(raw)}" for key, raw in stage.space.items()]
        lines.append(f"  searches: {'; '.join(searched) if searched else 'nothing'}"
                     + (f" (each trial moves {stage.moves})" if stage.moves else ""))
        lines.append(f"  trainings: {_count(least, most)} of {_epochs(cfg, stage)} epochs: "
                     f"{_how(stage)}")
    lines.append(f"in all: {_count(low, high)} trainings (a stage's later settings carry what "
                 "the earlier ones adopted; pruning stops some early)")
    return lines


def _trainings(stage: StageConfig) -> tuple[int, int]:
    """The fewest and the most trainings a stage plans: its race may end at the first look
    or at max_repeats."""
    least = planned_trials(stage)  # a race's first look: min_repeats each
    confirm = stage.confirm if stage.target is None else None
    if confirm is None or not confirm.racing:
        return least, least
    return least, least + (confirm.top + 1) * (confirm.max_repeats - confirm.min_repeats)


def _how(stage: StageConfig) -> str:
    n = len(stage.seed_trials)
    seeds = f" ({n} of them {'seed trials' if n > 1 else 'a seed trial'})" if n else ""
    head = f"the incumbent + {stage.trials} search trials{seeds}"
    if stage.target is not None:
        return f"{head}, until one reaches {stage.metric} {stage.target:g} (a gate)"
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


def data_line(cfg: StudyConfig) -> str:
    """What the data is: the built-in set's settings, or the photo folder's classes and
    image count, listed as a run lists them (a folder a run would refuse is refused here,
    in the same line); no image decoded."""
    syn = cfg.data.synthetic
    if cfg.data.root is None:
        return f"built-in synthetic {syn.kind} ({syn.per_class}/class, {syn.signers} signers)"
    from asl_sweep.data.images import scan_folder

    files, _, classes, skipped = scan_folder(cfg.data.root, cfg.data.on_bad_image)
    shown_classes = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    return (f"{cfg.data.root}: {len(files)} images in {len(classes)} classes ({shown_classes})"
            + (f", {len(skipped)} skipped (data.on_bad_image: skip)" if skipped else ""))
