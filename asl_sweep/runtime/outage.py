"""A store that stops answering (a database restarted, a network blip): its calls are retried
with backoff for a bounded time, then the command stops with one line naming the store and
what to do. Only a lost connection is retried: any other error is raised as it came.

The bound is ASL_SWEEP_STORE_RETRY_S seconds (default 120). Once a call has given up, later
calls fail at once until that store answers, so a stopping run does not wait again for each
of the closing writes it attempts. Only calls that reach the store go through here: one that
succeeds is the store answering again (a local file written meanwhile is not, nor another
store's answer)."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from asl_sweep.runtime import environment, signals
from asl_sweep.runtime.errors import StoreError, refusal

log = logging.getLogger(__name__)

# What PostgreSQL, MySQL and their drivers say when the server is gone (lower case).
_LOST = ("connection refused", "connection failed", "could not connect",
         "server closed the connection", "terminating connection", "connection is closed",
         "the connection is closed", "connection not open", "connection reset",
         "the database system is shutting down", "the database system is starting up",
         "ssl connection has been closed", "no connection to the server",
         "lost connection to", "server has gone away", "consuming input failed",
         "statuscode.unavailable",  # gRPC's word for a proxy that is not there
         # A tracking server failing every request (its database away or full), or a proxy
         # in front of one that is down, once MLflow's own retries are spent (urllib3's
         # words)
         "too many 500 error responses", "too many 502 error responses",
         "too many 503 error responses", "too many 504 error responses",
         # ... or the answer itself, where MLflow's client returned it without retrying
         # (seen in the suite: a 503 then ended the run with MLflow's traceback)
         "error code 500 != 200", "error code 502 != 200", "error code 503 != 200",
         "error code 504 != 200")

# Per store (its name): a store's outage ends when that store answers, not when another one
# does (a tracking server down beside an Optuna proxy that answers).
_gave_up: set[str] = set()  # stores whose calls gave up; while any has, the run is stopping
_said: set[str] = set()  # stores away now; the first to go is said, whichever call meets it


def lost_connection(error: BaseException | None) -> str | None:
    """The line that says the connection was lost, anywhere in `error`'s chain, or None
    (None too where the store's address was refused: a server that answers "no such
    database", a host name that does not resolve; waiting does not mend those)."""
    if refusal(error) is not None:
        return None
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        for line in str(error).splitlines():
            line = " ".join(line.split())
            ends = [line.lower().index(s) + len(s) for s in _LOST if s in line.lower()]
            if ends:
                return _ending_at(line, max(ends))
        error = error.__cause__ or error.__context__
    return None


def _ending_at(line: str, end: int, width: int = 160) -> str:
    """`line`, or where it is long the words that lead up to `end` (MLflow's client says
    "API request to URL failed with exception ... Max retries exceeded with url: ..." before
    the words that matter, "[Errno 111] Connection refused")."""
    if len(line) <= width:
        return line
    start = max(0, end - width)
    start = line.find(" ", start) + 1 if start else 0
    return "..." + line[start:end]


def retrying(fn: Callable[..., Any], store: str,
             once: Callable[[], contextlib.AbstractContextManager] | None = None
             ) -> Callable[..., Any]:
    """`fn`, its calls retried while `store` does not answer. `once`: a context in which
    the store's own client tries a call once, its own retries off; a call made after the
    store gave up runs in it, so each closing write of a stopping run costs one refused
    connection, not the client's backoff (MLflow's: 3-4 s a write, after the budget)."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        budget = environment.store_retry_seconds()
        deadline, delay = time.monotonic() + budget, 0.5
        while True:
            try:
                with (once() if once is not None and store in _gave_up
                      else contextlib.nullcontext()):
                    result = fn(*args, **kwargs)
                _gave_up.discard(store)
                _said.discard(store)
                return result
            except Exception as e:
                reason = lost_connection(e)
                if reason is None:
                    raise
                left = deadline - time.monotonic()
                stop = signals.requested() and left > 0 and not _gave_up
                if _gave_up or left <= 0 or stop:
                    # A Ctrl-C or SIGTERM ends the wait too (it was taken only after it).
                    _gave_up.add(store)
                    waited = ("is not answering and a stop was asked for" if stop
                              else f"has not answered for {budget:.0f} s")
                    raise StoreError(
                        f"{store} {waited} ({reason}); nothing recorded was lost: start it "
                        "again (or mend the network), then rerun the same command") from None
                if not _said:
                    log.warning("%s is not answering (%s); retrying for up to %.0f s",
                                store, reason, left)
                _said.add(store)
                signals.pause(min(delay, left))
                delay = min(delay * 2, 10.0)

    return call


class Retrying:
    """Every method of `target` called through `retrying` (an MLflow client, for one)."""

    def __init__(self, target: Any, store: str,
                 once: Callable[[], contextlib.AbstractContextManager] | None = None):
        self._target, self._store, self._once = target, store, once

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        return retrying(value, self._store, self._once) if callable(value) else value


def created_elsewhere(fn: Callable[[], Any], attempts: int = 5) -> Any:
    """`fn()`, which may create a new database's tables: processes of several machines
    starting together on an empty database collide on the tables or types the first one is
    making (a unique or duplicate violation) and find them made a moment later, so such a
    collision is tried again, a few times, after a random pause."""
    import sqlalchemy.exc

    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts:
                raise
            log.debug("tables being created by another process; trying again")
            time.sleep(1.0 + random.random() * 2.0)
