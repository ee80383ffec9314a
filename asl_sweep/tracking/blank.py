"""A new sqlite MLflow store, copied from a blank one instead of built.

MLflow builds a new store by running its whole schema history (about 60 migrations: 3 s on
2 CPU cores) each time a home is new. A home's store is instead copied from a blank store
that MLflow itself built once per MLflow and SQLAlchemy version, kept in the user's cache
(`$XDG_CACHE_HOME/asl-sweep`, else `~/.cache/asl-sweep`): MLflow's tables at its current
schema and no experiment at all. MLflow adds its Default experiment, with this home's
artifact folder, when it opens the copy, as it does for a store it built.

Anything amiss falls back to MLflow building the store, as before: no cache folder or one
that cannot be written, a blank that is not what this module writes (it is checked before
each copy, and made again), a home that cannot be written (MLflow then says so, naming it),
a file system without hard links. Nothing here imports mlflow: `tracker` passes the
function that has MLflow build a store."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from asl_sweep.runtime.workspace import read_only

log = logging.getLogger(__name__)


def cache_folder() -> Path | None:
    """Where the blank stores are kept; None where the user has no home folder. A relative
    $XDG_CACHE_HOME is ignored, as the XDG base directory rules say."""
    root = os.environ.get("XDG_CACHE_HOME")
    if not root or not os.path.isabs(root):
        try:
            root = str(Path.home() / ".cache")
        except RuntimeError:  # no $HOME and no passwd entry
            return None
    return Path(root) / "asl-sweep"


def blank_path() -> Path | None:
    """The blank store for this MLflow and SQLAlchemy (a schema from another is never used)."""
    folder = cache_folder()
    if folder is None:
        return None
    versions = f"mlflow-{metadata.version('mlflow')}-sqlalchemy-{metadata.version('sqlalchemy')}"
    return folder / f"blank-{versions}.db"


def _is_blank(file: Path) -> bool:
    """Whether `file` is a store this module wrote: MLflow's tables, a schema version, and
    no experiment, run or model in it."""
    try:
        with contextlib.closing(read_only(file)) as db:
            tables = {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"experiments", "runs", "alembic_version"} <= tables:
                return False
            if db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] != 1:
                return False
            return not any(db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                           for table in ("experiments", "runs", "registered_models")
                           if table in tables)
    except (sqlite3.Error, OSError):
        return False


def _make_blank(blank: Path, build: Callable[[str], None]) -> bool:
    """Have MLflow build a store beside `blank`, take its Default experiment out, and put it
    in place in one step (several processes may race to make it: each move is whole)."""
    try:
        blank.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=blank.parent, prefix=".blank-") as tmp:
            made = Path(tmp) / "mlflow.db"
            try:
                build(f"sqlite:///{made}")
            except Exception as e:  # the cache's fault (full, unwritable): the home's
                # store is MLflow's to build, and to fail on, naming the home
                log.debug("MLflow could not build a blank store in %s: %s", blank.parent, e)
                return False
            with contextlib.closing(sqlite3.connect(made)) as db, db:
                db.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
                db.execute("DELETE FROM experiments WHERE experiment_id = 0")
            if not _is_blank(made):
                return False
            os.replace(made, blank)
        return True
    except (OSError, sqlite3.Error) as e:
        log.debug("no blank MLflow store in %s: %s", blank.parent, e)
        return False


def seed(target: Path | None, build: Callable[[str], None]) -> bool:
    """Make the SQLite store `target` a copy of the blank store, if it does not exist yet (the
    blank is made first where it is missing or not one). True where it was copied; False
    leaves the store to MLflow, as for a database or tracking server's (`target` None)."""
    if target is None or target.exists() or not target.parent.is_dir():
        return False  # every later command: one look, no version lookup
    blank = blank_path()
    if blank is None:
        return False
    if not _is_blank(blank) and not _make_blank(blank, build):
        return False
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        part.write_bytes(blank.read_bytes())
        os.link(part, target)  # whole, and never over a store another process just made
    except FileExistsError:
        return False  # another process of this study made it first: it is the store
    except OSError as e:  # a home that cannot be written, a full disk: MLflow will say so
        log.debug("the MLflow store %s was not copied from %s: %s", target, blank, e)
        return False
    finally:
        with contextlib.suppress(OSError):
            part.unlink()
    log.debug("the MLflow store %s is a copy of %s", target, blank)
    return True
