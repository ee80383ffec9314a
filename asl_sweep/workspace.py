"""Where a study's records live: one folder (default ./mlruns) holding the Optuna and MLflow
databases, MLflow artifacts, the decoded-image cache and in-flight trial checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

    def prepare(self) -> Workspace:
        for folder in (self.home, self.artifacts, self.cache, self.runs):
            folder.mkdir(parents=True, exist_ok=True)
        return self

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
