"""The workers' shared state (search/state.py): each one-time job claimed by exactly one
process, each queued trial taken by exactly one, a trial taken by a process that died before
it said who it is found and queued again, and every shared key named in state.py alone."""

import datetime
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from asl_sweep.search import state
from asl_sweep.search.state import Failure, Role, TrialKey, claim, queue_budget, take_waiting
from tests.conftest import elsewhere

PACKAGE = Path(__file__).parents[2] / "asl_sweep"

RACE = """
import sys, time
import optuna
from asl_sweep.search import state
optuna.logging.set_verbosity(optuna.logging.ERROR)
from asl_sweep.search.store import optuna_storage
study = optuna.load_study(study_name="s", storage=optuna_storage(sys.argv[1]))
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.005)
if sys.argv[3] == "claim":
    print("held" if state.claim(study, "plan") else "not held")
else:
    taken = []
    while (trial := state.take_waiting(study)) is not None:
        taken.append(trial.number)
    print(" ".join(map(str, taken)))
"""


def _race(url: str, what: str, processes: int = 4) -> list[str]:
    """`processes` real processes doing `what` at the same moment; their outputs."""
    import time

    start = str(time.time() + 3.0)  # all of them have imported Optuna by then
    procs = [subprocess.Popen([sys.executable, "-c", RACE, url, start, what], text=True,
                              stdout=subprocess.PIPE) for _ in range(processes)]
    return [p.communicate(timeout=120)[0].strip() for p in procs]


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="s", storage=url)
    return url


@pytest.mark.slow
def test_a_claim_is_held_by_exactly_one_of_the_processes_that_ask_at_once(store):
    said = _race(store, "claim")
    assert sorted(said) == ["held"] + ["not held"] * 3
    study = optuna.load_study(study_name="s", storage=store)
    assert not claim(study, "plan")  # held: nobody else gets it, later either
    assert state._claim(study, "plan")[1].user_attrs[TrialKey.WORKER]  # named its holder
    assert state.takes_over(study, "plan")  # whose process has exited: the job is free


@pytest.mark.slow
def test_every_queued_trial_is_taken_by_exactly_one_worker_and_none_is_asked(store):
    study = optuna.load_study(study_name="s", storage=store)
    queue_budget(study, 12)
    said = _race(store, "take")
    taken = [int(n) for line in said for n in line.split()]
    assert sorted(taken) == list(range(12))  # each slot once; no process asked a 13th
    assert len(study.get_trials()) == 12
    assert {t.user_attrs[TrialKey.ROLE] for t in study.get_trials()} == {Role.SEARCH}
    assert all(t.user_attrs[TrialKey.WORKER] for t in study.get_trials())  # who took it


@pytest.mark.slow
def test_a_trial_taken_by_a_process_that_died_before_saying_who_is_queued_again(
        store, monkeypatch):
    study = optuna.load_study(study_name="s", storage=store)
    study.enqueue_trial({}, user_attrs={TrialKey.ROLE: Role.CONFIRM, TrialKey.REPEAT: 1})
    # A real process takes it the way Optuna's ask() does, and dies before anything else.
    subprocess.run([sys.executable, "-c", f"""
import optuna
from optuna.trial import TrialState
study = optuna.load_study(study_name="s", storage="{store}")
t = study.get_trials()[0]
assert study._storage.set_trial_state_values(t._trial_id, TrialState.RUNNING)
"""], check=True)
    assert study.get_trials()[0].state.name == "RUNNING"
    assert state.fail_dead_trials(study)[0] == [] and study.get_trials()[0].state.name == \
        "RUNNING"  # within its grace it may still be starting
    monkeypatch.setattr(state, "GRACE_S", 0)
    state.fail_dead_trials(study)
    dead, retry = study.get_trials()
    assert dead.state.name == "FAIL" and retry.state.name == "WAITING"
    assert retry.user_attrs == {TrialKey.ROLE: Role.CONFIRM, TrialKey.REPEAT: 1}
    assert take_waiting(study).number == retry.number


