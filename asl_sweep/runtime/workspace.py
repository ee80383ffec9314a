"""Where a study's records live: one folder (default ./mlruns) holding the Optuna and MLflow
databases, MLflow artifacts, the decoded-image cache and in-flight trial checkpoints."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from asl_sweep.runtime.errors import WriteError
from asl_sweep.runtime.files import make_folder


@dataclass(frozen=True)
class Workspace:
    home: Path
    storage: str  # Optuna storage URL
    tracking_uri: str  # MLflow tracking URI

    @classmethod
    def at(cls, home: str | Path = "mlruns", storage: str | None = None,
           tracking_uri: str | None = None) -> Workspace:
        home = Path(home).resolve()
        return cls(home=home,
                   storage=storage or f"sqlite:///{home / 'optuna.db'}",
                   tracking_uri=tracking_uri or f"sqlite:///{home / 'mlflow.db'}")

    @property
    def has_tracking_store(self) -> bool:
        """Whether there is an MLflow store to read: a server, or the SQLite file the URI
        names (which merely opening it would create)."""
        file = _sqlite_file(self.tracking_uri)
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

    def prepare(self) -> Workspace:
        """Create the folders; a home that cannot be written is one WriteError."""
        for folder in (self.home, self.artifacts, self.cache, self.runs):
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


def _sqlite_file(url: str) -> Path | None:
    """The file of a sqlite:/// URL (None for a server's URL)."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///"):].split("?", 1)[0])
