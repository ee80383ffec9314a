"""Crash-safe files: every write goes to a temp file, is fsynced, then replaces the target;
every tensor load uses weights_only=True, so a pickle that would run code is refused."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(Exception):
    """A file that needs arbitrary pickle code to load; refused."""


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


def load_tensors(path: Path, mmap: bool = False, map_location: Any = "cpu") -> Any:
    """torch.load restricted to tensors and plain containers (weights_only=True)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (RuntimeError, pickle.UnpicklingError) as e:
        if "Weights only load failed" in str(e):
            raise UnsafeCheckpointError(
                f"{path}: refused, it holds Python objects beyond tensors and plain containers "
                "(loading it would run arbitrary code)") from None
        raise
