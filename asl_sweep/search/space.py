"""The only place that calls trial.suggest_*: a stage's space -> concrete overrides.

Optuna's categorical choices must be None/bool/int/float/str, so list-valued choices
(hidden: [[256, 64], [512]]) travel through Optuna as JSON text and are decoded here."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.trial import FrozenTrial

from asl_sweep.settings.spec import Choice, FloatRange, IntRange, ParamSpec


def _encode(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def changed_settings(space: dict[str, ParamSpec], number: int, moves: int | None,
                     fixed: dict[str, Any] | None = None) -> set[str] | None:
    """The settings trial `number` changes from the stage's start when the stage moves
    `moves` at a time: the next `moves` unconditional settings in the space's order (trial 1
    the first ones; trial 0 is the incumbent), a conditional one with the setting it depends
    on. A trial queued with settings (a retry, a seed trial) moves those. None: all."""
    if moves is None:
        return None
    if fixed:
        return set(fixed)
    levers = [name for name, spec in space.items() if not spec.when]
    if not levers:
        return set()
    start = (max(0, number - 1) * moves) % len(levers)
    chosen = {levers[(start + i) % len(levers)] for i in range(min(moves, len(levers)))}
    return chosen | {name for name, spec in space.items()
                     if spec.when and set(spec.when) <= chosen}


def distribution(name: str, spec: ParamSpec, start: dict[str, Any] | None = None
                 ) -> BaseDistribution:
    """What Optuna draws setting `name` from: a choice's values (where `start` holds the
    setting, a move: without the start's value, unless that leaves none), or a range."""
    if isinstance(spec, Choice):
        moving = start is not None and name in start
        choices = [c for c in spec.choices if not moving or c != start[name]]
        return CategoricalDistribution([_encode(c) for c in choices or spec.choices])
    if isinstance(spec, IntRange):
        return IntDistribution(spec.low, spec.high, step=spec.step, log=spec.log)
    return FloatDistribution(spec.low, spec.high, step=spec.step, log=spec.log)


def suggest(trial: optuna.Trial, space: dict[str, ParamSpec],
            only: set[str] | None = None, start: dict[str, Any] | None = None) -> dict[str, Any]:
    """Define-by-run: each setting in order (of `only`, where given: the others keep the
    start's values), skipping those whose `when` does not hold for the settings chosen
    before it (Optuna then samples each conditional setting only from the trials that had
    it). `start`: the start's value of each setting a move must change: a choice then draws
    from its other values, so a trial that moves one lever never trains the start again
    (the same choices in every trial of the stage, as Optuna needs)."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if (only is not None and name not in only) or not spec.applies(params):
            continue
        drawn = distribution(name, spec, start)
        if isinstance(drawn, CategoricalDistribution):
            params[name] = _decode(trial.suggest_categorical(name, list(drawn.choices)))
        elif isinstance(drawn, IntDistribution):
            params[name] = trial.suggest_int(name, drawn.low, drawn.high, step=drawn.step,
                                             log=drawn.log)
        else:
            params[name] = trial.suggest_float(name, drawn.low, drawn.high, step=drawn.step,
                                               log=drawn.log)
    return params


def changed_since(trials: list[FrozenTrial], space: dict[str, ParamSpec],
                  start: dict[str, Any] | None = None) -> tuple[str, str, str] | None:
    """The first setting of `space` whose values Optuna cannot go on from, given what the
    stage's `trials` were drawn from (a choice's values changed, a range turned into a
    choice, log added or dropped), as (name, what it was, what it is); None when the stage
    can resume.
    `start` as in `suggest`, for every setting. A range's new bounds are not a change here:
    Optuna resumes over them."""
    now = {name: distribution(name, spec, start) for name, spec in space.items()}
    for trial in trials:
        for name, then in trial.distributions.items():
            if name not in now:
                continue
            try:
                check_distribution_compatibility(then, now[name])
            except ValueError:
                return name, _shown(then), _shown(now[name])
    return None


def _shown(drawn: BaseDistribution) -> str:
    if isinstance(drawn, CategoricalDistribution):
        return "[" + ", ".join(json.dumps(_decode(c)) for c in drawn.choices) + "]"
    log = ", log" if getattr(drawn, "log", False) else ""
    kind = type(drawn).__name__.removesuffix("Distribution").lower()
    return f"{kind} {drawn.low} to {drawn.high}{log}"


def decode_params(params: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's params as the trainer settings they stood for."""
    return {name: _decode(value) for name, value in params.items()}


def encode_params(params: dict[str, Any]) -> dict[str, Any]:
    """Settings (for example a seed trial) in the form Optuna stores them."""
    return {name: _encode(value) for name, value in params.items()}


def grid(space: dict[str, ParamSpec]) -> dict[str, list[Any]]:
    """Every point of a grid sampler's space (ranges need a step)."""
    points: dict[str, list[Any]] = {}
    for name, spec in space.items():
        if isinstance(spec, Choice):
            points[name] = [_encode(c) for c in spec.choices]
        elif isinstance(spec, IntRange):
            points[name] = list(range(spec.low, spec.high + 1, spec.step))
        elif isinstance(spec, FloatRange):
            count = int(round((spec.high - spec.low) / spec.step)) + 1
            points[name] = [float(v) for v in np.linspace(spec.low, spec.high, count)]
    return points
