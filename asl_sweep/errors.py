"""Every error a user can cause, in one place. Each renders as one line that names the file,
key or path and says what to do next; cli.main maps them to exit codes. Imports nothing heavy,
so any module (and the command line before torch loads) can raise them.

Anything that is not a UserError is a bug in asl-sweep: it surfaces as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix. `str(e)` is one line; the exit code is `exit_code`."""

    exit_code = 2

    def __str__(self) -> str:
        return " ".join(super().__str__().split())


class ConfigError(UserError):
    """A study file, key path or command-line value that is not valid."""


class DataError(UserError):
    """A data folder, image file or split that cannot serve the study."""


class WeightsError(UserError):
    """Pretrained weights that cannot be found or do not check out."""


class StoreError(UserError):
    """An Optuna or MLflow store that cannot be opened, created or written, or a study whose
    stored settings disagree with the ones given."""


class ModelFileError(UserError):
    """A model or checkpoint file asl-sweep did not write, of another version, or damaged."""


class UnsafeFileError(ModelFileError):
    """A file that would need arbitrary pickle code to load: refused."""


class WriteError(UserError):
    """A file could not be written (disk full, read-only, I/O error): nothing was lost."""


class SettingsError(UserError):
    """The settings a trial sampled cannot be built (for example a CNN too deep for the image
    size). Raised inside a trial, it is that trial's own failure and the search goes on."""


class GateNotReached(UserError):
    """A stage's target was reached by no trial and the stage says on_fail: stop."""

    exit_code = 3


class ExportError(UserError):
    """Some export formats could not be written; the others were."""

    exit_code = 1