def test_workers_taking_at_once_start_at_their_own_queued_trial_a_lone_one_in_order(store):
    study = optuna.load_study(study_name="s", storage=store)
    for repeat in range(4):
        study.enqueue_trial({}, user_attrs={TrialKey.ROLE: Role.CONFIRM, TrialKey.REPEAT: repeat})
    queue_budget(study, 2)
    assert take_waiting(study, spread=2).number == 2  # worker 2: the third queued repeat
    assert take_waiting(study, spread=5).number == 3  # 0, 1, 3 left: from the 5 mod 3 = 2nd
    # A lone worker (index 0): the queued trials in order, then the search slots in order.
    assert [take_waiting(study).number for _ in range(4)] == [0, 1, 4, 5]
    assert take_waiting(study) is None


def test_every_shared_key_is_named_in_the_state_module_alone():
    """No string literal names a trial's or a study's shared key outside search/state.py:
    each reads and writes them through state.py's names."""
    literal = re.compile(
        r"(user_attrs|system_attrs)(\.get)?[\[(]\s*['\"]"  # t.user_attrs["role"]
        r"|set_(user|system)_attr\(\s*['\"]"  # trial.set_user_attr("role", ...)
        r"|['\"][a-z_]+['\"] (not )?in [\w.]*(user_attrs|system_attrs)"  # "x" in t.user_attrs
        r"|\b(read|write|wait_for|claim)\([\w.]+(, |\)\.get\(|\)\[)['\"]")  # write(s, "key")
    found = [f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
             for path in PACKAGE.rglob("*.py") if path.name != "state.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert not found, "shared keys named outside search/state.py:\n" + "\n".join(found)


def test_the_key_check_catches_a_literal_key():
    line = 'role = t.user_attrs.get("role", "search")'
    assert re.search(r"(user_attrs|system_attrs)(\.get)?[\[(]\s*['\"]", line)


def test_keys_are_stored_as_plain_strings(store):
    study = optuna.load_study(study_name="s", storage=store)
    state.write(study, state.StageKey.BUDGET, 3)
    storage = optuna.storages.RDBStorage(store)
    assert storage.get_study_system_attrs(storage.get_study_id_from_name("s")) == {
        "asl_sweep:budget": 3}
    assert state.read(study) == {"budget": 3}


def test_a_failed_trial_is_queued_again_once_however_many_find_it(store, monkeypatch):
    """A trial failed with no word and no retry (its failer died between the two) is queued
    again by the one process that claims it: each finder queued one before, and the trial
    trained twice (the 64-worker fleet, 2 trials a stage)."""
    study = optuna.load_study(study_name="s", storage=store)
    queue_budget(study, 1)
    study.tell(take_waiting(study), state=optuna.trial.TrialState.FAIL)
    assert state.fail_dead_trials(study)[0] == []  # within its grace its failer may queue it
    assert len(study.get_trials()) == 1
    monkeypatch.setattr(state, "GRACE_S", 0)
    for _ in range(3):  # three workers' looks
        state.fail_dead_trials(study)
    retries = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state.name == "WAITING"


def test_a_later_look_returns_the_trials_it_found_dead_so_their_runs_are_closed(store):
    """A worker's later looks (not its first) return the trials they fail, with a run or
    without one: their MLflow runs are closed then (before, a trial found dead after every
    restarted worker's first look kept its run RUNNING: the 64-worker fleet, 1 run in 2)."""
    study = optuna.load_study(study_name="s", storage=store)
    queue_budget(study, 3)
    opened, unopened, alive = take_waiting(study), take_waiting(study), take_waiting(study)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    opened.set_user_attr(TrialKey.RUN, "run-of-0")
    for killed in (opened, unopened):  # the second before it opened its run
        killed.set_user_attr(TrialKey.WORKER, f"{socket.gethostname()}:{gone}")
    found = state.fail_dead_trials(study, every=False)[0]
    assert [t.number for t in found] == [opened.number, unopened.number]
    assert [t.user_attrs.get(TrialKey.RUN) for t in found] == ["run-of-0", None]
    assert state.fail_dead_trials(study, every=False)[0] == []  # found once
    # A process's first look returns every lost trial with a run, whoever failed it.
    assert [t.number for t in state.fail_dead_trials(study)[0]] == [opened.number]
    assert study.get_trials()[alive.number].state.name == "RUNNING"


def test_a_first_look_returns_the_trials_it_fails_without_a_run_too(store):
    """A process's first look at a stage (the whole look) returns a trial it fails itself
    whether or not the trial named its run, so a run opened but never named is closed by
    its tags (before, the whole look returned only trials with a run: such a run stayed
    RUNNING in MLflow when the first look was the one to find its worker dead)."""
    study = optuna.load_study(study_name="s", storage=store)
    queue_budget(study, 2)
    unopened, opened = take_waiting(study), take_waiting(study)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    opened.set_user_attr(TrialKey.RUN, "run-of-1")
    for killed in (unopened, opened):
        killed.set_user_attr(TrialKey.WORKER, f"{socket.gethostname()}:{gone}")
    found = state.fail_dead_trials(study, since=datetime.datetime.now())[0]
    assert [(t.number, t.user_attrs.get(TrialKey.RUN)) for t in found] == [
        (unopened.number, None), (opened.number, "run-of-1")]
    # A later whole look: the run-less one was seen; the one with a run ended before it.
    later = state.fail_dead_trials(study, since=datetime.datetime.now())[0]
    assert [t.number for t in later] == [opened.number]


def test_a_trial_outcome_is_one_attribute_and_an_earlier_versions_keys_read_the_same(store):
    """A finished trial's outcome is written in one storage call (one user attribute), and a
    store written by an earlier version, a key a field, reads back as the same outcome."""
    study = optuna.load_study(study_name="s", storage=store)
    outcome = state.TrialOutcome({"val_acc": 0.8}, {"val_acc": 0.7}, 1234, fold=2,
                                 decided_by={"lr": "tune"}, reused_from="stage a, trial 3")
    now = study.ask()
    now.set_user_attr(TrialKey.OUTCOME, outcome.stored())
    study.tell(now, 0.8)
    before = study.ask()
    for key, value in {"metrics": {"val_acc": 0.8}, "last": {"val_acc": 0.7},
                       "num_params": 1234, "fold": 2, "decided_by": {"lr": "tune"},
                       "reused_from": "stage a, trial 3"}.items():
        before.set_user_attr(key, value)
    study.tell(before, 0.8)
    new, old = study.get_trials()
    assert list(new.user_attrs) == ["outcome"]
    assert state.outcome_of(new) == state.outcome_of(old) == outcome
    assert state.reused_from(new) == "stage a, trial 3"
    study.ask()
    running = study.get_trials()[-1]
    assert state.outcome_of(running) is None and state.reused_from(running) is None


def test_a_waiter_looks_at_once_then_after_two_four_and_eight_seconds(store, monkeypatch):
    """wait_for: a worker joining late finds the key at its first look; one waiting on a
    stage's set-up looks again after about 2, 4, then every 8 s (jittered), not every second
    (a fleet of 64 waits on one creator at once)."""
    study = optuna.load_study(study_name="s", storage=store)
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 4:  # the creator writes it during the waiter's fourth pause
            state.write(study, state.StageKey.CARRIED, {})

    monkeypatch.setattr(state.signals, "pause", sleep)  # a pause a stop cuts short
    assert state.wait_for(study, state.StageKey.CARRIED) == {"carried": {}}
    assert len(slept) == 4
    assert all(0.75 <= s / p <= 1.25 for s, p in zip(slept, (2, 4, 8, 8), strict=True))
    slept.clear()
    assert state.wait_for(study, state.StageKey.CARRIED) == {"carried": {}} and slept == []


def test_a_first_look_leaves_the_runs_live_workers_ended_since_the_process_began(store):
    """A process's first look at a stage returns the lost trials whose runs it must close:
    those that ended before it began (an earlier run's) and those it fails itself, not those
    a live worker ended since (that worker closed their runs; 64 workers each closing them
    again cost a fleet a tracking request a trial)."""
    import datetime
    import time

    study = optuna.load_study(study_name="s", storage=store)
    queue_budget(study, 3)
    earlier, since, ours = take_waiting(study), take_waiting(study), take_waiting(study)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for t in (earlier, since, ours):
        t.set_user_attr(TrialKey.RUN, f"run-of-{t.number}")

    def dies(t):
        t.set_user_attr(TrialKey.WORKER, f"{socket.gethostname()}:{gone}")

    dies(earlier)
    assert [t.number for t in state.fail_dead_trials(study, every=False)[0]] == [earlier.number]
    time.sleep(0.05)
    began = datetime.datetime.now()
    time.sleep(0.05)
    dies(since)  # found by a live worker after this process began
    assert [t.number for t in state.fail_dead_trials(study, every=False)[0]] == [since.number]
    dies(ours)
    assert [t.number for t in state.fail_dead_trials(study, since=began)[0]] == [
        earlier.number, ours.number]
    assert [t.number for t in state.fail_dead_trials(study)[0]] == [
        earlier.number, since.number, ours.number]  # no `since`: every one with a run


# A real process in another time zone fails a trial whose worker is gone, and with "dies"
# dies between failing it and queueing its retry (the window `_queue_lost` is for).
FAILER = """
import os, sys
import optuna
from asl_sweep.search import state
from asl_sweep.search.store import optuna_storage
if sys.argv[2] == "dies":
    class Dies(state.Requeue):
        def __call__(self, study, trial):
            os._exit(0)
    state.Requeue = Dies
study = optuna.load_study(study_name="s", storage=optuna_storage(sys.argv[1]))
state.fail_dead_trials(study, every=False)
"""


def _failed_in(store: str, zone: str, how: str = "queues") -> None:
    """A real process whose clock reads `zone` (a POSIX TZ: "UTC-5" is five hours ahead of
    UTC) fails the trials of dead workers."""
    subprocess.run([sys.executable, "-c", FAILER, store, how], check=True,
                   env={**os.environ, "TZ": zone.replace("UTC", "XXX")})


def _dead_worker(trial) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process of this machine that no longer exists
    trial.set_user_attr(TrialKey.WORKER, f"{socket.gethostname()}:{gone.pid}")


@pytest.mark.slow
@pytest.mark.parametrize("zone", ["UTC-5", "UTC+5"], ids=["5 h ahead", "5 h behind"])
def test_a_lost_trial_failed_in_another_time_zone_waits_grace_s_by_when_it_failed(
        store, monkeypatch, zone):
    """A trial failed by a process whose clock reads another time zone, which died before
    it queued the retry, is queued once GRACE_S has passed since it failed, whatever zone
    either clock reads. Under Optuna 4.x, which stored datetime_complete as the failer's
    local time without its zone (asl-sweep now needs 5.0, which stores UTC): failed 5 h
    ahead, the trial waited 5 h, its slot of the budget idle; 5 h behind, it was queued at
    once while its failer might still queue it, and trained twice."""
    study = optuna.load_study(study_name="s", storage=store)
    queue_budget(study, 1)
    _dead_worker(take_waiting(study))
    _failed_in(store, zone, "dies")
    assert [t.state.name for t in study.get_trials()] == ["FAIL"]  # and no retry
    state.fail_dead_trials(study)
    assert len(study.get_trials()) == 1  # within its grace its failer may still queue it
    monkeypatch.setattr(state, "GRACE_S", 1.0)
    time.sleep(1.2)
    state.fail_dead_trials(study)
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "WAITING"]


