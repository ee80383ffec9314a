"""The environment variables asl-sweep reads: each named once here, with its default and what
it does, and read through here, so a bad value is one line naming the variable (exit 2) at
the start of a command rather than a traceback the first time a store is away or a trial
starts. docs/reference/environment.md is rendered from VARIABLES."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from asl_sweep.runtime.errors import ConfigError


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    meaning: str


HOME = Variable("ASL_SWEEP_HOME", "mlruns",
                "the study home when no --home is given (an empty value: unset)")
WORKERS = Variable("ASL_SWEEP_WORKERS", "auto",
                   "`run --workers` when the flag is not given: a number, or auto")
STORE_RETRY_S = Variable("ASL_SWEEP_STORE_RETRY_S", "120",
                         "seconds a lost connection to a server database or tracking server is "
                         "retried before the run stops in one line (0 or more)")
SYSTEM_METRICS_S = Variable("ASL_SWEEP_SYSTEM_METRICS_S", "5",
                            "seconds between samples of a trial's CPU, memory and threads, "
                            "logged to its MLflow run (0: off; else at least 0.5)")
WEIGHTS = Variable("ASL_SWEEP_WEIGHTS", "",
                   "a folder searched first for pretrained ImageNet weight files, by "
                   "torchvision's file name")
OFFLINE = Variable("ASL_SWEEP_OFFLINE", "",
                   "1 (or true, yes, on): never download pretrained weights (torchvision's "
                   "hub download is otherwise tried when no file is found; 0, false, no, off "
                   "or empty)")

STORAGE = Variable("ASL_SWEEP_STORAGE", "",
                   "the Optuna storage URL when no --storage is given (a password in it stays "
                   "off the command line and out of `ps`; `run` hands it to its workers so)")
TRACKING = Variable("ASL_SWEEP_TRACKING", "",
                    "the MLflow tracking URI when no --tracking is given (as ASL_SWEEP_STORAGE)")

VARIABLES = (HOME, STORAGE, TRACKING, WORKERS, STORE_RETRY_S, SYSTEM_METRICS_S, WEIGHTS,
             OFFLINE)


class FromVariable(str):
    """A flag's value that came from its environment variable (no flag given): a line about
    it names the variable, not the flag."""

    variable: Variable

    def __new__(cls, value: str, variable: Variable) -> FromVariable:
        made = super().__new__(cls, value)
        made.variable = variable
        return made


def named(value: str, flag: str) -> str:
    """What to call a flag's value in a message: the flag, or the variable it came from."""
    return f"${value.variable.name}" if isinstance(value, FromVariable) else flag


def from_variable(variable: Variable) -> FromVariable | None:
    """A flag's default from its variable; None where the variable is unset or empty."""
    raw = os.environ.get(variable.name)
    return FromVariable(raw, variable) if raw else None


def text(variable: Variable) -> str:
    """The variable's value; unset or empty: its default."""
    return os.environ.get(variable.name) or variable.default


def seconds(variable: Variable) -> float:
    """A number of seconds, 0 or more."""
    raw = text(variable)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"${variable.name}={raw!r}: give a number of seconds, 0 or more "
                          f"(default {variable.default}), or unset it")
    return value


def store_retry_seconds() -> float:
    return seconds(STORE_RETRY_S)


# The shortest interval between system samples: each is a row per metric in MLflow, taken
# by a thread beside the training (1e-9 s logged 3925 samples of each in a 2-second training
# and cut its throughput by 41%).
SHORTEST_SAMPLE_S = 0.5


def system_metrics_seconds() -> float:
    value = seconds(SYSTEM_METRICS_S)
    if 0 < value < SHORTEST_SAMPLE_S:
        raise ConfigError(f"${SYSTEM_METRICS_S.name}={text(SYSTEM_METRICS_S)!r}: give 0 (no "
                          f"samples) or at least {SHORTEST_SAMPLE_S} seconds (default "
                          f"{SYSTEM_METRICS_S.default}): each sample is an MLflow row per metric, "
                          "taken beside the training it measures")
    return value


_YES, _NO = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def offline() -> bool:
    """ASL_SWEEP_OFFLINE as a yes or no; any other value is refused (`true` was taken as
    no, and a run without a network tried to download)."""
    raw = text(OFFLINE)
    said = raw.strip().lower()
    if said in _YES:
        return True
    if said in _NO:
        return False
    raise ConfigError(f"${OFFLINE.name}={raw!r}: give 1 (never download pretrained "
                      "weights) or 0, or unset it")


def weights_folder() -> Path | None:
    """ASL_SWEEP_WEIGHTS: a folder that is there, or None where unset (a mistyped one was
    passed over, and the missing weights' line named only torch's hub folder)."""
    raw = text(WEIGHTS)
    if not raw:
        return None
    folder = Path(raw).expanduser()
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise ConfigError(f"${WEIGHTS.name}={raw!r}: {what}; give the folder holding the "
                          "weight files (by torchvision's file name), or unset it")
    return folder


def check() -> None:
    """Read every variable whose value is checked once, so that a bad one stops a command
    before it starts."""
    store_retry_seconds()
    system_metrics_seconds()
    offline()
    weights_folder()
