"""Where a study's records live: one folder (default ./mlruns) holding the Optuna and MLflow
databases, MLflow artifacts, the decoded-image cache and in-flight trial checkpoints."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from asl_sweep.runtime.environment import named
from asl_sweep.runtime.errors import ConfigError, WriteError, as_text, is_text, not_text_folder
from asl_sweep.runtime.files import make_folder
from asl_sweep.runtime.machine import MOUNTINFO, network_filesystem


@dataclass(frozen=True)
class Workspace:
    home: Path
    storage: str  # Optuna storage URL
    tracking_uri: str  # MLflow tracking URI

    @classmethod
    def at(cls, home: str | Path = "mlruns", storage: str | None = None,
           tracking_uri: str | None = None) -> Workspace:
        if storage is not None:
            _check_database(named(storage, "--storage"), storage, f"{_DATABASES} or "
                            "grpc://HOST:PORT (asl-sweep store-proxy)", grpc=True)
        if tracking_uri is not None:
            _check_tracking(tracking_uri)
        _check_home(Path(home))
        home = Path(home).resolve()
        made = cls(home=home, storage=storage or f"sqlite:///{home / 'optuna.db'}",
                   tracking_uri=tracking_uri or f"sqlite:///{home / 'mlflow.db'}")
        made._check_apart(named(storage or "", "--storage"),
                          named(tracking_uri or "", "--tracking"))
        return made

    def _check_apart(self, storage_flag: str, tracking_flag: str) -> None:
        """Optuna and MLflow each keep their own database: both in one (or one's file given
        for the other's) mixes their tables, both versioned in one alembic_version table,
        and either library then fails with a migration traceback, after writing its tables
        into the other's file."""
        database = _database_of(self.storage)
        if database is not None and database == _database_of(self.tracking_uri):
            raise ConfigError(f"{storage_flag} and {tracking_flag} name one database "
                              f"({shown(self.tracking_uri)}): Optuna and MLflow each need "
                              "their own (createdb optuna && createdb mlflow, or optuna.db and "
                              "mlflow.db)")
        for flag, url, mine, theirs, kind in (
                (storage_flag, self.storage, "studies", "experiments", "an MLflow store"),
                (tracking_flag, self.tracking_uri, "experiments", "studies",
                 "an Optuna store")):
            _not_the_others(flag, url, mine, theirs, kind)

    @property
    def tracking_file(self) -> Path | None:
        """The MLflow store's SQLite file (None for a database or tracking server)."""
        return _sqlite_file(self.tracking_uri)

    @property
    def has_tracking_store(self) -> bool:
        """Whether there is an MLflow store to read: a server, or the SQLite file the URI
        names (which merely opening it would create)."""
        file = self.tracking_file
        return file is None or file.exists()

    @property
    def tracking_server(self) -> bool:
        """Whether MLflow is a tracking server (its artifacts behind it, no folder shared)
        rather than a database this machine writes, with the artifacts in the home."""
        return self.tracking_uri.startswith(("http://", "https://"))

    @property
    def has_storage(self) -> bool:
        """Whether there is an Optuna store to read: a server, or the SQLite file it names."""
        file = _sqlite_file(self.storage)
        return file is None or file.exists()

    def networked_stores(self, mountinfo: Path = MOUNTINFO) -> str | None:
        """Where a SQLite store of this workspace lies on a network file system (NFS, SMB,
        ...; a cluster's home folder often is one), whose locks SQLite cannot count on with
        several processes writing: what to say about it, else None."""
        for file in filter(None, map(_sqlite_file, (self.storage, self.tracking_uri))):
            kind = network_filesystem(file, mountinfo)
            if kind is not None:
                return f"the SQLite store {file} is on {kind}, a network file system"
        return None

    def prepare(self) -> Workspace:
        """Create the folders; a home that cannot be written is one WriteError."""
        # The stores' own folders too, where --storage/--tracking name a SQLite file outside
        # the home (MLflow made its own; Optuna's was "unable to open database file").
        stores = [f.parent for f in map(_sqlite_file, (self.storage, self.tracking_uri)) if f]
        for folder in (self.home, self.artifacts, self.cache, self.runs, *stores):
            make_folder(folder)
        probe = self.home / f".write-probe-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise WriteError.of(self.home, e) from None
        return self

    @contextmanager
    def store_lock(self) -> Iterator[None]:
        """Held while the Optuna and MLflow stores are created or migrated: two processes
        that start at once on a fresh home would otherwise both migrate, and a half-built
        schema stays broken for good."""
        with open(self.home / ".stores.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def exports(self) -> Path:
        return self.home / "exports"


def shown(url: str) -> str:
    """A store URL as it may be printed or logged: a password in it (postgresql://USER:
    PASSWORD@HOST/DB, https://USER:TOKEN@HOST, ?password=...) is shown as ***, as
    SQLAlchemy shows its URLs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    path = re.sub(r"(?i)\b(password=)[^&]*", r"\1***", path)
    return f"{scheme}{sep}{netloc}{slash}{path}"


_DATABASES = "sqlite:///PATH/optuna.db, postgresql://USER@HOST/DB"


def check_proxied(url: str) -> None:
    """`store-proxy --storage`: the database the proxy fronts, checked as `run` checks its
    --storage (a path, a typo in the scheme or MLflow's database was SQLAlchemy's traceback,
    or Optuna's "made by another Optuna version"), before the proxy says it serves."""
    give = f"{_DATABASES} (the database the proxy fronts)"
    if url.startswith("grpc://"):
        raise ConfigError(f"--storage {url}: a storage proxy, where the proxy fronts a "
                          f"database; give {give}")
    _check_database("--storage", url, give)
    _not_the_others("--storage", url, "studies", "experiments", "an MLflow store")


def _not_the_others(flag: str, url: str, mine: str, theirs: str, kind: str) -> None:
    """A SQLite store that holds the other library's tables and not this one's."""
    tables = _sqlite_tables(url)
    if theirs in tables and mine not in tables:
        raise ConfigError(f"{flag} {shown(url)}: {kind} (it holds that library's "
                          "tables), not the one this flag takes: --storage is the "
                          "Optuna store (optuna.db), --tracking the MLflow one "
                          "(mlflow.db)")


def _check_database(flag: str, url: str, give: str, grpc: bool = False) -> None:
    """A store URL as the run will open it, checked before anything starts: a path, a typo in
    the scheme or a database whose driver is not installed is one line, not SQLAlchemy's
    traceback from deep in the first worker."""
    if url.startswith("grpc://") and grpc:
        return
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
        parsed.get_dialect().import_dbapi()
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"{flag} {shown(url)}: not a database URL; give {give}") from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise ConfigError(f"{flag} {shown(url)}: no database of that kind; give {give}") from None
    except ImportError as e:
        raise ConfigError(f"{flag} {shown(url)}: its database driver is not installed "
                          f"({e.name or e}); install it, or give {give}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # Optuna's and MLflow's tracebacks: each connection its own empty database
        raise ConfigError(f"{flag} {shown(url)}: a database in memory, gone as each "
                          f"connection closes and never shared with a worker; give {give}")


def _check_tracking(uri: str) -> None:
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        return
    give = ("sqlite:///PATH/mlflow.db, postgresql://USER@HOST/DB or http://HOST:PORT (an "
            "MLflow tracking server)")
    flag = named(uri, "--tracking")
    if uri.lower().startswith("databricks"):  # was let through, then SQLAlchemy's traceback
        raise ConfigError(f"{flag} {shown(uri)}: Databricks' hosted MLflow is not one asl-sweep "
                          f"runs on (its artifacts and registry are untested here); give {give}")
    if scheme in ("", "file"):
        raise ConfigError(f"{flag} {shown(uri)}: a folder is MLflow's old plain-folder store, "
                          f"which MLflow no longer develops; give {give}")
    _check_database(flag, uri, give)


def _database_of(url: str) -> tuple | None:
    """What names a database server's database or a SQLite file, whatever the driver or the
    spelling of the URL (None for a tracking server, a gRPC proxy, or a URL that is not
    one)."""
    file = _sqlite_file(url)
    if file is not None:
        return ("sqlite", str(file.resolve()))
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None
    if parsed.get_backend_name() == "sqlite":  # in memory, or a relative path: never shared
        return None
    backend = parsed.get_backend_name()
    return (backend, parsed.host, parsed.port or _DEFAULT_PORTS.get(backend), parsed.database)


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}


def read_only(file: Path):
    """A SQLite file opened read-only (never created, never written), by its absolute path:
    a relative one (`--tracking sqlite:///mlflow.db`) has no file URI."""
    import sqlite3

    return sqlite3.connect(f"{file.absolute().as_uri()}?mode=ro", uri=True)


def _sqlite_tables(url: str) -> set[str]:
    """The tables of an existing SQLite store (read-only; none for a new one or a server)."""
    import sqlite3

    file = _sqlite_file(url)
    if file is None or not file.is_file():
        return set()
    try:
        with contextlib.closing(read_only(file)) as db:
            return {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error:  # damaged: the store's own opening says so
        return set()


def _sqlite_file(url: str) -> Path | None:
    """The file of a sqlite:/// URL (None for a server's URL)."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///"):].split("?", 1)[0])


def _check_home(home: Path) -> None:
    """A home (or a folder above it) that is a file, or one named in another encoding (the
    stores' addresses could not hold it): one line before anything starts."""
    if not is_text(home.absolute()):
        raise ConfigError(not_text_folder(f"--home {as_text(home)}"))
    for folder in (home, *home.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"--home {home}: {folder} is a file, not a folder: name a "
                                  "folder for the study's records (or a path not yet taken)")
            return
