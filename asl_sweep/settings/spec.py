"""A study's specification, typed: its stages, their search spaces (ranges, choices and
conditions), confirmation and seed trials, and the study as a whole with its key-path checks.
Imports no torch; studyfile.py builds it from YAML."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from asl_sweep.settings.config import (
    DataConfig,
    Direction,
    Metric,
    Strict,
    TrainConfig,
    check_train_override,
    closest,
    error_message,
    model_in,
    not_a_setting,
)

# A stage's budget is queued in the Optuna store before it searches (a slot a worker takes),
# about 150 trials a second into SQLite: a mistyped 100000000 queued for days.
MAX_TRIALS = 10_000


class Searched(Strict):
    """A searched setting. `when` makes it conditional: it is searched only in trials whose
    earlier categorical settings have the given value(s), e.g. {model: cnn}."""

    when: dict[str, Any] | None = Field(None, description="search it only where earlier "
                                        "categorical settings have these values, e.g. "
                                        "{model: cnn}")

    def applies(self, chosen: dict[str, Any]) -> bool:
        if not self.when:
            return True
        return all(k in chosen and chosen[k] in (v if isinstance(v, list) else [v])
                   for k, v in self.when.items())


class FloatRange(Searched):
    low: float = Field(description="the range's lower end")
    high: float = Field(description="its upper end")
    log: bool = Field(False, description="sampled on a log scale")
    step: float | None = Field(None, description="a grid step within the range")

    def outside(self, value: Any) -> str | None:
        """Why `value` cannot be a point of this range (None if it can)."""
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"{value!r} is not a number"
        if not self.low <= value <= self.high:
            return f"{value} is outside the searched range [{self.low}, {self.high}]"
        return None

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        if self.log and self.low <= 0:
            raise ValueError("low must be > 0 for a log range")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be > 0")
        return self


class IntRange(Searched):
    low: int = Field(description="the range's lower end (both ends integers)")
    high: int = Field(description="its upper end")
    log: bool = Field(False, description="sampled on a log scale")
    step: int = Field(1, description="the step between points")

    def outside(self, value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{value!r} is not an integer"
        if not self.low <= value <= self.high or (value - self.low) % self.step:
            return f"{value} is not a point of the searched range [{self.low}, {self.high}] " \
                   f"(step {self.step})"
        return None

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        if self.log and self.low <= 0:
            raise ValueError("low must be > 0 for a log range")
        if self.step < 1:
            raise ValueError("step must be >= 1")
        return self


class Choice(Searched):
    choices: list[Any] = Field(min_length=1, description="the values to choose among")

    def outside(self, value: Any) -> str | None:
        if value not in self.choices:
            return f"{value!r} is not among the choices {self.choices}"
        return None


ParamSpec = FloatRange | IntRange | Choice


def parse_param(raw: Any) -> ParamSpec:
    """A list is a categorical choice ({choices: [...], when: ...} with a condition);
    {low, high} is an int range when both ends are ints."""
    if isinstance(raw, list):
        return Choice(choices=raw)
    if isinstance(raw, dict) and "choices" in raw:
        return Choice(**raw)
    if isinstance(raw, dict):
        ints = all(isinstance(raw.get(k), int) and not isinstance(raw.get(k), bool)
                   for k in ("low", "high"))
        if ints and not isinstance(raw.get("step", 1), float):
            return IntRange(**raw)
        return FloatRange(**raw)
    raise ValueError("must be a list of choices or a mapping with low and high")


class ConfirmConfig(Strict):
    """Confirmation after a stage's search: the `top` best distinct trials and the incumbent
    trained again on fresh paired (seed, fold) repeats, raced (search/racing.py): from
    `min_repeats` on, a candidate clearly not better by `min_gain`, or one whose trend could
    not be shown by `max_repeats` (`futility`), is dropped and one clearly better is adopted
    (one-sided paired t at `level`), up to `max_repeats`.

    The rule before racing (a fixed number of repeats, the search trial counted as repeat 0,
    adopt over one standard error) is still there for comparison: `repeats: R` alone."""

    top: int = Field(1, ge=1, description="the best distinct search trials raced against "
                     "the incumbent")
    min_repeats: int | None = Field(None, ge=2, description="fresh paired repeats before the "
                                    "first look (default 2)")
    max_repeats: int | None = Field(None, ge=2, description="the most repeats; then the "
                                    "stage keeps the incumbent (default 6)")
    level: float = Field(0.95, gt=0.5, lt=1.0, description="the one-sided paired t "
                         "interval's level, split over the candidates and the looks")
    folds: bool | None = Field(None, description="repeat r validates on validation fold r; "
                               "null: where the data has people")
    min_gain: float | None = Field(None, ge=0.0, description="the smallest gain worth "
                                   "adopting (race: 0; fixed rule: one standard error)")
    futility: float = Field(0.05, ge=0.0, lt=1.0, description="drop a candidate whose "
                            "conditional power (the chance that its trend so far is adopted "
                            "at max_repeats) is below this; 0 runs near-ties to the end")
    repeats: int | None = Field(None, ge=2, description="the fixed rule before racing: R "
                                "repeats, the search trial counted as the first")
    search_gain: bool = Field(False, description="race only candidates whose search trial "
                              "beat the incumbent's (the same fold and seed: a paired "
                              "look); one level with it or below is dropped before its "
                              "race, and a stage where none did keeps the incumbent "
                              "untrained again (the study's last stage still trains "
                              "the incumbent's min_repeats fresh repeats, for the final "
                              "score's seed spread). Costs power, never adopts on search "
                              "values")

    @model_validator(mode="before")
    @classmethod
    def _rule(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        if raw.get("repeats") is not None:
            if raw.get("min_repeats") is not None or raw.get("max_repeats") is not None:
                raise ValueError("repeats is the fixed rule; min_repeats and max_repeats "
                                 "race: give one or the other")
            return raw
        low = raw.get("min_repeats") or 2
        high = raw.get("max_repeats") or (max(6, low) if isinstance(low, int) else 6)
        if isinstance(low, int) and isinstance(high, int) and high < low:
            raise ValueError(f"max_repeats ({high}) is below min_repeats ({low})")
        return {**raw, "min_repeats": low, "max_repeats": high}

    @property
    def racing(self) -> bool:
        return self.repeats is None


class SeedTrial(Strict):
    """A person's own choice, run first as a baseline; `reported` is the validation accuracy
    they wrote down for it (shown beside the same settings re-run here)."""

    params: dict[str, Any] = Field(description="the settings, by key path")
    reported: float | None = Field(None, ge=0.0, le=1.0, description="the validation "
                                   "accuracy its author reported")

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, raw: Any) -> Any:
        # In YAML a seed trial is one flat mapping: its settings, plus `reported`.
        if isinstance(raw, dict) and "params" not in raw:
            params = {k: v for k, v in raw.items() if k != "reported"}
            return {"params": params, **({"reported": raw["reported"]} if "reported" in raw
                                         else {})}
        return raw


STAGE_NAME = r"^[A-Za-z0-9_\-]+$"
STUDY_NAME = r"^[A-Za-z0-9_\-][A-Za-z0-9_\-.]*$"
# What a name that does not fit its pattern is told, in words.
NAME_RULES = {STAGE_NAME: "letters, digits, _ and -",
              STUDY_NAME: "letters, digits, _, - and . (not first)"}


class StageConfig(Strict):
    name: str = Field(pattern=STAGE_NAME, description="the stage's name (letters, "
                      "digits, _ and -)")
    goal: str = Field("", description="what the stage is for, in words (shown in the report "
                      "and MLflow)")
    subset: int | None = Field(None, ge=1, description="train on N images covering every class")
    folds: int = Field(1, ge=1, le=10, description="validate every search trial (and the "
                       "incumbent and seed trials) on this many person folds of the non-test "
                       "people, a training each, and take the mean of their values: the "
                       "search sees most validation people once, at `folds` times the cost "
                       "of a trial (pruning looks at the first fold; race repeats stay one "
                       "fold each, paired). 1: one fold")
    image_size: int | None = Field(None, ge=8, le=1024, description="decode this stage's "
                                   "images at this size (default: data.image_size, or a "
                                   "backbone's own input size)")
    metric: Metric = Field("val_acc", description="what the stage optimizes and decides on")
    direction: Direction | None = Field(None, description="maximize or minimize; null "
                                        "follows the metric")
    target: float | None = Field(None, description="a gate: the stage ends once a trial "
                                 "reaches this value of its metric")
    on_fail: Literal["stop", "continue"] = Field("stop", description="a gate no trial "
                                                 "reached: stop the study, or go on with its "
                                                 "best trial")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="Optuna's sampler")
    trials: int = Field(10, ge=1, le=MAX_TRIALS,
                        description="the search budget: seed and sampled trials (the "
                        "incumbent and confirmation repeats are not counted); queued in the "
                        "Optuna store up front, so at most 10000 (with `timeout` to end a "
                        "long search sooner)")
    timeout: float | None = Field(None, gt=0, description="seconds of search for the stage, "
                                  "summed over reruns (time between runs does not count)")
    pruner: Literal["median", "incumbent", "best", "hyperband", "halving", "none"] = Field(
        "median", description="median: stop a trial whose epoch-k value is below the median of "
        "earlier trials'; incumbent: stop a trial once it is behind the incumbent's curve "
        "(same fold and seed; at epoch e the incumbent's value at two thirds of e) by more "
        "than that curve's own spread (at least 2 points) over its last few epochs and is "
        "not closing the gap; best: the same against the stage's best trial so far (the "
        "confirm.top-th best, never one the incumbent beats): a trial that would not be "
        "raced stops; "
        "hyperband, halving: successive halving of the epochs; none: never")
    seed: int = Field(0, ge=0, description="added to the sampler's seed")
    space: dict[str, Any] = Field({}, description="the searched settings: key paths into "
                                  "base, each a list (a choice) or {low, high, log, step, "
                                  "when}")
    moves: int | None = Field(None, ge=1, description="each sampled trial changes only this "
                              "many of the searched settings from the stage's start (the "
                              "incumbent), the rest keep its values: trial k moves the next "
                              "`moves` settings in the order the space lists them, the way "
                              "a person tries one lever at a time, a choice drawn from its "
                              "values other than the start's (unless the stage has seed "
                              "trials); null: every setting in every trial")
    seed_trials: list[SeedTrial] = Field([], description="hand-picked settings run first, "
                                         "as baselines")
    fixed: dict[str, Any] = Field({}, description="trainer settings for this stage only (not "
                                  "carried forward)")
    confirm: ConfirmConfig | None = Field(ConfirmConfig(), description="the race on fresh "
                                          "paired repeats before anything is adopted; null: "
                                          "adopt the best trial as it scored")
    # Set by the study: its images name no people, so a person metric is val_acc.
    _pooled: bool = PrivateAttr(False)

    @field_validator("space")
    @classmethod
    def _parse_space(cls, v: dict[str, Any]) -> dict[str, ParamSpec]:
        parsed = {}
        for name, raw in v.items():
            try:
                parsed[name] = parse_param(raw)
            except ValidationError as e:
                detail = _first_error(e)
                sep = "." if e.errors()[0]["loc"] else ": "
                raise ValueError(f".{name}{sep}{detail}") from None
            except ValueError as e:
                raise ValueError(f".{name}: {e}") from None
        return parsed

    @model_validator(mode="after")
    def _defaults(self) -> StageConfig:
        if self.direction is None:
            self.direction = "minimize" if self.metric.endswith("loss") else "maximize"
        if self.target is not None and not self.metric.endswith("loss") and not (
                0 <= self.target <= 1):
            # An accuracy is a share: `target: 85` was a gate no trial could reach.
            hint = (f"; {self.target:g} reads as a percentage: write {self.target / 100:g}"
                    if 2 <= self.target <= 100 else "")
            raise ValueError(f"target: {self.target:g} is outside what {self.metric} can be "
                             f"(an accuracy, 0 to 1){hint}")
        if self.sampler == "grid":
            if self.moves is not None:
                raise ValueError("grid sampler: moves needs a sampler that draws, not a grid "
                                 "of every setting")
            for name, spec in self.space.items():
                if isinstance(spec, FloatRange) and spec.step is None:
                    raise ValueError(f"grid sampler: space.{name} needs a list or a step")
                if spec.when:
                    raise ValueError(f"grid sampler: space.{name} has a condition (when:); a "
                                     "grid needs the same settings in every trial")
        if not self.space:  # a `space:` left out, or mis-indented under another key
            raise ValueError("space: no setting to search, so every trial would train the "
                             "incumbent's settings again; name at least one, e.g. space: "
                             "{lr: {low: 1e-4, high: 1e-2, log: true}}")
        levers = sum(not spec.when for spec in self.space.values())
        if self.moves is not None and self.moves > levers:
            raise ValueError(f"moves: {self.moves} is more than the {levers} setting(s) this "
                             "space can move (one with when: moves with the setting it "
                             "depends on); give at most that many, or null to move every "
                             "setting in every trial")
        for position, (name, spec) in enumerate(self.space.items()):
            for key, value in (spec.when or {}).items():
                earlier = dict(list(self.space.items())[:position])
                if not isinstance(earlier.get(key), Choice):
                    raise ValueError(f"space.{name}.when.{key}: not a categorical setting "
                                     "searched before it in this space")
                for v in value if isinstance(value, list) else [value]:
                    if v not in earlier[key].choices:
                        hint = (f"; to name the one choice {value}, write it inside a list: "
                                f"[{value}]" if value in earlier[key].choices else "")
                        raise ValueError(f"space.{name}.when.{key}: {v!r} is not among "
                                         f"{key}'s choices {earlier[key].choices}{hint}")
        return self

    @property
    def shown_metric(self) -> str:
        """The metric's name as the terminal prints its values: val_acc for a person metric
        where the images name no people (each person metric equals val_acc there); the
        stage records and decides under `metric` either way."""
        pooled = self._pooled and self.metric.startswith("val_person")
        return "val_acc" if pooled else self.metric

    @property
    def metric_heading(self) -> str:
        """The metric for a stage's header line, saying why where the shown name differs."""
        if self.shown_metric == self.metric:
            return self.metric
        return f"{self.shown_metric} (as {self.metric}: the images name no people)"

    @property
    def confirmation(self) -> ConfirmConfig | None:
        """The confirmation the stage runs: a gate (`target`) adopts the first trial that
        reaches it, so its `confirm` is not used."""
        return self.confirm if self.target is None else None

    def reached(self, value: float) -> bool:
        if self.target is None:
            return False
        return value >= self.target if self.direction == "maximize" else value <= self.target