@pytest.mark.slow
def test_a_first_look_closes_the_runs_of_trials_failed_ahead_in_time_zone_before_it_began(
        store):
    """The runs to close on a process's first look are those of trials that ended before
    it began, by when they ended, not by the zone their failer's clock reads: a trial whose
    run could not be closed (the tracking server away), failed by a process 5 h ahead a
    moment before this one began, looked under Optuna 4.x as if a live worker had failed it
    since, and its run stayed RUNNING."""
    study = optuna.load_study(study_name="s", storage=store)
    queue_budget(study, 1)
    trial = take_waiting(study)
    trial.set_user_attr(TrialKey.RUN, "run-of-0")
    _dead_worker(trial)
    _failed_in(store, "UTC-5")
    time.sleep(0.05)
    began = datetime.datetime.now()
    assert [t.number for t in state.fail_dead_trials(study, since=began)[0]] == [0]
    assert state.fail_dead_trials(  # failed since
        study, since=began - datetime.timedelta(seconds=1))[0] == []

def test_the_worker_that_finished_the_last_trial_mirrors_the_decision_or_one_for_it(
        store, monkeypatch):
    """The last trial's finisher mirrors the stage's decision, or, where it is a process of
    this machine that is gone, this one; either only while the decision is not mirrored
    and by whoever takes its claim, once (before, every worker that found the finisher gone
    mirrored it again, and so did every restarted worker that opened the stage while its
    decider mirrored it: the 64-worker fleet's tracking requests went from 9 to 13-25 a
    trial). A claim whose holder is gone, or held for GRACE_S, is taken over."""
    def done(worker: str, second: int):
        t = optuna.trial.create_trial(value=0.5, user_attrs={"worker": worker})
        t.datetime_complete = datetime.datetime(2026, 1, 1, 0, 0, second)
        return t

    def stage(name):
        return optuna.create_study(study_name=name, storage=store)

    me, host = state.worker_id(), socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process of this machine that no longer exists
    by_me, by_gone = [done("elsewhere:1", 1), done(me, 2)], [done(me, 1), done(f"{host}:{gone.pid}", 2)]
    assert not state.mirrors_decision(stage("a"), [done(me, 1), done("elsewhere:1", 2)])
    assert not state.mirrors_decision(stage("b"), [done(f"{host}:{os.getppid()}", 2)])  # alive
    decided = stage("c")
    assert state.mirrors_decision(decided, by_me)  # its finisher, holding the claim
    assert not state.takes_over(decided, state.MIRROR_CLAIM)  # a restarted worker while it mirrors
    assert not state.mirrors_decision(decided, by_gone)  # nor another: claimed
    found = stage("d")
    assert state.mirrors_decision(found, by_gone)  # one of those that find it gone
    assert not state.mirrors_decision(found, by_gone)  # claimed: no second mirror
    state.write(found, state.StageKey.MIRRORED, True)
    assert not state.mirrors_decision(found, by_me)  # mirrored already
    died = stage("e")  # a holder that died mirroring: gone here, or silent for GRACE_S
    state._claims_study(died).enqueue_trial({}, user_attrs={"claim": state.MIRROR_CLAIM})
    token = state._claims_study(died).ask()
    token.set_user_attr(state.TrialKey.WORKER, f"{host}:{gone.pid}")
    assert state.takes_over(died, state.MIRROR_CLAIM)
    token.set_user_attr(state.TrialKey.WORKER, "elsewhere:1")
    assert not state.takes_over(died, state.MIRROR_CLAIM)
    monkeypatch.setattr(state, "GRACE_S", 0)
    assert state.takes_over(died, state.MIRROR_CLAIM)


