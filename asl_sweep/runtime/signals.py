"""Ctrl-C and SIGTERM, turned into a stop at a safe point. The handler only notes the signal;
the trainer (between batches) and the stage loops (between waits) call `check()`, which
raises KeyboardInterrupt there, never in the middle of a store's transaction, so the trial is
closed and queued again cleanly. A second signal stops at once."""

from __future__ import annotations

import signal

_requested: int | None = None


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
