"""Ctrl-C and SIGTERM, turned into a stop at a safe point. The handler only notes the signal;
the trainer (between batches) and the stage loops (between waits) call `check()`, which
raises KeyboardInterrupt there, never in the middle of a store's transaction, so the trial is
closed and queued again cleanly. A second signal stops at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

_requested: int | None = None
_stopped_in_trial = False  # whether the stop came while a trial trained (it is queued again)


def _note(signum, frame) -> None:  # noqa: ARG001
    global _requested
    if _requested is not None:  # asked twice: stop now, wherever we are
        raise KeyboardInterrupt(f"signal {signum}")
    _requested = signum


def install() -> None:
    global _requested
    _requested = None
    signal.signal(signal.SIGTERM, _note)
    signal.signal(signal.SIGINT, _note)


def check() -> None:
    if _requested is not None:
        raise KeyboardInterrupt(f"signal {_requested}")


@contextlib.contextmanager
def trial_running() -> Iterator[None]:
    """The block trains a trial: a stop inside it leaves that trial queued to run again."""
    global _stopped_in_trial
    try:
        yield
    except KeyboardInterrupt:
        _stopped_in_trial = True
        raise


def stopped_in_trial() -> bool:
    """Whether the last stop came while a trial trained (what the exit line says)."""
    return _stopped_in_trial


def stop_when_orphaned(parent: int, every: float = 1.0) -> None:
    """A worker that `run` started stops (as on SIGTERM: its trial closed and queued again)
    once that `run` is gone, even killed with SIGKILL, instead of training on unwatched."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