def test_a_killed_worker_not_yet_reaped_by_its_parent_is_gone(store):
    """A worker killed (kill -9, the out-of-memory killer) stays a zombie until its parent
    reaps it, and `run --workers N` reaps its workers only at the end: the zombie is gone,
    so the trial it held is queued again at the next look and the decision it would have
    mirrored is mirrored by another (it took GRACE_S, and one CI run left the stage's MLflow
    run RUNNING under a finished study)."""
    import psutil

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.kill()
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert state.gone_here(f"{socket.gethostname()}:{child.pid}")
        last = optuna.trial.create_trial(  # the stage's last trial, finished by the zombie
            value=0.5, user_attrs={"worker": f"{socket.gethostname()}:{child.pid}"})
        last.datetime_complete = datetime.datetime(2026, 1, 1, 0, 0, 2)
        first = optuna.trial.create_trial(value=0.5, user_attrs={"worker": "elsewhere:1"})
        first.datetime_complete = datetime.datetime(2026, 1, 1, 0, 0, 1)
        study = optuna.create_study(study_name="zombie", storage=store)
        assert state.mirrors_decision(study, [first, last])
    finally:
        child.wait()
    assert not state.gone_here(state.worker_id())  # this process: alive


def test_a_worker_opening_a_decided_stage_waits_for_its_mirroring_or_takes_it_over(
        store, monkeypatch):
    """A worker that opens a stage decided but not mirrored while another holds the claim
    waits: it goes on once the decision is mirrored, and takes the mirroring over once the
    holder has held it GRACE_S (another machine's worker killed while it mirrored)."""
    study = optuna.create_study(study_name="decided", storage=store)
    assert state.takes_over(study, state.MIRROR_CLAIM)  # held from here on, by a live process
    pauses = []

    def sleep(seconds):
        pauses.append(seconds)
        if len(pauses) == 3:  # the holder finishes during the third pause
            state.write(study, state.StageKey.MIRRORED, True)

    monkeypatch.setattr(state.signals, "pause", sleep)  # a pause a stop cuts short
    assert not state.does_job(study, state.MIRROR_CLAIM, state.StageKey.MIRRORED) and len(pauses) == 3
    pauses.clear()
    died = optuna.create_study(study_name="died", storage=store)
    assert state.takes_over(died, state.MIRROR_CLAIM)
    monkeypatch.setattr(state, "GRACE_S", 0)  # held that long: its holder died mirroring
    assert state.does_job(died, state.MIRROR_CLAIM, state.StageKey.MIRRORED) and pauses == []


