"""StageView: a stage's trials as a person reads them."""

import optuna
from optuna.trial import TrialState

from asl_sweep.search.stageview import StageView
from asl_sweep.search.state import RETRY_HISTORY, Failure, TrialKey
from asl_sweep.settings.spec import StageConfig


def _trial(number, state, retried=(), failure=None):
    trial = optuna.trial.create_trial(state=state, value=0.5 if state == TrialState.COMPLETE
                                      else None, system_attrs={RETRY_HISTORY: list(retried)},
                                      user_attrs={TrialKey.FAILURE: failure} if failure else {})
    trial.number = number
    return trial


def test_trials_are_counted_as_what_happened_to_them():
    trials = [_trial(0, TrialState.COMPLETE), _trial(1, TrialState.FAIL),
              _trial(2, TrialState.FAIL), _trial(3, TrialState.FAIL, failure=Failure.INTERRUPTED),
              _trial(4, TrialState.COMPLETE, retried=[1]), _trial(5, TrialState.WAITING, [2]),
              _trial(6, TrialState.WAITING, [3]), _trial(7, TrialState.FAIL)]
    view = StageView(StageConfig(name="s", space={"lr": [1e-3]}), trials, None, {})
    assert view.by_state() == {"complete": 2, "fail": 1, "waiting": 2,
                               "interrupted (queued again)": 1,
                               "lost with their workers (queued again)": 2}
    view.trials = trials[:2] + trials[4:5]
    assert view.by_state() == {"complete": 2, "lost with its worker (queued again)": 1}


def test_a_running_trial_whose_worker_is_gone_is_counted_lost():
    """After a run killed outright, `status` said `1 running` with nothing running: a trial
    taken by a process of this machine that no longer exists is lost until the next run
    queues it again."""
    import socket
    import subprocess
    import sys

    from asl_sweep.search.state import gone_here, worker_id

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    trials = [_trial(0, TrialState.COMPLETE), _trial(1, TrialState.RUNNING),
              _trial(2, TrialState.RUNNING)]
    trials[1].user_attrs[TrialKey.WORKER] = f"{socket.gethostname()}:{dead}"
    trials[2].user_attrs[TrialKey.WORKER] = worker_id()  # this process: alive
    view = StageView(StageConfig(name="s", space={"lr": [1e-3]}), trials, None, {})
    assert view.by_state(gone_here) == {
        "complete": 1, "running": 1,
        "lost with its worker (the next run queues it again)": 1}
    assert view.by_state() == {"complete": 1, "running": 2}  # without the look: as stored


def test_a_chain_of_losses_ended_as_its_own_failure_reads_as_one_failure():
    """Lost three times (state.Requeue ends the chain with a record of its own failure): the
    last loss was counted "queued again" and the record "fail", one trial twice."""
    from asl_sweep.search.state import LOST_ATTEMPTS

    end = _trial(4, TrialState.FAIL, retried=[1, 2, 3], failure=Failure.ERROR)
    end.system_attrs[LOST_ATTEMPTS] = 3
    trials = [_trial(0, TrialState.COMPLETE), _trial(1, TrialState.FAIL),
              _trial(2, TrialState.FAIL, retried=[1]), _trial(3, TrialState.FAIL, [1, 2]), end]
    view = StageView(StageConfig(name="s", space={"lr": [1e-3]}), trials, None, {})
    assert view.by_state() == {"complete": 1, "fail (lost with its worker 3 times)": 1,
                               "lost with their workers (queued again)": 2}
