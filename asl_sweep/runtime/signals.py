"""Ctrl-C, SIGTERM and a closed terminal (SIGHUP), turned into a stop at a safe point. The
handler only notes the signal; the trainer (between batches) and the stage loops (between
waits) call `check()`, which raises KeyboardInterrupt there, never in the middle of a store's
transaction, so the trial is closed and queued again cleanly. A second signal stops at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

_requested: int | None = None
_at_once = False  # in a block that records nothing (`at_once`): a stop is taken there
_stopped_in_trial = False  # whether the stop came while a trial trained (it is queued again)
_terminal: list[int] = []  # standard output and error where they are a terminal

# A stop passed on to a worker by the `run` that started it (or by its orphan watch). It asks
# once and never counts as the second signal that stops at once: a Ctrl-C in a terminal
# reaches every process of the group, the workers too, and `run` then passes it on as well.
PASSED_ON = getattr(signal, "SIGUSR1", None)


def _note(signum, frame) -> None:  # noqa: ARG001
    global _requested
    if _requested is not None or _at_once:  # asked twice, or nothing to close: stop now
        raise KeyboardInterrupt(f"signal {signum}")
    _requested = signum


def _note_passed_on(signum, frame) -> None:  # noqa: ARG001
    global _requested
    if _requested is None:
        _requested = signum


def _hang_up(signum, frame) -> None:  # noqa: ARG001
    """The terminal was closed: a write to it would now fail (EIO), so what is still said on
    the way to the safe point goes nowhere instead of stopping the stop half-way. It never
    counts as the second signal: the kernel and the shell may each send it."""
    global _requested
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in _terminal:
        os.dup2(null, fd)
    os.close(null)
    if _requested is None:
        _requested = signum


def install() -> None:
    global _requested, _terminal
    _requested = None
    signal.signal(signal.SIGTERM, _note)
    signal.signal(signal.SIGINT, _note)
    # A closed terminal kills a process at once by default: the trial in training stayed
    # RUNNING in both stores until a rerun. `nohup` (SIGHUP ignored) is left as it is.
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        _terminal = [fd for fd in (1, 2) if _is_terminal(fd)]
        signal.signal(hangup, _hang_up)
    if PASSED_ON is not None:
        signal.signal(PASSED_ON, _note_passed_on)
    if hasattr(signal, "pthread_sigmask"):  # a Ctrl-C held back while this worker started
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


@contextlib.contextmanager
def ctrl_c_held_for_child() -> Iterator[None]:
    """A child process started in the block inherits Ctrl-C blocked (held, not lost). A worker
    takes it at install(), as a stop at a safe point rather than a traceback of an import; a
    server (the MLflow UI, a model server) never unblocks it, so the terminal's Ctrl-C stops
    only asl-sweep, which stops the server as it should (SIGTERM) instead of the server
    printing its own KeyboardInterrupt. Here a Ctrl-C in the block is taken as it ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def pass_on(proc, again: bool = False) -> None:
    """Ask a worker process to stop at its next safe point (its trial closed and queued
    again), however many of its own signals it got already; `again`: this process was asked
    twice, so the worker is too (SIGTERM, which on top of a stop asked stops it at once)."""
    if again or PASSED_ON is None:
        proc.terminate()
    else:
        proc.send_signal(PASSED_ON)


@contextlib.contextmanager
def at_once() -> Iterator[None]:
    """A block that records nothing (a command loading torch and MLflow, reading a study
    back: seconds): a Ctrl-C or SIGTERM there stops the command at once, not at the first
    safe point after it. One asked before the block is taken as it begins."""
    global _at_once
    check()
    _at_once = True
    try:
        yield
    finally:
        _at_once = False


def check() -> None:
    if _requested is not None:
        raise KeyboardInterrupt(f"signal {_requested}")


def requested() -> bool:
    """Whether a stop has been asked for (for a wait that must end, but not by raising
    KeyboardInterrupt where the caller is closing what it recorded)."""
    return _requested is not None


def pause(seconds: float, step: float = 0.1) -> None:
    """time.sleep(seconds), cut short once a stop is asked for (a sleep resumes after the
    signal's handler, so a 10 s backoff would hold a Ctrl-C for 10 s)."""
    end = time.monotonic() + seconds
    while not requested() and (left := end - time.monotonic()) > 0:
        time.sleep(min(step, left))


def wait(seconds: float) -> None:
    """A pause at a safe point: `pause`, then the stop, where one was asked for (raised as
    KeyboardInterrupt, as `check` does)."""
    pause(seconds)
    check()


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
        os.kill(os.getpid(), PASSED_ON or signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