class StudyConfig(Strict):
    # Not starting with a dot: the name is a folder too (artifacts/, exports/, reports/), and
    # `..` put a study's artifacts in the home itself.
    study: str = Field(pattern=STUDY_NAME, max_length=200,
                       description="the study's name: its MLflow experiment, the prefix of "
                       "its Optuna studies and its folders' name (letters, digits, _ - and "
                       "., not first)")
    description: str = Field("", description="a line about the study, shown in MLflow")
    data: DataConfig = Field(DataConfig(), description="what data, and how it is split")
    base: TrainConfig = Field(TrainConfig(), description="the trainer settings every stage "
                              "starts from")
    stages: list[StageConfig] = Field(min_length=1, description="the goals, searched in order")
    keep_checkpoints: Literal["winners", "top_k", "all"] = Field(
        "winners", description="once a stage decides, which trials keep their best checkpoint: "
        "winners (the carried configuration's repeats, all that scoring, evaluate and export "
        "read), top_k (and the keep_top best search trials), all")
    keep_top: int = Field(3, ge=1, description="with top_k: how many search trials a stage")
    reuse_trainings: bool = Field(True, description="a trial whose training the study already "
                                  "did (same settings, seed, images, fold, metric) takes its "
                                  "result and checkpoint instead of training again")
    final_model: Literal["ensemble", "best_repeat", "refit"] = Field(
        "ensemble", description="what the final configuration is exported, registered and "
        "scored as: ensemble (every repeat's class probabilities averaged, one model; a "
        "configuration with one repeat is that repeat), best_repeat (its best repeat by "
        "validation) or refit (once validation has chosen, each repeat's settings and seed "
        "trained again on every non-test person, training and validation, at its epochs "
        "(with early_stop, its best epoch's count), the last epoch kept, and those models "
        "averaged; one more training per repeat). "
        "Fixed before the test split is read: never chosen by test; the report shows every "
        "test figure")
    tta: Literal["auto", "off", "flip", "rotate", "scale", "all", "turn"] = Field(
        "auto", description="test-time augmentation of the final model: its class "
        "probabilities averaged over fixed views of each image (flip: and its mirror; "
        "rotate: and rotated 15 degrees each way; scale: and zoomed out and in by 1.25x; "
        "all: the five; turn: and turned a quarter each way, for hands held sideways). "
        "auto: each set but turn is scored on the validation split of the repeats' "
        "own folds and the one with the largest gain over no views is adopted where that "
        "gain, per validation person, has a lower bound above 0 (one-sided 97.5% t "
        "over at least 5 people, Bonferroni over the sets; else none); off: "
        "none; a set's name: that set. Never chosen by test; scored, exported and served "
        "with the model")

    @field_validator("tta", mode="before")
    @classmethod
    def _tta_off(cls, value: Any) -> Any:
        # YAML reads a bare `off` (and `no`, `false`) as false.
        return "off" if value is False else value

    @model_validator(mode="after")
    def _check_stages(self) -> StudyConfig:
        names = [s.name for s in self.stages]
        self._mark_stages()
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"stage names must be unique, repeated: {sorted(dupes)}")
        # Every searched or seeded key must name a real trainer setting.
        for i, stage in enumerate(self.stages):
            for name, spec in stage.space.items():
                where = f"stages.{i}.space.{name}"
                if name.split(".")[0] not in TrainConfig.model_fields:
                    raise ValueError(not_a_setting(where, name))
                if isinstance(spec, Choice):
                    samples = {f"{where}.{k}": c for k, c in enumerate(spec.choices)}
                else:
                    samples = {f"{where}.low": spec.low, f"{where}.high": spec.high}
                for at, sample in samples.items():
                    check_train_override(self.base, name, sample, at, key_at=where)
            for name, value in stage.fixed.items():
                check_train_override(self.base, name, value, f"stages.{i}.fixed.{name}")
            for j, seeded in enumerate(stage.seed_trials):
                for name, value in seeded.params.items():
                    if name not in stage.space:
                        raise ValueError(f"stages.{i}.seed_trials.{j}.{name}: not in this stage's "
                                         f"space (seed trials set searched parameters only)")
                    check_train_override(self.base, name, value,
                                         f"stages.{i}.seed_trials.{j}.{name}")
                    outside = stage.space[name].outside(value)
                    if outside:
                        raise ValueError(f"stages.{i}.seed_trials.{j}.{name}: {outside}")
        return self

    def with_data(self, data: DataConfig) -> StudyConfig:
        """The study with another data section (the one a recorded run used), its stages
        told whether the images name people."""
        study = self.model_copy(update={"data": data}, deep=True)
        study._mark_stages()
        return study

    def _mark_stages(self) -> None:
        for stage in self.stages:
            stage._pooled = self.data.unit == "image"


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = error_message(err)
    return f"{loc}: {msg}" if loc else msg


