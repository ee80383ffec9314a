"""Crash-safe files. Every write goes to a temp file, is fsynced, then replaces the target, and
an I/O failure (disk full, read-only folder) becomes one WriteError naming the path. Every
tensor load uses weights_only=True, so a pickle that would run code is refused."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from asl_sweep.runtime.errors import ModelFileError, UnsafeFileError, WriteError


def _file_mode() -> int:
    """The mode an ordinary new file gets here (0o666 less the umask): temp files are made
    0o600, and a report or model card must not end up more private than every other output."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes | memoryview, sync: bool = True) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise WriteError.of(path, e) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def make_folder(path: Path) -> Path:
    """Create a folder and its parents; a file in the way or a folder that cannot be made is one
    WriteError naming the path, raised before anything is written into it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        where = "this folder" if blocker == path else f"it ({blocker} is a file)"
        raise WriteError(f"{path}: a file is in the way of {where}: name a folder, or a "
                         "path not yet taken, and rerun the same command", path) from None
    except OSError as e:
        raise WriteError.of(path, e) from None
    return path


def need_room(folder: Path, need: int, what: str) -> None:
    """One WriteError where `folder`'s disk has less than `need` bytes free for `what`: for
    a writer that cannot be stopped cleanly once it meets a full disk (torch's own, inside
    MLflow, aborts the process from C++)."""
    import shutil

    free = shutil.disk_usage(folder).free
    if free < need:
        raise WriteError(f"{folder}: {free / 2**20:.1f} MB free, {what} needs about "
                         f"{need / 2**20:.1f} MB there; nothing recorded was lost: free space "
                         "(or point TMPDIR at a folder with room), then rerun the same command",
                         folder)


def torch_bytes(obj: Any) -> memoryview:
    """torch.save into memory: the disk write then fails as an OSError a person can read,
    not as torch's 'PytorchStreamWriter failed writing file'."""
    import torch  # here, not at the top: the workspace makes its folders with this module,
    # and commands that only read the stores (status, a bad study file) load no torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def atomic_torch_save(obj: Any, path: Path, sync: bool = True) -> None:
    atomic_write_bytes(path, torch_bytes(obj), sync)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_tensors(path: Path, mmap: bool = False, map_location: Any = "cpu") -> Any:
    """torch.load restricted to tensors and plain containers (weights_only=True)."""
    import torch

    try:
        with warnings.catch_warnings():
            # A raw pickle draws torch's note on its protocol before the refusal below: the
            # refusal is what the user needs to read.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, not a file") from None
    except PermissionError:
        raise ModelFileError(f"{path}: not readable (permission denied)") from None
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError,
            ValueError) as e:
        # torch names a blocked callable as "Unsupported global: GLOBAL eval ..." or as
        # "unsupported GLOBAL posix.system whose module posix is blocked".
        if "unsupported global" in str(e).lower() or "Unsupported class" in str(e):
            raise UnsafeFileError(
                f"{path}: refused, it holds Python objects beyond tensors and plain containers "
                "(loading it would run arbitrary code)") from None
        raise ModelFileError(f"{path}: not a file asl-sweep wrote, or damaged "
                             f"({type(e).__name__})") from None
