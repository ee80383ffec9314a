"""The state the workers of a study share, and the protocol they keep on it.

Every worker, on any machine, reads and writes one Optuna storage. What asl-sweep keeps
there besides Optuna's own trials is named here, once, and nowhere else:

- `StageKey`: a stage's keys, on its Optuna study (Optuna system attributes under PREFIX);
- `RecordKey`: the study record's keys (the Optuna study of the study's own name);
- `TrialKey`: each trial's user attributes; `Role` and `Failure` are the values of two;
- the protocol: who runs which trial (a WAITING trial is taken by exactly one worker,
  `take_waiting`), a stage's budget as WAITING search trials queued up front (so no worker
  ever asks a trial the budget has no room for), claims on one-time jobs (`claim`; the
  wait for one, taken over once where its holder died: `does_job`; a long one beats its
  claim: `holding`), beats, dead workers, and a failed trial queued again (`Requeue`).

Each key's docstring line says who writes it and who reads it."""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from asl_sweep.runtime import signals
from asl_sweep.search.optuna_api import keeps_heartbeats, storage_of, study_id_of, trial_id_of

HEARTBEAT_S, GRACE_S, MAX_RETRY = 5, 30, 3  # MAX_RETRY: attempts a bug may stop (Requeue)
# A trial lost with its worker this many times counts as failed on its own: a process killed
# whenever it trains some settings (the kernel's out-of-memory killer) was retried until the
# retries ran out, each rerun killed again without a word, then dropped without one.
MAX_LOST = 3
log = logging.getLogger(__name__)

# asl-sweep's keys on a study go into Optuna's system attributes under this prefix: user
# attributes stay a short human-readable summary (what `optuna studies` prints).
PREFIX = "asl_sweep:"


class StageKey(StrEnum):
    """A stage's shared keys (on its Optuna study). Written by the process named; read by
    every worker that opens the stage, and by `status`, `report` and `export`."""

    CARRIED = "carried"  # the stage's creator, last of its set-up: "the stage is ready"
    STAGE_RUN = "mlflow_stage_run"  # creator: the stage's MLflow run
    RUN_ENDED = "stage_run_ended"  # a worker that ended the stage's run before its decision
    # (killed, failed, gate missed): the workers that join the stage later reopen the run
    INDEX = "index"  # creator: the stage's place in the study
    UID = "uid"  # creator: this stage study's own id (checkpoints name it)
    DECIDED_BY = "decided_by"  # creator: which earlier stage decided each carried setting
    REFERENCE = "reference"  # creator: what the stage before carried, whole
    SWITCHED_FROM = "previous_family"  # creator: the family the stage switched from, or None
    START = "start"  # creator: the settings its trials start from (study.stage_start)
    BUDGET = "budget"  # every process that opens it: the `trials` it last ran with
    SEARCH_SECONDS = "search_seconds"  # each worker after a trial: search time, all runs
    PLAN = "plan"  # the claim's holder: which trials the confirmation repeats
    QUEUED = "queued"  # the plan's holder: the fixed rule's repeats are queued
    ROUNDS_QUEUED = "rounds_queued"  # a race's rounds queued so far (any worker, max wins)
    RESULT = "result"  # every worker that reaches the decision (the same from the same trials)
    MIRRORED = "recorded"  # the worker that mirrored the decision into MLflow
    STOPPED = "stopped"  # the worker whose gate check stopped the study: why (cleared when
    # the stage runs again)


@dataclass
class ConfirmPlan:
    """The value of StageKey.PLAN: which trials a stage's confirmation repeats, made once by
    the worker that claims it, read by every worker and by status and report."""

    incumbent: int  # the trial candidates must beat
    candidates: list[int]  # the search trials put forward
    first_repeat: int | None  # the stage number of its repeats study's trial 0 (None: old
    # stores, whose repeats live in the stage's own study)
    rule: str  # race | fixed
    repeats: int  # max_repeats (race) or repeats (fixed)
    by: str = ""  # worker_id() of its maker
    # Candidates dropped before the race (confirm.search_gain): trial -> its search trial's
    # paired difference with the incumbent's, sign applied (<= 0).
    unraced: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, stored: dict[str, Any]) -> ConfirmPlan:
        return _from_stored(cls, stored)


def _from_stored(cls: type, stored: dict[str, Any]) -> Any:
    """A record dataclass from its stored dict: the keys it knows (a store may hold more)."""
    return cls(**{f.name: stored[f.name] for f in fields(cls) if f.name in stored})


def round_key(upto: int) -> str:
    """The claim on queueing a race's rounds up to `upto` (held by one worker)."""
    return f"round_{upto}"


def queued_key(claim: str) -> str:
    """Set once the repeats a claim stands for are queued."""
    return f"{claim}_queued"