def _meant(loc: tuple) -> str | None:
    """For a key no settings model takes (a typo: base.lrr), the key of that model it most
    likely meant (base.lr), where one is close."""
    model: type[BaseModel] | None = StudyConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an entry of a list: the list's model
        field = model.model_fields.get(part) if model is not None else None
        model = model_in(field.annotation) if field is not None else None
    if model is None or not isinstance(loc[-1], str):
        return None
    meant = closest(loc[-1], model.model_fields)
    return ".".join(str(p) for p in (*loc[:-1], meant)) if meant else None


def format_validation_error(e: ValidationError,
                            origin: Callable[[str], str | None] | None = None) -> str:
    """Every error of a validation, one per line, each with its key path (and, for a key
    that is not a setting, the one it most likely meant; `origin`: where the value at a
    dotted key path came from, where not from the file)."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = error_message(err)
        if err["type"] == "extra_forbidden" and (meant := _meant(tuple(err["loc"]))):
            msg += f" (did you mean {meant}?)"
        rule = NAME_RULES.get((err.get("ctx") or {}).get("pattern"))
        if err["type"] == "string_pattern_mismatch" and rule:
            msg = f"{err['input']!r} is not a name it takes: {rule}"
        nested = msg.startswith(".")  # a nested validator already named the rest of the path
        head = msg.split(":", 1)[0]  # or the whole path, from a check of the whole study
        path = loc + head if nested else loc or (head if " " not in head else "")
        if origin is not None and (given := origin(path)):
            msg += f" (set by {given})"
        if nested:
            lines.append(loc + msg)
        else:
            lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)