def test_a_job_whose_holder_died_on_another_machine_is_taken_over_once_held_grace_s(
        store, monkeypatch):
    """A plan's holder killed on another machine (a fleet's pod): the waiting workers look
    only for what it writes, one read a look, and read the claim again once it has been
    held GRACE_S; then one of them takes the job over (the next generation of its claim),
    not each. A holder that writes it in time is waited for."""
    study = optuna.create_study(study_name="plan", storage=store)
    holder = state._claims_study(study)
    holder.enqueue_trial({}, user_attrs={"claim": "plan"})
    holder.ask().set_user_attr(state.TrialKey.WORKER, "elsewhere:1")
    monkeypatch.setattr(state, "GRACE_S", 1.0)
    claims, reads = [], []
    real_claim, real_read = state._claim, state.read
    monkeypatch.setattr(state, "_claim", lambda *a: claims.append(1) or real_claim(*a))
    monkeypatch.setattr(state, "read", lambda *a: reads.append(1) or real_read(*a))
    started = datetime.datetime.now()
    assert state.does_job(study, "plan", "plan")
    waited = (datetime.datetime.now() - started).total_seconds()
    # The claim read at first and once held GRACE_S, then its next generation taken.
    assert 0.9 < waited < 6 and len(claims) == 3 and len(reads) >= 1
    assert not state.takes_over(study, "plan")  # taken over once: not by each who finds it
    written = optuna.create_study(study_name="written", storage=store)
    assert state.takes_over(written, "plan")  # a live holder: this process

    def sleep(seconds):
        state.write(written, state.StageKey.PLAN, {})  # the holder writes it meanwhile

    monkeypatch.setattr(state.signals, "pause", sleep)
    assert not state.does_job(written, "plan", state.StageKey.PLAN)