class RecordKey(StrEnum):
    """The study record's keys. Written by the first run (data, digest, study run; settings
    by every run whose settings differ from the stored ones), by each
    finished training (trained entries, search/reuse.py) and by the final score; read by
    every later command."""

    DATA = "data"  # the data settings the study is bound to
    DIGEST = "digest"  # a digest of its files
    STUDY_RUN = "mlflow_study_run"  # the study's MLflow run (the record's creator makes it)
    SETTINGS = "settings"  # the study's settings as its last run read them (YAML and --set)
    FINAL = "final"  # the final test score, once


class SummaryKey(StrEnum):
    """Short user attributes on the Optuna studies, for `optuna studies` and the dashboard:
    written where the thing they sum up is decided, read by people."""

    KIND = "kind"  # the record: STUDY_RECORD
    DECISION = "decision"  # a decided stage: its decision, cut short
    CHOSEN_TRIAL = "chosen_trial"  # a decided stage: the trial it carries
    TEST_ACC = "test_acc"  # the record: the final test score


STUDY_RECORD = "study record"  # SummaryKey.KIND of a study record, and of nothing else

TRAINED_PREFIX = "trained:"  # + a training key (search/reuse.py): a training on record


class TrialKey(StrEnum):
    """Each trial's user attributes (Optuna's, so `optuna` and the dashboard show them).
    Set when the trial is queued (role, confirms, repeat, incumbent, previous_family,
    seed_trial, reported) or by the worker that runs it (the rest); read by the selection
    rules, progress, status, report and export. What a finished trial scored is one of them,
    `outcome` (TrialOutcome); stores of earlier versions hold its fields as keys of their
    own (the seven below it), which `outcome_of` reads as well."""

    ROLE = "role"
    CONFIRMS = "confirms"  # a repeat: the stage trial whose configuration it repeats
    REPEAT = "repeat"  # a repeat's number r: seed + r and fold r
    INCUMBENT = "incumbent"  # a repeat of the incumbent
    PREVIOUS_FAMILY = "previous_family"  # the second incumbent, of the family switched from
    SEED_TRIAL = "seed_trial"
    REPORTED = "reported"  # a seed trial's figure as its author reported it
    FAILURE = "failure"  # why a FAIL trial failed (Failure)
    RUN = "mlflow_run_id"
    WORKER = "worker"  # worker_id() of the process that ran it
    PRUNED_BY = "pruned_by"  # what a pruned trial was compared with (the incumbent pruner)
    OUTCOME = "outcome"  # a finished trial's TrialOutcome, written once by its worker
    # Earlier versions' keys, one a field of TrialOutcome (read by outcome_of only):
    FOLD = "fold"
    DECIDED_BY = "decided_by"
    METRICS = "metrics"
    LAST = "last"
    NUM_PARAMS = "num_params"
    REUSED_FROM = "reused_from"
    FOLD_VALUES = "fold_values"


