"""Every error a user can cause, in one place. Each renders as one line that names the file,
key or path and says what to do next; cli.main maps them to exit codes. Imports nothing heavy,
so any module (and the command line before torch loads) can raise them.

Anything that is not a UserError is a bug in asl-sweep: it surfaces as a traceback."""

from __future__ import annotations

import errno
import os
import re


def is_text(name: str | os.PathLike) -> bool:
    """Whether a name is UTF-8 text. One in another encoding (a zip made on Windows, unpacked
    here) holds its bytes as surrogates, which no UTF-8 file, store or terminal takes."""
    try:
        os.fspath(name).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def as_text(path: str | os.PathLike) -> str:
    """A path as a message can show it on one line: bytes that are not UTF-8 as \\xNN
    escapes, and a control character in a name (a newline a script put in a file name) as
    \\n, \\t or \\xNN, as `ls -b` shows it, so that it cannot split a line or a table row."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: _ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}"), text)


def not_text_folder(said: str) -> str:
    """The line for a folder asl-sweep writes (--home, --out) whose path is not UTF-8 text:
    the stores' addresses and the records keep the path, and could not hold it."""
    return (f"{said}: its path is not UTF-8 text (a folder named on another system?): give a "
            "folder with a UTF-8 name")


def not_here(said: str) -> str | None:
    """The line for a web address (https://, s3://, gs://...) given where asl-sweep reads a
    file on this machine, else None: as a path it would be shown with its double slash folded
    (`https:/host/...`) and said to be missing."""
    scheme, sep, _ = said.partition("://")
    if not (sep and len(scheme) > 1 and scheme.isascii() and scheme.isalpha()) \
            or scheme.lower() == "file":
        return None
    return (f"{said}: a web address; asl-sweep reads files on this machine: download it "
            "first")


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
    """A file could not be written (disk full, read-only, I/O error): nothing was lost.
    `path`: the file or folder, where one is known."""

    def __init__(self, message: str, path=None) -> None:
        super().__init__(message)
        self.path = path

    @classmethod
    def of(cls, path, error: OSError) -> WriteError:
        reason = error.strerror or str(error) or type(error).__name__
        return cls(f"{path}: could not be written ({reason}); nothing recorded was lost: free "
                   "space or make the folder writable, then rerun the same command", path)


# Faults of the machine rather than of a trial or of asl-sweep: a file or a store that cannot
# be written. They stop the run in one line, and the trial runs again on rerun.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES,
                 errno.EPERM}
_STORE_FAULTS = ("database or disk is full", "attempt to write a readonly database",
                 "disk I/O error", "unable to open database file")
# An OSError of a full or failing disk that a library kept only as text (MLflow's artifact
# copies: "[Errno 28] No space left on device: 'SRC' -> 'DST'"), the file written last.
_QUOTED_DISK_FAULT = re.compile(
    rf"\[Errno ({'|'.join(str(n) for n in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO))})"
    r"\] ([^:\n]+)(?:: '[^']*' -> '([^']+)'|: '([^']+)')?")
# What SQLite says of a file that is not (or no longer) a database it can read.
_DAMAGED = ("file is not a database", "database disk image is malformed")


# What MLflow and Optuna say of a database whose tables another version of them made.
_MLFLOW_SCHEMA = "Detected out-of-date database schema"
_OPTUNA_SCHEMA = "is no longer compatible with the table schema"


def _other_version(text: str) -> str:
    """One line for a store made by another MLflow or Optuna than this one, and what to do."""
    if _MLFLOW_SCHEMA in text:
        found = re.search(r"found version (\w+), but expected (\w+)", text)
        schemas = f" (its schema {found[1]}, this MLflow's {found[2]})" if found else ""
        return (f"the MLflow store (mlflow.db, or --tracking) was made by another MLflow "
                f"version{schemas}: back it up, then run `mlflow db upgrade` on its URI where "
                "an older MLflow made it, or use the MLflow version that made it")
    found = re.search(r"optuna version (\S+) .*set up by optuna ([^)\s]+)", text)
    if found and found[1] == found[2] and "storage upgrade" not in text:
        # set up by this very version, yet a schema revision Optuna has never had
        return (f"the Optuna store (optuna.db, or --storage) holds Optuna {found[1]}'s tables "
                "beside another program's schema (its alembic_version is not Optuna's: an "
                "MLflow store, mlflow.db, given for the Optuna one?): give the Optuna store a "
                "database of its own")
    versions = f" ({found[2]}; this is Optuna {found[1]})" if found else ""
    todo = ("back it up, then run `optuna storage upgrade --storage URL`"
            if "storage upgrade" in text else "use the newer Optuna that made it")
    return (f"the Optuna store (optuna.db, or --storage) was made by another Optuna "
            f"version{versions}: {todo}")


_OPTUNA_TABLES = re.compile(r"\b(studies|study_\w+|trials|trial_\w+|version_info|"
                            r"alembic_version)\b")
_MLFLOW_TABLES = re.compile(r"\b(experiments|experiment_tags|runs|metrics|latest_metrics|params|"
                            r"tags|registered_models|model_versions|\w+_tags|inputs|datasets|"
                            r"logged_models|trace_\w+)\b")