def test_the_final_score_is_one_runs_job_and_the_others_read_it(store, monkeypatch):
    """Runs of one study that finish together each scored the test split and logged the
    same tables to the study's MLflow run at once (one stopped on MLflow's integrity
    error): one takes the job, the others wait for the score in the study record."""
    last = optuna.create_study(study_name="s.last", storage=store)
    record = optuna.load_study(study_name="s", storage=store)
    assert state.does_job(last, state.FINAL_CLAIM, state.RecordKey.FINAL, keys_of=record)

    def sleep(seconds):  # the holder (alive: this process) writes the score meanwhile
        state.write(record, state.RecordKey.FINAL, {"summary": "0.9"})

    monkeypatch.setattr(state.signals, "wait", sleep)
    assert not state.does_job(last, state.FINAL_CLAIM, state.RecordKey.FINAL, keys_of=record)

HOLDING = """
import socket, sys, threading
socket.gethostname = lambda: "another-machine"  # its death is found by its beats alone
import optuna
from asl_sweep.search import state
from asl_sweep.search.store import optuna_storage
state.GRACE_S, state.HEARTBEAT_S = 1.0, 0.2
storage = optuna_storage(sys.argv[1])
last = optuna.load_study(study_name="s.last", storage=storage)
record = optuna.load_study(study_name="s", storage=storage)
assert state.does_job(last, state.FINAL_CLAIM, state.RecordKey.FINAL, keys_of=record)
print("held", flush=True)
with state.holding(last, state.FINAL_CLAIM):
    # A final score longer than GRACE_S (refits: minutes). Not time.sleep: under faketime
    # its clock_nanosleep fails (EINVAL).
    threading.Event().wait(float(sys.argv[2]))
    state.write(record, state.RecordKey.FINAL, {"summary": "by the holder"})
"""


def _holder(store: str, seconds: float, clock: int = 0) -> subprocess.Popen:
    """A worker of another machine, its clock `clock` seconds off this one's, that takes
    the final score and holds it for `seconds`; returned once it holds it."""
    return elsewhere(HOLDING, store, str(seconds), ready="held", clock=clock)