@dataclass
class TrialOutcome:
    """What a finished trial scored and where it came from: one user attribute
    (TrialKey.OUTCOME), written by the worker that ran it, trained or reused, just before it
    tells Optuna its value (one storage call where one a field took seven: Optuna sets one
    attribute a call). Read through `outcome_of` by the selection rules, progress, status,
    report, evaluate and export."""

    metrics: dict[str, float]  # the best epoch's metrics
    last: dict[str, float]  # the last epoch's metrics
    num_params: int
    fold: int = 0  # the person fold it validated on (its repeat's, where repeats change fold)
    decided_by: dict[str, str] = field(default_factory=dict)  # which stage decided each
    # of its settings
    reused_from: str | None = None  # "stage S, trial N": the training it took instead
    fold_values: list[float] | None = None  # with a stage's `folds`: the value on each fold
    # (their mean is the trial's value)
    step: float | None = None  # the least change one validation image makes to the value a
    # race compares on its fold (training.train.crossfit_step): the step its values come in
    crossfit: float | None = None  # the best epoch's metric chosen on one half of the
    # validation people and scored on the other (training.train.crossfit): what a race
    # compares; None for a trial stored without it (the race reads its value)

    def stored(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def of(cls, stored: dict[str, Any]) -> TrialOutcome:
        return _from_stored(cls, stored)


def outcome_of(trial: FrozenTrial) -> TrialOutcome | None:
    """A finished trial's outcome; None for one that has none (pruned, failed, running)."""
    attrs = trial.user_attrs
    if TrialKey.OUTCOME in attrs:
        return TrialOutcome.of(attrs[TrialKey.OUTCOME])
    if TrialKey.METRICS in attrs:  # a store of an earlier version: a key a field
        return TrialOutcome.of({"last": {}, "num_params": 0, **attrs})
    return None


def reused_from(trial: FrozenTrial) -> str | None:
    """The training a finished trial took instead of training ("stage S, trial N"), if any."""
    outcome = outcome_of(trial)
    return outcome.reused_from if outcome is not None else None


class Role(StrEnum):
    INCUMBENT = "incumbent"  # what the stage starts from, trained unchanged
    SEED = "seed"  # a seed trial of the study YAML
    SEARCH = "search"  # sampled
    CONFIRM = "confirm"  # a confirmation repeat


class Failure(StrEnum):
    """Why a trial is FAIL. Only ERROR is the trial's own: it used its turn."""

    ERROR = "error"  # its own failure (non-finite loss, out of memory, unbuildable settings)
    STOPPED = "stopped"  # a fault the user can fix, or a full disk: queued again
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: queued again
    CRASHED = "crashed"  # a bug in asl-sweep: queued again
    SURPLUS = "surplus"  # asked past the budget (stores written before budgets were queued)
    UNUSED = "unused"  # a queued budget slot the stage did not need (target, timeout)


# Optuna's own system attributes that asl-sweep reads.
FIXED_PARAMS, FAILED_TRIAL, RETRY_HISTORY = "fixed_params", "failed_trial", "retry_history"
LOST_ATTEMPTS = PREFIX + "lost_attempts"  # how many of a retried trial's attempts were lost
CRASHED_ATTEMPTS = PREFIX + "crashed_attempts"  # ... and how many met a bug
# What a retry keeps of Optuna's own: its queued settings, and the grid point it holds (a
# retry without one was a fresh slot to the grid sampler: it took another point, while it
# trained the first, and the grid skipped or repeated points).
_KEPT_SYSTEM = (FIXED_PARAMS, "grid_id", "search_space")
# The user attributes a retried trial keeps: what it is, not how its last attempt went.
KEPT_ON_RETRY = (TrialKey.ROLE, TrialKey.CONFIRMS, TrialKey.REPEAT, TrialKey.INCUMBENT,
                 TrialKey.PREVIOUS_FAMILY, TrialKey.SEED_TRIAL, TrialKey.REPORTED)
SEARCH_ROLES = (Role.SEED, Role.SEARCH)  # the trials a stage's `trials` budget counts


# --- a study's keys ---------------------------------------------------------------------

def open_shared(name: str, storage, direction: str | None = None,
                pruner: optuna.pruners.BasePruner | None = None,
                sampler: optuna.samplers.BaseSampler | None = None,
                creator_sampler: optuna.samplers.BaseSampler | None = None
                ) -> tuple[optuna.Study, bool]:
    """Study `name`, loaded where it exists (every worker of a fleet but the first: two
    storage calls, where creating first and loading on the duplicate took three), else
    created (sampling with `creator_sampler` where given); and whether this call created it
    (exactly one worker does). Every study the workers share is opened here."""
    try:
        return optuna.load_study(study_name=name, storage=storage, pruner=pruner,
                                 sampler=sampler), False
    except KeyError:
        pass
    try:
        return optuna.create_study(storage=storage, study_name=name, direction=direction,
                                   pruner=pruner, sampler=creator_sampler or sampler), True
    except optuna.exceptions.DuplicatedStudyError:  # another made it a moment ago
        return optuna.load_study(study_name=name, storage=storage, pruner=pruner,
                                 sampler=sampler), False


def read(study: optuna.Study) -> dict[str, Any]:
    """Every asl-sweep key of a stage study or the study record, one read."""
    stored = storage_of(study).get_study_system_attrs(study_id_of(study))
    return {k[len(PREFIX):]: v for k, v in stored.items() if k.startswith(PREFIX)}


def write(study: optuna.Study, key: str, value: Any) -> None:
    """Set a key. Two workers that add the same new key at once collide on the store's
    unique key: the later one then updates the row the earlier one made."""
    for attempt in range(3):
        try:
            storage_of(study).set_study_system_attr(study_id_of(study), PREFIX + str(key),
                                                    value)
            return
        except optuna.exceptions.StorageInternalError:
            if attempt == 2:
                raise
            time.sleep(0.1 * (attempt + 1))


def jittered(seconds: float) -> float:
    """`seconds`, up to a quarter more or less at random: workers that start waiting
    together do not keep looking together."""
    return seconds * (0.75 + 0.5 * random.random())


def wait_for(study: optuna.Study, key: str, seconds: float = 60.0) -> dict[str, Any] | None:
    """The study's keys (`read`) once `key` is among them, within `seconds` (another worker
    is writing it); None when it is not by then. Looks at once (a worker joining late finds
    it there), then after two seconds, then four, then every eight (jittered): setting a
    stage up takes a worker several seconds on a loaded store, and every other worker of a
    fleet waits on it at once (64 looking every second were a tenth of the fleet's storage
    calls; looking after 1, 2 and 4 s, 2.6 of a trial's 31, most of them the reads the
    callers need anyway). The caller reads no keys again."""
    deadline, pause = time.monotonic() + seconds, 2.0
    while str(key) not in (shared := read(study)):
        if time.monotonic() > deadline:
            return None
        signals.wait(jittered(pause))  # a stop is taken: nothing of this process's is held
        pause = min(8.0, pause * 2)
    return shared


def claim(study: optuna.Study, name: str) -> bool:
    """Whether this process holds the one-time job `name` of a study (make the plan, queue a
    round): exactly one process does, whichever asks first. The holder is a trial of the
    study's claims study, taken from WAITING by one worker alone (the storage's atomic
    state change); the others wait for what it writes, and do it themselves where the
    holder is dead (`does_job`)."""
    return _claim(study, name)[0]


def _claim(study: optuna.Study, name: str, tokens: list[FrozenTrial] | None = None
           ) -> tuple[bool, FrozenTrial]:
    """Whether this process took claim `name` now, and the claim's token as it was read
    (RUNNING where another worker holds it, with that worker's id). `tokens`: the claims
    study's trials, where the caller has just read them."""
    claims = _claims_study(study)
    if tokens is None:
        tokens = claims.get_trials(deepcopy=False)
    token = next((t for t in tokens if t.user_attrs.get("claim") == name), None)
    if token is None:
        claims.enqueue_trial({}, user_attrs={"claim": name})
        token = min((t for t in claims.get_trials(deepcopy=False)
                     if t.user_attrs.get("claim") == name), key=lambda t: t.number)
        # Two that queued the same token at once: the lower-numbered one counts.
    if token.state != TrialState.WAITING:
        return False, token
    storage = storage_of(claims)
    try:
        if not storage.set_trial_state_values(trial_id_of(token), TrialState.RUNNING):
            return False, token
    except optuna.exceptions.UpdateFinishedTrialError:
        return False, token
    storage.set_trial_user_attr(trial_id_of(token), TrialKey.WORKER, worker_id())
    # Taken now, in seconds since the epoch: the token's start is the holder's local time,
    # hours off on a machine of another time zone (`silent_s`).
    storage.set_trial_system_attr(trial_id_of(token), BEAT, time.time())
    return True, token


def takes_over(study: optuna.Study, name: str) -> bool:
    """Whether this process does the one-time job `name`: it takes the claim, or takes it
    over from a holder that is dead (`_take`)."""
    return _take(study, name)[0]


def _take(study: optuna.Study, name: str) -> tuple[bool, FrozenTrial]:
    """Whether this process takes the job `name` now, and the token of its holder as read.
    A job whose holder is dead (`_dead`) is claimed again as `name`/1, then /2, ...: one of
    the workers that find the holder dead takes the job over. Each of them did once a
    decision's mirroring ran past GRACE_S through the storage proxy: 8 mirrorings a stage,
    11.5 tracking requests a trial."""
    tokens, generation = _claims_study(study).get_trials(deepcopy=False), 0  # one read
    while True:
        taken, token = _claim(study, f"{name}/{generation}" if generation else name, tokens)
        if taken:
            _held[(study.study_name, name)] = trial_id_of(token)
        if taken or not _dead(storage_of(study), token):
            return taken, token
        generation += 1


# The claims this process took through `_take`, by (study, job): the token `holding` beats.
_held: dict[tuple[str, str], int] = {}


@contextlib.contextmanager
def holding(study: optuna.Study, name: str) -> Iterator[None]:
    """While the block does the one-time job `name` this process took (`does_job`), its
    claim beats, and on leaving the block it is released. A job longer than GRACE_S (the
    final score, whose refits train for minutes) was taken for dead by every worker that
    waited for it and done again by each (two runs of one study: twice the refits, and
    each closed the other's running refit runs as killed); released, a later run that
    finds the job to do again takes it at once instead of waiting out the old beats."""
    token = _held.pop((study.study_name, name), None)
    if token is None:
        raise RuntimeError(f"job {name} of {study.study_name} is not held by this process")
    claims = _claims_study(study)
    try:
        with beating(claims, token, attribute=True):
            yield
    finally:
        with contextlib.suppress(Exception):  # missed: the beats stop, dead after GRACE_S
            storage_of(claims).set_trial_system_attr(token, BEAT, 0.0)


def _dead(storage: optuna.storages.BaseStorage, token: FrozenTrial) -> bool:
    """Whether the holder of a claim is dead: a process of this machine that is gone, or one
    whose beats stood still for GRACE_S (`silent_s`; a job `holding` beats; one that does
    not takes seconds: held that long, it died doing it), or one that released it. A token
    still WAITING was taken by another between the read and the try: alive."""
    return token.state != TrialState.WAITING and (
        gone_here(token.user_attrs.get(TrialKey.WORKER, ""))
        or silent_s(storage, token) >= GRACE_S)


def does_job(study: optuna.Study, name: str, done: str | Callable[[dict[str, Any]], bool],
             keys_of: optuna.Study | None = None) -> bool:
    """Whether this process does the one-time job `name`, whose doer writes the key `done`
    once it is done (or makes `done(keys)` true): True once it takes the job over
    (`takes_over`; a long job then runs under `holding`), False once `done` is among the
    study's keys (or `keys_of`'s: the study record's, for the final score) (the
    holder did it). The caller has read the keys already: it
    tries the claim first, then looks for `done` after half a second, doubling up to 4 s
    (jittered), one read a look; the claim is read again only once its holder could be
    found dead (a process of this machine gone, a look needs no read; GRACE_S held). A
    plan's holder killed in a fleet kept every worker waiting 60 s, reading the claim and
    the keys every 2 s (28 of 59 storage calls a trial); a mirroring's holder killed left
    the stage's MLflow run RUNNING, the restarted worker having gone on (the fleet, 3
    proxy runs of 6)."""
    pause = 0.5
    while True:
        taken, token = _take(study, name)
        if taken:
            return True
        holder = token.user_attrs.get(TrialKey.WORKER, "")
        look_again = time.monotonic() + GRACE_S - silent_s(storage_of(study), token)
        while True:
            signals.wait(jittered(pause))  # a stop is taken: the claim is another's
            pause = min(4.0, pause * 2)
            keys = read(keys_of or study)
            if done(keys) if callable(done) else done in keys:
                return False
            if gone_here(holder) or time.monotonic() > look_again:
                break


CLAIMS_SUFFIX = ".claims"


_claims: dict[tuple[int, str], optuna.Study] = {}  # opened once per process and storage


def _claims_study(study: optuna.Study) -> optuna.Study:
    name = study.study_name + CLAIMS_SUFFIX
    storage = storage_of(study)
    known = _claims.get((id(storage), name))
    if known is None:
        known = _claims[(id(storage), name)] = open_shared(name, storage)[0]
    return known


# --- who runs which trial ---------------------------------------------------------------

def queue_budget(study: optuna.Study, slots: int) -> None:
    """A stage's search budget, queued up front as `slots` WAITING search trials: a worker
    takes one (`take_waiting`) or finds none, so the stage never asks a trial past its
    budget, however many workers look at once. The sampler fills in each one's settings
    when it is taken."""
    for _ in range(slots):
        signals.check()  # Ctrl-C / SIGTERM: a long budget is taken between two slots
        study.enqueue_trial({}, user_attrs={TrialKey.ROLE: Role.SEARCH})


def budget_queued(trials: list[FrozenTrial]) -> int:
    """How many search slots a stage's study holds: first attempts of search trials,
    queued, running or finished (a surplus or unused one does not count)."""
    return sum(1 for t in trials if t.user_attrs.get(TrialKey.ROLE, Role.SEARCH) == Role.SEARCH
               and FAILED_TRIAL not in t.system_attrs
               and t.user_attrs.get(TrialKey.FAILURE) not in (Failure.SURPLUS, Failure.UNUSED))


def release_unused(study: optuna.Study, trials: list[FrozenTrial]) -> bool:
    """The search slots still WAITING once a stage stops searching early (its target
    reached, its timeout spent, a smaller --trials): ended as FAIL, marked unused. `trials`:
    the study's, just read. Whether any waited."""
    storage = storage_of(study)
    waiting = [t for t in trials if t.state == TrialState.WAITING
               and t.user_attrs.get(TrialKey.ROLE) == Role.SEARCH
               and FAILED_TRIAL not in t.system_attrs]
    for t in waiting:
        signals.check()  # between two slots: the rest stay WAITING, and a rerun ends them
        try:
            if storage.set_trial_state_values(trial_id_of(t), TrialState.RUNNING):
                storage.set_trial_user_attr(trial_id_of(t), TrialKey.FAILURE, Failure.UNUSED)
                storage.set_trial_state_values(trial_id_of(t), TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    return bool(waiting)


# A worker tries at most this many of the waiting trials it read before it reads again: one
# that lost its first tries is one of many taking from the same list at once, and the rest
# of its list is as stale (64 workers tried 3.9 trials for each they took, 3 of them lost).
TAKE_TRIES = 2


def take_waiting(study: optuna.Study, accept: Callable[[FrozenTrial], bool] = lambda t: True,
                 trials: list[FrozenTrial] | None = None, spread: int = 0
                 ) -> optuna.Trial | None:
    """A WAITING trial of `study` that `accept` takes (among `trials` where the caller has
    just read them), now RUNNING and this worker's alone: the storage changes its state for
    one worker only. None when no such trial waits, or when other workers took the first
    TAKE_TRIES it tried (the caller pauses and reads again). Trials are only ever queued,
    never asked: nothing past a budget."""
    storage = storage_of(study)
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    waiting = [t for t in trials if t.state == TrialState.WAITING and accept(t)]
    # Queued trials first (the incumbent, seed trials, retries, repeats); then the search
    # slots, which are all alike. Each from the `spread`-th on (a worker's index): many
    # workers taking at once each try another one instead of all the lowest (64 workers
    # draining a race's round all tried its first repeat), and a lone worker (index 0) takes
    # them in order, so a seeded run repeats exactly.
    def turned(ts: list[FrozenTrial]) -> list[FrozenTrial]:
        return ts[spread % len(ts):] + ts[:spread % len(ts)] if ts else ts

    queued = turned([t for t in waiting if not is_search_slot(t)])
    for t in (queued + turned([t for t in waiting if is_search_slot(t)]))[:TAKE_TRIES]:
        try:
            if not storage.set_trial_state_values(trial_id_of(t), TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        # Its first heartbeat and who took it, at once: a trial whose worker is gone is found
        # and queued again (Optuna fails only trials that have beaten; one that has neither
        # beaten nor said who took it is found by its silence, fail_dead_trials).
        if keeps_heartbeats(storage):
            storage.record_heartbeat(trial_id_of(t))
        storage.set_trial_user_attr(trial_id_of(t), TrialKey.WORKER, worker_id())
        return optuna.Trial(study, trial_id_of(t))
    return None


class Requeue:
    """Queue a failed trial again with the same parameters and role (a trial whose worker
    died, or one stopped by a signal, a fault or a bug). A stop the user asked for or a
    fault of the machine is queued again however often it comes: each takes a rerun, and
    one trial stopped a fourth time (Ctrl-C each evening on a long trial) was dropped, not
    run and not counted. A loss with the worker ends the chain at MAX_LOST, as the trial's
    own failure; a bug at MAX_RETRY. Called by the one process that failed it (the
    storage's state change is one process's alone), or by `_queue_lost` for one whose
    failer died before queueing it."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get(RETRY_HISTORY, []), trial.number]
        lost_now = TrialKey.FAILURE not in trial.user_attrs  # its worker died with it
        lost = trial.system_attrs.get(LOST_ATTEMPTS, 0) + lost_now
        crashed = (trial.system_attrs.get(CRASHED_ATTEMPTS, 0)
                   + (trial.user_attrs.get(TrialKey.FAILURE) == Failure.CRASHED))
        system_attrs = {**{k: v for k, v in trial.system_attrs.items() if k in _KEPT_SYSTEM},
                        FAILED_TRIAL: history[0], RETRY_HISTORY: history, LOST_ATTEMPTS: lost,
                        CRASHED_ATTEMPTS: crashed}
        kept = {k: v for k, v in trial.user_attrs.items() if k in KEPT_ON_RETRY}
        settings = ", ".join(f"{k}={v}" for k, v in trial.params.items()) or "as it came"
        # A repeat is numbered in its own study: named by what it repeats, as progress does.
        which = (f"repeat {kept[TrialKey.REPEAT]} of trial {kept[TrialKey.CONFIRMS]}"
                 if TrialKey.REPEAT in kept and TrialKey.CONFIRMS in kept
                 else f"trial {history[0]}")
        if lost_now and lost >= MAX_LOST:
            # Its own failure, recorded as the last attempt of the chain: the one lost is
            # finished already, and a finished trial takes no new attribute.
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.FAIL, params=trial.params, distributions=trial.distributions,
                user_attrs={**kept, TrialKey.FAILURE: Failure.ERROR},
                system_attrs=system_attrs))
            log.warning("%s (%s) was lost with its worker %d times: it counts as failed on "
                        "its own and is not run again. A process killed each time it trains "
                        "these settings is most likely out of memory (the kernel's OOM "
                        "killer: dmesg | grep -i oom); a smaller batch_size, image_size or "
                        "model needs less", which, settings, lost)
            return
        if crashed > MAX_RETRY:
            log.warning("%s (%s) met a bug in asl-sweep %d times; not retried again", which,
                        settings, crashed)
            return
        if lost_now:
            log.warning("%s (%s) was lost with its worker (the process was killed or "
                        "crashed); queued again (%d of %d losses before it counts as failed)",
                        which, settings, lost, MAX_LOST)
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs=kept, system_attrs=system_attrs))


def origin_of(trial: FrozenTrial) -> int:
    """The number of the first attempt of a (possibly retried) trial."""
    return trial.system_attrs.get(FAILED_TRIAL, trial.number)


def retries_of(trial: FrozenTrial) -> list[int]:
    """The numbers of a retried trial's earlier attempts, first first."""
    return list(trial.system_attrs.get(RETRY_HISTORY, []))


def ends_losses(trial: FrozenTrial) -> bool:
    """Whether `trial` is the record Requeue writes when a trial is lost with its worker
    MAX_LOST times: its own failure, standing for the last loss."""
    return (trial.state == TrialState.FAIL
            and trial.user_attrs.get(TrialKey.FAILURE) == Failure.ERROR
            and trial.system_attrs.get(LOST_ATTEMPTS, 0) >= MAX_LOST)


def renumbered(t: FrozenTrial, offset: int) -> FrozenTrial:
    """A copy of a repeats-study trial numbered in its stage (its study's trial 0 is the
    stage's trial `offset`), retry history included (a trial read without a copy is the
    storage cache's own)."""
    t = copy.deepcopy(t)
    t.number += offset
    if FAILED_TRIAL in t.system_attrs:
        t.system_attrs[FAILED_TRIAL] += offset
        t.system_attrs[RETRY_HISTORY] = [n + offset for n in t.system_attrs[RETRY_HISTORY]]
    return t


def is_search_slot(trial: FrozenTrial) -> bool:
    """Whether `trial` is a queued search slot (queue_budget): settings still to sample."""
    return (trial.system_attrs.get(FIXED_PARAMS) == {} and "grid_id" not in trial.system_attrs
            and trial.user_attrs.get(TrialKey.ROLE) == Role.SEARCH)


def grid_placeholder(trial: FrozenTrial) -> FrozenTrial | None:
    """A queued search slot seen as a fresh trial by Optuna's grid sampler (which leaves
    every queued trial alone); None for any other trial."""
    if not is_search_slot(trial):
        return None
    fresh = copy.deepcopy(trial)
    fresh.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != FIXED_PARAMS}
    return fresh


# --- who is alive -----------------------------------------------------------------------

def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def gone_here(worker: str) -> bool:
    """Whether `worker` (a worker_id) was a process of this machine that no longer exists."""
    host, _, pid = worker.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs. A zombie does not: a worker killed (kill -9, the
    out-of-memory killer) stays one until its parent reaps it, and `run --workers N` reaps
    its workers only at the end, so the trial a killed worker held waited out GRACE_S
    (33 s of a 13 s study) and the stage it finished last was mirrored by nobody."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's: it exists
        return True


# Optuna's heartbeats live in its RDB storage only: through the gRPC proxy a running trial
# beats here instead (a system attribute, every HEARTBEAT_S), and so does a claim's holder;
# one whose beat stands still for GRACE_S is dead, from any machine (`silent_s`).
BEAT = PREFIX + "beat"


@contextlib.contextmanager
def beating(study: optuna.Study, trial_id: int, attribute: bool = False) -> Iterator[None]:
    """While the block runs, the trial beats: Optuna's heartbeat where the storage keeps
    them, else (or with `attribute`: a claim's token) asl-sweep's own beat attribute."""
    storage = storage_of(study)
    own = keeps_heartbeats(storage) and not attribute
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                if own:
                    storage.record_heartbeat(trial_id)
                else:
                    storage.set_trial_system_attr(trial_id, BEAT, time.time())
            except Exception as e:  # a beat missed is no error; a finished trial stops it
                log.debug("trial beat missed: %s", e)
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, name="asl-sweep-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(HEARTBEAT_S)


# A beat is the beater's clock, and machines' clocks differ: judged against the reader's
# clock, a live holder 30 s behind was taken for dead while it beat (and its job done
# twice), and a dead one 30 s ahead was waited for a minute. So a reader judges a beat by
# its own clock alone: a beat it has seen change is alive, one it has seen stand still for
# GRACE_S is not. Only a beat older than GRACE_S even to a clock MAX_SKEW_S ahead of this
# one is dead at first sight (a rerun long after a crash waits for none of its claims).
MAX_SKEW_S = 120.0
_seen: dict[tuple[int, int], tuple[Any, float]] = {}  # (storage, trial): (beat, first seen)


def silent_s(storage: optuna.storages.BaseStorage, t: FrozenTrial) -> float:
    """Seconds the beat of `t` (a running trial's through the proxy, or a claim's token;
    its start where it has not beaten) has stood still as this process saw it, or its age
    less MAX_SKEW_S where that is more; inf for a claim released (`holding`). A process
    looking once (`status`) sees no beat stand still: only the age then says it is dead."""
    beat = t.system_attrs.get(BEAT)
    if beat == 0.0:
        return float("inf")
    key, mark, now = (id(storage), trial_id_of(t)), (beat, t.datetime_start), time.monotonic()
    seen = _seen.get(key)
    if seen is None or seen[0] != mark:
        _seen[key] = seen = (mark, now)
    aged = time.time() - beat - MAX_SKEW_S if beat is not None else 0.0
    return max(now - seen[1], aged)


def stopped_beating(storage: optuna.storages.BaseStorage, t: FrozenTrial) -> bool:
    """A running trial (through the proxy) whose beat stood still for GRACE_S."""
    return silent_s(storage, t) >= GRACE_S


def fail_dead_trials(study: optuna.Study, every: bool = True,
                     since: datetime.datetime | None = None
                     ) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    """Fail RUNNING trials whose worker is gone, and queue their retry with the same
    settings. A trial is dead once its beats stop for GRACE_S, or at once when it was taken
    by a process of this machine that no longer exists; one taken by a process that died
    before it said who it is has no worker and dies by its beats (or their absence). Returns
    the FAIL trials whose MLflow run may still be open: those this call failed or queued
    again, with a run or without one (its worker may have died between opening the run and
    naming it on the trial); with `every` (a process's first look at a stage: later looks
    know the rest was seen), also every other one that has a run (its worker died without a
    word, or stopped while the tracking server was away). With `every` and `since` (when this
    process began), of those others only the ones that ended before it: the trials that
    ended since were ended by a live worker, which closed their runs (otherwise every worker
    of a fleet asks the tracking server about each of them again). A trial that stopped
    while the tracking server was away is then closed by the next run's first look. And the
    study's trials as this call left them (a worker between trials reads them once for
    both)."""
    storage = storage_of(study)
    started = datetime.datetime.now()  # a trial failed from here on was failed by this call
    if keeps_heartbeats(storage):
        optuna.storages.fail_stale_trials(study)
    now = time.time()
    trials = study.get_trials(deepcopy=False)
    failed = 0
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        worker = t.user_attrs.get(TrialKey.WORKER, "")
        if gone_here(worker) or ((not keeps_heartbeats(storage) or not worker)
                                 and stopped_beating(storage, t)):
            try:
                if storage.set_trial_state_values(trial_id_of(t), TrialState.FAIL):
                    Requeue()(study, storage.get_trial(trial_id_of(t)))
                    failed += 1
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker got there first
    # A trial that failed with no word on why (its worker died, or could not record how it
    # stopped) and was never queued again: queue it now.
    if failed:
        trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in retries_of(t)}
    lost = [t for t in trials
            if t.state == TrialState.FAIL and TrialKey.FAILURE not in t.user_attrs]
    queued = [t for t in lost if t.number not in retried and _queue_lost(study, t, now)]
    now_trials = study.get_trials(deepcopy=False) if queued else trials
    # What this call found (or Optuna's heartbeat check in it).
    found = [t for t in lost if t.datetime_complete and t.datetime_complete >= started]
    if not every:  # and queued
        return found + [t for t in queued if t not in found], now_trials
    # A trial that stopped while the tracking server was away could not close its run.
    stopped = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(
        TrialKey.FAILURE) in (Failure.STOPPED, Failure.INTERRUPTED, Failure.CRASHED)]
    ours = {t.number for t in found + queued}  # failed or queued again by this call

    def to_close(t: FrozenTrial) -> bool:
        ended_before = (since is None or t.datetime_complete is None
                        or t.datetime_complete < since)
        return t.number in ours or (bool(t.user_attrs.get(TrialKey.RUN)) and ended_before)

    return [t for t in lost + stopped if to_close(t)], now_trials


