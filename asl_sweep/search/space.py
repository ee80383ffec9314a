"""The only place that calls trial.suggest_*: a stage's space -> concrete overrides.

Optuna's categorical choices must be None/bool/int/float/str, so list-valued choices
(hidden: [[256, 64], [512]]) travel through Optuna as JSON text and are decoded here."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import optuna

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
        if isinstance(spec, Choice):
            choices = [c for c in spec.choices
                       if start is None or name not in start or c != start[name]]
            params[name] = _decode(trial.suggest_categorical(
                name, [_encode(c) for c in choices or spec.choices]))
        elif isinstance(spec, IntRange):
            params[name] = trial.suggest_int(name, spec.low, spec.high, step=spec.step,
                                             log=spec.log)
        else:
            params[name] = trial.suggest_float(name, spec.low, spec.high, step=spec.step,
                                               log=spec.log)
    return params


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
