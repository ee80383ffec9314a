"""What a person watching the terminal sees while a study runs: inside a trial, a bar on a
terminal (epoch k of n, images/s, the stage metric) or, in a log file or a worker's output,
a line at most every 30 s; after each trial, a line with the stage (k of n), what is done
and about how long the stage and the whole study have left."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from optuna.trial import FrozenTrial, TrialState

from asl_sweep.search.selection import counts_as_done, role_of
from asl_sweep.search.state import Failure, Role, TrialKey, reused_from
from asl_sweep.settings.spec import StageConfig, StudyConfig

LINE_EVERY_S = 30.0


def planned_trials(stage: StageConfig) -> int:
    """The trainings a stage plans at least: the incumbent, its budget, and (confirmed) the
    first look of its race or its fixed repeats."""
    confirm = stage.confirmation
    if confirm is None:
        return 1 + stage.trials
    repeats = confirm.min_repeats if confirm.racing else confirm.repeats - 1
    return 1 + stage.trials + (confirm.top + 1) * repeats


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class EpochProgress:
    """Per-epoch progress of one trial: a tqdm bar when `bar`, else a line at most every
    LINE_EVERY_S seconds through `log`."""

    def __init__(self, label: str, epochs: int, metric: str, log: Callable[[str], None],
                 bar: bool):
        self.label, self.epochs, self.metric, self.log = label, epochs, metric, log
        self.last_line = time.monotonic()
        self.bar = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=epochs, desc=label, unit="epoch", leave=False,
                            dynamic_ncols=True, file=sys.stdout)

    def __call__(self, epoch: int, value: float, images_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.metric} {value:.3f}, {images_per_s:,.0f} img/s")
            self.bar.update(epoch - self.bar.n)
            return
        now = time.monotonic()
        if now - self.last_line >= LINE_EVERY_S and epoch < self.epochs:
            self.last_line = now
            self.log(f"  {self.label}: epoch {epoch} of {self.epochs}, {self.metric} "
                     f"{value:.3f}, {images_per_s:,.0f} img/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StageProgress:
    """One line per trial this process finishes: which, how it ended, its metric, its time,
    the stage (k of n), and about how long the stage and the study have left (the mean time
    of a trial so far, times the trainings still planned: a race's minimum grows as it goes)."""

    def __init__(self, log: Callable[[str], None], cfg: StudyConfig, index: int):
        self.log, self.cfg, self.index = log, cfg, index
        self.stage = cfg.stages[index]
        self.planned = planned_trials(self.stage)
        self.later = sum(planned_trials(s) for s in cfg.stages[index + 1:])
        self.seconds: list[float] = []
        self.first, self.base_done = 0, 0  # see numbered()

    def numbered(self, first: int, base_done: int) -> None:
        """From now on the trials finished are the stage's repeats, in a study of their own:
        its trial 0 is the stage's trial `first`, and the stage's search study (finished by
        then) holds `base_done` trials done."""
        self.first, self.base_done = first, base_done

    @property
    def where(self) -> str:
        return f"stage {self.index + 1} of {len(self.cfg.stages)}"

    def finished(self, number: int, trials: list[FrozenTrial]) -> None:
        """The line for trial `number`, which this process just finished; `trials`: its
        study's trials read since (the loop's own next read: no read of its own), among them
        the trial as it ended."""
        t = next(x for x in trials if x.number == number)
        if t.user_attrs.get(TrialKey.FAILURE) in (Failure.SURPLUS, Failure.UNUSED):
            return
        took = (t.datetime_complete - t.datetime_start).total_seconds()
        reused = reused_from(t)
        if not reused:  # a training found on record takes no time to speak of
            self.seconds.append(took)
        # A retried trial counts once.
        done = self.base_done + sum(counts_as_done(x) for x in trials)
        # Rounds of a race another worker queued count too: what waits or runs is planned.
        pending = sum(x.state in (TrialState.WAITING, TrialState.RUNNING) for x in trials)
        self.planned = max(self.planned, done + pending)
        left = max(0, self.planned - done)
        role = role_of(t)
        what = {Role.INCUMBENT: "the previous family" if t.user_attrs.get(
                    TrialKey.PREVIOUS_FAMILY) else "the incumbent",
                Role.SEED: "seed trial", Role.SEARCH: "",
                Role.CONFIRM: f"repeat {t.user_attrs.get(TrialKey.REPEAT)} of trial "
                              f"{t.user_attrs.get(TrialKey.CONFIRMS)}"}[role]
        value = f"{self.stage.shown_metric} {t.value:.3f}" if t.value is not None else ""
        said = " ".join(p for p in (f"trial {self.first + t.number}", what,
                                    t.state.name.lower(), value) if p)
        how = f"reused from {reused}" if reused else f"{took:.1f}s"
        if t.user_attrs.get(TrialKey.PRUNED_BY):
            how += f"; {t.user_attrs[TrialKey.PRUNED_BY]}"
        self.log(f"  {self.stage.name}: {said} ({how}); {self.where}: {done}/"
                 f"{self.planned} done, {self.time_left(left)}")

    def time_left(self, left: int) -> str:
        """About how long the stage (and the study) have left: the mean time of a training
        so far times the trainings still planned; unknown until one has trained here (a
        reused training takes no time and says nothing of the next)."""
        if not self.seconds:
            return "time left known after the first training"
        mean = statistics.fmean(self.seconds)
        study = (f", about {duration(mean * (left + self.later))} in the study"
                 if self.later else "")
        return f"about {duration(mean * left)} left{study}"


def shown(value) -> str:
    """A setting as a person reads it: floats to 3 significant digits, lists joined."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shown(v)}" for k, v in value.items()) + "}"
    return str(value)


def shown_settings(params: dict) -> str:
    return ", ".join(f"{k}={shown(v)}" for k, v in params.items())


def exported_kind(final: dict, final_model: str) -> str | None:
    """Which of the final score's candidates `final_model` exports: refit, ensemble, or the
    best repeat (an ensemble of one repeat is that repeat); None where it is refit and no
    refit is on record yet (the setting came after the run scored)."""
    if final_model == "refit":
        return "refit" if "refit" in final else None
    return "ensemble" if final_model == "ensemble" and "ensemble" in final else "best_repeat"


def final_model_lines(final: dict, final_model: str, unit: str = "person") -> list[str]:
    """What the exported model scores on test: the ensemble of the repeats, the best repeat
    by validation and the refit, and which of them `final_model` exports. `unit`: what the
    data's splits are made of (DataConfig.unit), person or image."""
    best = final.get("best_repeat") or {"trial": final["export_trial"], "accuracy": None}
    single = (f"best repeat by validation (trial {best['trial']})"
              + (f": {best['accuracy']:.3f}" if best["accuracy"] is not None else ""))
    ens, refit = final.get("ensemble"), final.get("refit")
    lines = [] if ens is None else [
        f"ensemble of the {len(ens['members'])} repeats (probabilities averaged): "
        f"{ens['mean']:.3f} (95% CI {ens['ci'][0]:.3f}-{ens['ci'][1]:.3f}); {single}"]
    if refit is not None:
        worst = ", ".join(f"{r['person']} {r['accuracy']:.2f}"
                          for r in refit.get("by_person", [])[:3])
        lines.append(f"refit on every non-test {unit} ({len(refit['members'])} models, "
                     f"probabilities averaged): {refit['mean']:.3f} (95% CI "
                     f"{refit['ci'][0]:.3f}-{refit['ci'][1]:.3f}; "
                     f"one by one {refit['members_mean']:.3f} +- "
                     f"{refit.get('members_std', 0.0):.3f})"
                     + (f"; its worst test people: {worst}" if worst else ""))
    kind = exported_kind(final, final_model)
    if kind is None:
        return [*lines, "exported model: none yet (final_model: refit, and no refit is "
                "trained: rerun asl-sweep run to train it)"]
    if not lines:
        return [f"exported model: {single}"]
    chosen = {"refit": "the refit", "ensemble": "the ensemble",
              "best_repeat": f"the {single.split(':')[0]}"}[kind]
    return [*lines, f"exported model: {chosen} (final_model: {kind}, fixed before the test "
            "split was read)"]


def views_lines(views: dict) -> list[str]:
    """The test-time views the final model averages over, why, and what they changed."""
    gains = views.get("gains", {})

    def gain(name: str) -> str:
        g = gains[name]
        over = (views["over"] if g["units"] != 1
                else {"people": "person", "images": "image"}.get(views["over"], views["over"]))
        if g.get("ci") is None:  # one unit: no spread, no interval
            return f"{100 * g['gain']:+.1f} pt (over {g['units']} validation {over}: no interval)"
        return (f"{100 * g['gain']:+.1f} pt (95% CI {100 * g['ci'][0]:+.1f} to "
                f"{100 * g['ci'][1]:+.1f} over {g['units']} validation {over})")

    if views["views"] == "none":
        if not gains:
            return [f"test-time views: none ({views['rule']})"]
        best = max(gains, key=lambda v: gains[v]["gain"])
        why = ("no set gained on validation beyond its noise"
               if gains[best].get("lower") is not None
               else f"too few validation {views['over']} to choose on")
        return [f"test-time views: none; {why} (best: {best} {gain(best)}); "
                f"rule: {views['rule']}"]
    line = f"test-time views: {views['described']}; on validation {gain(views['views'])}"
    without = views.get("without")
    if without:
        line += f"; {without['split']} mean without them {without['mean']:.3f}"
    return [line, f"  rule: {views['rule']}"]