@pytest.mark.slow
@pytest.mark.parametrize("clock", [0, -60], ids=["same clock", "holder's clock 60 s behind"])
def test_a_job_longer_than_grace_s_is_waited_for_while_its_holder_beats(store, monkeypatch,
                                                                        clock):
    """The final score with refits trains for minutes: a worker waiting for it took its
    holder for dead after GRACE_S and scored the study again (two workers of cnn.yaml's
    kind: 4 refit runs for 2 repeats, each worker closing the other's as killed). A job
    done under `holding` beats its claim: the others wait for it however long it takes,
    whatever the holder's clock says (one 60 s behind beat in the past, and was taken for
    dead at once), and once it is released a later run takes the job at once."""
    import time

    last = optuna.create_study(study_name="s.last", storage=store)
    record = optuna.load_study(study_name="s", storage=store)
    holder = _holder(store, 3.0, clock)
    try:
        monkeypatch.setattr(state, "GRACE_S", 1.0)
        started = time.monotonic()
        assert not state.does_job(last, state.FINAL_CLAIM, state.RecordKey.FINAL,
                                  keys_of=record)
        assert time.monotonic() - started > 2.0  # waited past GRACE_S for the holder
    finally:
        assert holder.wait(60) == 0, holder.stderr.read()
    assert state.read(record)[state.RecordKey.FINAL] == {"summary": "by the holder"}
    monkeypatch.setattr(state, "GRACE_S", 30)
    here = optuna.create_study(study_name="here.last", storage=store)
    assert state.takes_over(here, state.FINAL_CLAIM)
    with state.holding(here, state.FINAL_CLAIM):
        pass
    assert state.takes_over(here, state.FINAL_CLAIM)  # released: not waited out for 30 s


@pytest.mark.slow
def test_a_holder_whose_clock_is_ahead_is_found_dead_once_its_beats_stand_still(
        store, monkeypatch):
    """A holder on another machine whose clock is 60 s ahead beat in the future: killed, it
    was waited for a minute before anyone took its job over. Its beats are judged by the
    waiter's clock alone: still for GRACE_S, it is dead."""
    import signal
    import time

    last = optuna.create_study(study_name="s.last", storage=store)
    record = optuna.load_study(study_name="s", storage=store)
    holder = _holder(store, 600.0, clock=60)
    time.sleep(0.5)  # it beats a while
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    monkeypatch.setattr(state, "GRACE_S", 1.0)
    started = time.monotonic()
    assert state.does_job(last, state.FINAL_CLAIM, state.RecordKey.FINAL, keys_of=record)
    assert time.monotonic() - started < 10  # GRACE_S and a look or two; not its 60 s


@pytest.mark.slow
def test_a_runs_one_time_jobs_are_released_once_done(tmp_path):
    """The decision's mirroring and the final score run under `holding`: done, their claims
    are released, so a later run that must do one again takes it at once instead of
    waiting out the beats."""
    from asl_sweep.cli import main

    path, home = tmp_path / "study.yaml", tmp_path / "mlruns"
    path.write_text("study: released\n"
                    "data: {synthetic: {per_class: 12, signers: 12}, image_size: 16}\n"
                    "base: {hidden: [16], epochs: 2, batch_size: 16, device: cpu}\n"
                    "stages:\n  - {name: only, trials: 2, sampler: random, confirm: null,\n"
                    "     space: {lr: {low: 1e-3, high: 1e-2, log: true}}}\n")
    assert main(["run", str(path), "--home", str(home)]) == 0
    claims = optuna.load_study(study_name="released.only" + state.CLAIMS_SUFFIX,
                               storage=f"sqlite:///{home}/optuna.db")
    tokens = {t.user_attrs["claim"]: t for t in claims.get_trials()}
    assert {job: tokens[job].system_attrs.get(state.BEAT) for job in (
        state.MIRROR_CLAIM, state.FINAL_CLAIM)} == {state.MIRROR_CLAIM: 0.0,
                                                     state.FINAL_CLAIM: 0.0}


WAITING = """
import os, signal, sys, threading, time
import optuna
from asl_sweep.runtime import signals
from asl_sweep.search import state
from asl_sweep.search.store import optuna_storage
study = optuna.load_study(study_name="s", storage=optuna_storage(sys.argv[1]))
signals.install()
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
started = time.monotonic()
try:
    state.wait_for(study, "never written", 60.0)
    print("waited to the end")
except KeyboardInterrupt:
    print(f"stopped after {time.monotonic() - started:.0f} s")
"""