def _queue_lost(study: optuna.Study, t: FrozenTrial, now: float) -> bool:
    """A trial failed with no word on why and never queued again: its failer died between
    the two (it queues at once, so one failed GRACE_S ago is lost). Queued by the one
    process that claims it: two that found it at once would each queue a retry, and the
    trial would train twice."""
    # datetime_complete reads alike in every time zone: Optuna (>= 5.0) stores it in UTC
    # and gives it back in this process's zone (4.x stored the failer's local time).
    failed = t.datetime_complete.timestamp() if t.datetime_complete else now
    if now - failed < GRACE_S or not claim(study, f"retry_of_{t.number}"):
        return False
    Requeue()(study, t)
    return True


MIRROR_CLAIM = "mirror_decision"  # the claim of the one process that mirrors for another
FINAL_CLAIM = "final_score"  # on the last stage: the one run that scores the study on test
REFIT_CLAIM = "final_refit"  # and the one that trains the refits where they came after it


def final_scorer(last_stage: optuna.Study) -> str | None:
    """The worker scoring the study on test now (the final score, or refits set after it:
    a claim on either neither released nor silent for GRACE_S), or None. Reads only
    (`status`: for the minutes refits train, it showed every stage finished and no score)."""
    try:
        claims = optuna.load_study(study_name=last_stage.study_name + CLAIMS_SUFFIX,
                                   storage=storage_of(last_stage))
    except KeyError:  # no job was ever claimed
        return None
    for t in claims.get_trials(deepcopy=False):
        if t.user_attrs.get("claim", "").partition("/")[0] in (FINAL_CLAIM, REFIT_CLAIM) \
                and not _dead(storage_of(claims), t) and t.state != TrialState.WAITING:
            return t.user_attrs.get(TrialKey.WORKER) or "a worker"
    return None


def mirrors_decision(study: optuna.Study, trials: list[FrozenTrial]) -> bool:
    """Whether this process mirrors a decided stage's decision into MLflow: every worker
    reaches the same decision from the same finished trials (`trials`, the stage's), and
    the one that finished the last of them mirrors it, or, where that worker was a process
    of this machine that is gone (a rerun after a crash; in a fleet, the last stage's
    finisher once it has mirrored and exited), this one; either only where the decision is
    not mirrored yet and it takes the mirroring's claim (each of the workers that found the
    finisher gone mirrored it again, deleting the spent checkpoints anew: 64 workers on one
    machine, 13-25 tracking requests a trial). A worker of another machine that died first
    leaves it to the next process that opens the stage. The mirroring runs under
    `holding`: through a tracking server it can outlast GRACE_S."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete]
    if done:  # none (every trial failed): whoever asks first
        last = max(done, key=lambda t: (t.datetime_complete, t.number)).user_attrs.get(
            TrialKey.WORKER, "")
        if not (last == worker_id() or gone_here(last)):
            return False
    return StageKey.MIRRORED not in read(study) and takes_over(study, MIRROR_CLAIM)