def _which_store(text: str, known: str) -> str:
    """Which database a failed statement was writing, by the tables it names (`known`: the
    caller's own, where the statement names none, e.g. its COMMIT)."""
    statement = text.split("[SQL:", 1)[1] if "[SQL:" in text else ""
    if _OPTUNA_TABLES.search(statement):
        return "the Optuna store (optuna.db, or --storage)"
    if _MLFLOW_TABLES.search(statement):
        return "the MLflow store (mlflow.db, or --tracking)"
    if "the Optuna store" in text:  # said by the storage proxy in front of it
        return "the Optuna store (optuna.db, or --storage)"
    return known


# An address that will never be answered as given: a host name that does not resolve (not
# "temporary failure in name resolution": that passes), or a database server's refusal of the
# database, user or password (PostgreSQL's FATAL lines, less those of a server that is
# starting, stopping or full, which pass too: runtime.outage waits for those).
_UNRESOLVED = ("failed to resolve", "could not translate host name",
               "name or service not known", "nodename nor servname provided",
               "no address associated with hostname")
_PASSING = ("the database system is starting up", "the database system is shutting down",
            "the database system is in recovery mode", "too many clients",
            "remaining connection slots", "terminating connection")


def _closed(text: str) -> str:
    """`text` up to the bracket that closes one it never opened (a message quoted inside
    another's parentheses), less the quote before it."""
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return text[:i].rstrip("\"'")
    return text


def refusal(error: BaseException | None) -> str | None:
    """What refused a store's address as given (its host name does not resolve; its server
    refuses the database, user or password), anywhere in `error`'s chain; None if nothing
    did. Waiting does not mend it: the address does."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        refused = _refused_in(str(error))
        if refused:
            return refused
        error = error.__cause__ or error.__context__
    return None


def _refused_in(text: str) -> str | None:
    for line in text.splitlines():
        low = line.lower()
        # PostgreSQL's word, in capitals (git's "fatal: not a git repository" is not a store)
        if "FATAL:" in line and not any(p in low for p in _PASSING):
            return " ".join(line[line.index("FATAL:"):].split())[:200]
        start = min((low.index(m) for m in _UNRESOLVED if m in low), default=None)
        if start is not None:
            return _closed(" ".join(line[start:].split()))[:200]
    return None


# MLflow's client on an HTTP answer other than 200 that its own retries do not take (those
# are runtime.outage's: a proxy's 502/503/504 while the server restarts).
_HTTP_ANSWER = re.compile(r"API request to (?:endpoint )?(\S+) failed with error code "
                          r"(\d{3}) != 200")


def _http_answer(text: str) -> str | None:
    """The line for a tracking server that answered, but not as this MLflow client needs: a
    request it refused (credentials), or an address that is no MLflow server (another web
    server's port) or one older than this client (an endpoint it does not have)."""
    found = _HTTP_ANSWER.search(text)
    if found is None:
        return None
    endpoint, code = found[1], int(found[2])
    said = f"the MLflow tracking server answered HTTP {code} for {endpoint}"
    if code in (401, 403):
        return (f"{said}: give its credentials in MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), then rerun the same "
                "command")
    if code in (404, 405, 501):
        from importlib.metadata import version

        return (f"{said}: the address is not an MLflow server's (another web server on that "
                f"port?) or its MLflow is older than this client's ({version('mlflow')}): "
                "check --tracking, or run the server with this MLflow, then rerun the same "
                "command")
    return None


def refused_line(store: str, refused: str) -> str:
    return (f"{store} cannot be opened ({refused}): check its address (host name, database, "
            "user, password), then rerun the same command")


def environment_fault(error: BaseException, store: str = "a store") -> UserError | None:
    """The one-line error for a disk-full, read-only or I/O fault, or a store's address
    refused (`refusal`), anywhere in `error`'s chain (libraries wrap them), or None when it
    is something else; a database fault names its store by the statement's tables, else
    `store` (where the caller knows which it was)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, UserError):
            return error
        if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
            return WriteError.of(error.filename or "a file", error)
        text = str(error)
        quoted = _QUOTED_DISK_FAULT.search(text)
        if quoted:  # a library that kept only the text ("[Errno 28] No space left on ...")
            number, path = int(quoted[1]), quoted[3] or quoted[4] or "a file"
            return WriteError.of(path, OSError(number, os.strerror(number), path))
        fault = next((f for f in _STORE_FAULTS if f in text), None)
        if fault:
            return StoreError(f"{_which_store(text, store)} could not be written ({fault}); "
                              "nothing recorded was lost: free space or make the folder writable, "
                              "then rerun the same command")
        if _MLFLOW_SCHEMA in text or _OPTUNA_SCHEMA in text:
            return StoreError(_other_version(text))
        refused = _refused_in(text)
        if refused:
            return StoreError(refused_line(store, refused))
        answer = _http_answer(text)
        if answer:
            return StoreError(answer)
        damage = next((d for d in _DAMAGED if d in text), None)
        if damage:
            return StoreError(f"{_which_store(text, store)} cannot be read ({damage}): the file "
                              "is damaged or is not asl-sweep's; restore it from a copy, or "
                              "move it aside and run the study afresh")
        error = error.__cause__ or error.__context__
    return None


class SettingsError(UserError):
    """The settings a trial sampled cannot be built (for example a CNN too deep for the image
    size). Raised inside a trial, it is that trial's own failure and the search goes on."""


class GateNotReached(UserError):
    """A stage's target was reached by no trial and the stage says on_fail: stop."""

    exit_code = 3


class ExportError(UserError):
    """Some export formats could not be written; the others were."""

    exit_code = 1