@pytest.mark.slow
def test_a_stop_while_waiting_on_another_worker_is_taken_at_once(store):
    """A worker waiting on another's set-up (its study run, a stage's plan) held a Ctrl-C or
    SIGTERM for the rest of a wait of up to 120 s (8 s between looks)."""
    out = subprocess.run([sys.executable, "-c", WAITING, store], capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() in ("stopped after 1 s", "stopped after 2 s"), out.stderr


def test_a_stop_while_unused_slots_are_ended_is_taken_between_two(store, monkeypatch):
    """A stage that stopped searching early ends its unused slots, three storage calls each
    (about 10,000 at the budget cap): a Ctrl-C or SIGTERM waited for the last; now it is
    taken between two, and what is left waits for the next run to end it."""
    import signal

    from asl_sweep.runtime import signals

    study = optuna.load_study(study_name="s", storage=store)
    queue_budget(study, 3)
    monkeypatch.setattr(signals, "_requested", signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        state.release_unused(study, study.get_trials())
    assert [t.state.name for t in study.get_trials()] == ["WAITING"] * 3
    monkeypatch.setattr(signals, "_requested", None)
    assert state.release_unused(study, study.get_trials())
    assert [t.state.name for t in study.get_trials()] == ["FAIL"] * 3


def test_a_retry_holds_its_grid_point_and_the_grid_moves_on():
    """A retry (a Ctrl-C, a worker lost) kept only the queued settings: to the grid sampler it
    was a fresh slot, so it took another grid point while it trained the first one's
    settings, and the grid skipped a point."""
    from asl_sweep.search.store import GridSampler

    study = optuna.create_study(sampler=GridSampler({"x": [1, 2, 3]}, seed=0))
    queue_budget(study, 3)
    first = study.ask()
    first.suggest_categorical("x", [1, 2, 3])
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # as a lost trial is failed
    state.Requeue()(study, study.trials[first.number])
    retry = study.trials[-1]
    assert retry.system_attrs["grid_id"] == study.trials[first.number].system_attrs["grid_id"]
    taken = []
    for _ in range(3):  # the two slots left and the retry
        trial = study.ask()
        taken.append(trial.suggest_categorical("x", [1, 2, 3]))
        study.tell(trial, 0.0)
    assert sorted(taken) == [1, 2, 3]  # every point trained once, the first by its retry


def test_a_lost_repeat_is_named_by_what_it_repeats(caplog):
    """A confirmation repeat lives in the stage's repeats study, numbered from 0 there: the
    line for its loss named it `trial 0`, a number the stage's lines give another trial."""
    study = optuna.create_study()
    study.enqueue_trial({"lr": 0.01}, user_attrs={TrialKey.ROLE: Role.CONFIRM,
                                                  TrialKey.CONFIRMS: 3, TrialKey.REPEAT: 1})
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # its worker died: no word on why
    with caplog.at_level("WARNING", logger="asl_sweep.search.state"):
        state.Requeue()(study, study.trials[0])
    assert "repeat 1 of trial 3 (lr=0.01) was lost with its worker" in caplog.text
    assert study.trials[-1].state.name == "WAITING"


@pytest.mark.parametrize("why", [Failure.INTERRUPTED, Failure.STOPPED])
def test_a_trial_stopped_again_and_again_is_queued_each_time(why):
    """A long trial stopped with Ctrl-C each evening (or by a full disk each time): the
    fourth stop dropped it, neither run nor counted. Only a bug is retried a bounded number
    of times (it stops the run with its traceback each time)."""
    study = optuna.create_study()
    study.enqueue_trial({}, user_attrs={TrialKey.ROLE: Role.INCUMBENT})
    for _ in range(6):
        trial = study.ask()
        trial.set_user_attr(TrialKey.FAILURE, why)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        state.Requeue()(study, study.trials[-1])
    assert study.trials[-1].state.name == "WAITING"
    assert state.retries_of(study.trials[-1]) == [0, 1, 2, 3, 4, 5]


def test_a_trial_a_bug_stops_again_and_again_is_not_retried_without_end(caplog):
    study = optuna.create_study()
    study.enqueue_trial({}, user_attrs={TrialKey.ROLE: Role.INCUMBENT})
    for _ in range(state.MAX_RETRY + 1):
        trial = study.ask()
        trial.set_user_attr(TrialKey.FAILURE, Failure.CRASHED)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        with caplog.at_level("WARNING", logger="asl_sweep.search.state"):
            state.Requeue()(study, study.trials[-1])
    assert study.trials[-1].state.name == "FAIL"  # the fourth: not queued again
    assert "trial 0 (as it came) met a bug in asl-sweep 4 times; not retried again" in caplog.text
