"""Several workers, PostgreSQL, signals and determinism: real processes, real stores."""

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from asl_sweep.cli import main
from asl_sweep.results.readback import read_stages
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search import state
from asl_sweep.search.state import (
    BEAT,
    GRACE_S,
    HEARTBEAT_S,
    StageKey,
    TrialKey,
    fail_dead_trials,
    read,
)
from asl_sweep.search.store import optuna_storage, stage_trials
from asl_sweep.settings.studyfile import load_study
from tests import servers
from tests.conftest import (
    elsewhere,
    interrupt_a_trial,
    run_until_training,
    running_trial,
    stopped_line,
)
from tests.servers import free_port, mlflow_server, postgres_bin, store_proxy

FAST = {"data": {"synthetic": {"per_class": 8}, "image_size": 12},
        "base": {"hidden": [16], "epochs": 3, "batch_size": 16},
        "stages": [{"name": "search", "trials": 40, "sampler": "random", "pruner": "none",
                    "confirm": None,
                    "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True},
                              "hidden": [[16], [32], [16, 16]]}}]}


def _finished(storage: str, name: str) -> list:
    study = optuna.load_study(study_name=name, storage=optuna_storage(storage))
    return [t for t in stage_trials(study) if t.state.name in ("COMPLETE", "PRUNED")]


def _trial_runs(tracking: str, study: str) -> list:
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(study)
    return client.search_runs([exp.experiment_id], "tags.kind = 'trial'", max_results=1000)


def test_four_workers_on_sqlite_finish_exactly_the_budget(write_study, tmp_path, capfd):
    # Trials long enough (about 3 s) that the helpers, a few seconds to start on 2 cores and
    # up to half a minute where the other test process trains beside them, join before
    # worker 0 has run them all (at 40 epochs, 2 s a trial, one CI run saw none join).
    path = write_study({**FAST, "base": {**FAST["base"], "epochs": 60},
                        "stages": [{**FAST["stages"][0], "trials": 12}]})
    home = tmp_path / "mlruns"
    started = time.perf_counter()
    assert main(["run", str(path), "--home", str(home), "--workers", "4"]) == 0
    elapsed = time.perf_counter() - started
    out, err = capfd.readouterr()
    assert "locked" not in out + err
    ws = Workspace.at(home)
    finished = _finished(ws.storage, "tiny.search")
    assert len([t for t in finished if t.user_attrs["role"] == "search"]) == 12
    assert len(finished) == 13  # and the incumbent
    runs = [r for r in _trial_runs(ws.tracking_uri, "tiny") if r.info.status == "FINISHED"]
    assert len(runs) == 13
    workers = {t.user_attrs["worker"] for t in _finished(ws.storage, "tiny.search")}
    assert len(workers) >= 2, workers  # the trials really were shared
    print(f"4 workers, 12 trials: {elapsed:.1f}s")


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on the loopback address, for this module's tests."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it from Debian packages)")
    with servers.postgres() as server:
        for db in ("optuna", "mlflow"):
            server.createdb(db)
        yield server


def test_two_workers_on_postgresql_meet_the_budget_and_agree(write_study, tmp_path, capfd,
                                                             postgres):
    spec = {**FAST, "stages": [
        {**FAST["stages"][0], "name": "first", "trials": 6},
        {"name": "second", "trials": 6, "sampler": "tpe", "pruner": "none",
         "confirm": {"top": 2, "repeats": 2},
         "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}]}
    path = write_study(spec)
    storage, tracking = f"{postgres}/optuna", f"{postgres}/mlflow"
    assert main(["run", str(path), "--home", str(tmp_path / "mlruns"), "--workers", "2",
                 "--storage", storage, "--tracking", tracking]) == 0
    out = capfd.readouterr().out
    # Worker 1 got the stores through its environment (not its command line, where `ps`
    # shows a password): it used them, and made no store of its own in the home.
    assert not list((tmp_path / "mlruns").glob("*.db"))
    for stage in ("first", "second"):
        searched = [t for t in _finished(storage, f"tiny.{stage}")
                    if t.user_attrs["role"] in ("seed", "search")]
        assert len(searched) == 6  # the budget, exactly, across both workers
        # `run` is worker 0 (its lines unprefixed) and says each decision, once; worker 1, a
        # process of its own, prints its own trials only (prefixed).
        said = re.findall(rf"^(\[worker \d\] )?stage {stage}: (.+?); carries .*$", out,
                          re.MULTILINE)
        assert [w for w, _ in said] == [""], out
        stored = read_stages(load_study(path), Workspace.at(tmp_path / "mlruns", storage,
                                                            tracking))
        assert said[0][1] == next(v for v in stored if v.stage.name == stage).result.decision
    # Worker 1's lines, if it got to any trial (it may join late): its trials, nothing else.
    helper = [line for line in out.splitlines() if line.startswith("[worker 1]")]
    assert all(re.match(r"\[worker 1\] +(first|second):? trial \d+", line) for line in helper)
    second = _finished(storage, "tiny.second")
    repeats = [(t.user_attrs["confirms"], t.user_attrs["repeat"]) for t in second
               if t.user_attrs["role"] == "confirm"]
    assert sorted(set(repeats)) == sorted(repeats) and len(repeats) == 3  # incumbent + 2, once
    assert "final test accuracy" in out


@pytest.mark.parametrize("flag, store", [
    ("--storage", "the Optuna store"), ("--tracking", "the MLflow store (--tracking)")])
def test_a_database_the_server_does_not_have_is_one_line_at_once(write_study, tmp_path,
                                                                  capsys, monkeypatch,
                                                                  postgres, flag, store):
    """A typo in the database's name: the server answers "does not exist". It was waited
    for as a server away (120 s), then "start it again (or mend the network)", or (MLflow's
    database) a traceback."""
    monkeypatch.setenv("ASL_SWEEP_STORE_RETRY_S", "5")
    args = ["run", str(write_study()), "--home", str(tmp_path / "mlruns"), "--workers", "1",
            flag, f"{postgres}/no_such_db"]
    asked = time.monotonic()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and store in err, err
    assert err.endswith('cannot be opened (FATAL: database "no_such_db" does not exist): check '
                        "its address (host name, database, user, password), then rerun the "
                        "same command"), err
    assert time.monotonic() - asked < 5  # not waited for


def test_workers_started_together_on_a_new_database_share_its_tables_and_study_run(
        write_study, tmp_path, postgres):
    """Three machines' processes (three homes, no lock file in common) started at once on
    an empty database behind a tracking server: one makes Optuna's tables and the study's
    MLflow run, the others find them (before, two made the same PostgreSQL types and
    crashed, and each made a study run of its own)."""
    path = write_study({**FAST, "stages": [{**FAST["stages"][0], "trials": 4}]})
    storage = postgres.createdb("together")
    commands = [["run", "--workers", "1"], ["worker", "--worker-index", "1"],
                ["worker", "--worker-index", "2"]]
    with mlflow_server(postgres.createdb("together_mlflow"), tmp_path / "artifacts") as url:
        procs = [subprocess.Popen(
            [sys.executable, "-m", "asl_sweep.cli", command[0], str(path), "--home",
             str(tmp_path / f"home{i}"), "--storage", storage, "--tracking", url,
             *command[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i, command in enumerate(commands)]
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert [r.info.run_name for r in runs if r.data.tags.get("kind") == "study"] == ["tiny"]
    assert all(r.info.status != "RUNNING" for r in runs)
    searched = [t for t in _finished(storage, "tiny.search") if t.user_attrs["role"] == "search"]
    assert len(searched) == 4


def test_sigterm_queues_the_trial_again_and_a_rerun_resumes_it(write_study, tmp_path, capsys):
    spec = {**FAST, "base": {**FAST["base"], "epochs": 40}}
    spec["stages"] = [{**FAST["stages"][0], "trials": 2}]
    path = write_study(spec)
    home = tmp_path / "mlruns"
    ws = Workspace.at(home)
    (home).mkdir()
    cmd = [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home", str(home)]
    # Past a checkpoint (every 2 epochs): the retry must continue from it, not start over.
    victim, err = interrupt_a_trial(cmd, home / "optuna.db", "tiny.search", epochs=5)
    assert "Traceback" not in err and "queued" in err
    study = optuna.load_study(study_name="tiny.search", storage=ws.storage)
    killed = study.trials[victim]
    assert killed.state.name == "FAIL" and killed.user_attrs["failure"] == "interrupted"
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim]
    assert len(retry) == 1 and retry[0].state.name == "WAITING"
    assert retry[0].params == killed.params
    client = MlflowClient(ws.tracking_uri)
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    experiment = client.get_experiment_by_name("tiny").experiment_id
    for run in client.search_runs([experiment], "tags.kind != 'trial'"):
        assert run.info.status == "KILLED", run.data.tags["kind"]  # stage and study runs

    assert read(study)[StageKey.RUN_ENDED] == "KILLED"
    # status counts it as what it is (it said "1 fail", a failure that used its turn)
    capsys.readouterr()
    assert main(["status", *cmd[4:]]) == 0
    status = capsys.readouterr().out
    assert "trials: 1 interrupted (queued again), 3 waiting" in status, status
    assert "fail" not in status
    rerun = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    running_trial(home / "optuna.db", "tiny.search", rerun)
    # The stage's run is RUNNING again while the rerun searches (a worker that joins a stage
    # whose run is RUNNING does not read it: only one ended early is reopened).
    (stage_run,) = client.search_runs([experiment], "tags.kind = 'stage'")
    assert stage_run.info.status == "RUNNING"
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="tiny.search", storage=ws.storage)
    assert len(_finished(ws.storage, "tiny.search")) == 3  # the incumbent and 2
    (done,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim]
    assert done.state.name == "COMPLETE" and done.params == killed.params
    assert min(done.intermediate_values) > 2  # resumed from its checkpoint


def _processes_running(path) -> list[int]:
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                if str(path).encode() in f.read():
                    found.append(int(cmdline.split("/")[2]))
        except OSError:
            continue
    return found


def _both_workers_training(proc, ws: Workspace) -> None:
    """`run --workers 2` is worker 0; wait until worker 1 (a process of its own) trains a
    trial of tiny.search too."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name="tiny.search", storage=ws.storage)
            if len({t.user_attrs.get("worker") for t in study.trials
                    if t.state.name == "RUNNING"}) == 2:
                return
        except Exception:  # the store or the study is not there yet
            continue
    raise AssertionError("the two workers never trained side by side")


@pytest.mark.parametrize("stop", ["ctrl-c in the terminal", "sigterm to run"])
def test_a_stopped_run_stops_its_workers_each_trial_queued_again_without_a_traceback(
        write_study, tmp_path, stop):
    """Ctrl-C in a terminal reaches every process of the group, the workers too, and `run`
    passes the stop on besides (what SIGTERM to `run` alone needs): neither may count as a
    worker's second signal (stop at once), nor may `run` trip over the stop it asked."""
    spec = {**FAST, "base": {**FAST["base"], "epochs": 600}}  # a trial runs for a while
    spec["stages"] = [{**FAST["stages"][0], "trials": 3}]
    path = write_study(spec)
    home = tmp_path / "mlruns"
    ws = Workspace.at(home)
    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home",
                             str(home), "--workers", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _both_workers_training(proc, ws)
    if stop == "ctrl-c in the terminal":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert err.count("interrupted: the current trial is queued to run again") == 2, err
    # The worker's line is said as its own, as its trial lines are (two identical lines
    # read as one said twice).
    assert err.count("[worker 1] interrupted: the current trial is queued") == 1, err
    assert not _processes_running(path)
    study = optuna.load_study(study_name="tiny.search", storage=ws.storage)
    stopped = [t for t in study.trials if t.user_attrs.get("failure") == "interrupted"]
    assert len(stopped) == 2  # one trial a worker, each closed and queued again
    for trial in stopped:
        retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == trial.number]
        assert len(retry) == 1 and retry[0].state.name == "WAITING"


def test_workers_stop_when_their_run_is_killed_and_queue_their_trial(write_study, tmp_path):
    spec = {**FAST, "base": {**FAST["base"], "epochs": 600}}  # a trial runs for a while
    spec["stages"] = [{**FAST["stages"][0], "trials": 3}]
    path = write_study(spec)
    home = tmp_path / "mlruns"
    ws = Workspace.at(home)
    cmd = [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home", str(home)]
    proc = subprocess.Popen([*cmd, "--workers", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _both_workers_training(proc, ws)
    proc.kill()  # SIGKILL: `run` cannot tell its workers anything
    proc.wait(30)
    deadline = time.time() + 15
    while _processes_running(path) and time.time() < deadline:
        time.sleep(0.5)
    assert not _processes_running(path), "workers went on training after their run died"
    study = optuna.load_study(study_name="tiny.search", storage=ws.storage)
    stopped = [t for t in study.trials if t.user_attrs.get("failure") == "interrupted"]
    assert len(stopped) == 1  # worker 1's trial, closed and queued again as it stopped
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == stopped[0].number]
    assert len(retry) == 1 and retry[0].state.name == "WAITING"  # the next run takes it


def test_a_large_stage_seed_gives_a_sampler_not_a_traceback(write_study):
    """The sampler's seed is the run's, the stage's and 1000 per stage added: beyond 2**32 - 1
    Optuna's samplers (numpy) refused it with a traceback; it wraps round instead."""
    from asl_sweep.search.store import _sampler

    cfg = load_study(write_study({"stages": [{"name": "s", "seed": 99_999_999_999,
                                              "space": {"lr": [1e-3, 1e-2]}}]}))
    for sampler in ("tpe", "random"):
        cfg.stages[0].sampler = sampler
        assert _sampler(cfg, 0, 2**32 - 1) is not None


def test_one_seeded_worker_repeats_exactly(write_study, tmp_path):
    spec = {**FAST, "stages": [{**FAST["stages"][0], "trials": 4, "sampler": "tpe",
                                "pruner": "median"}]}
    path = write_study(spec)
    outcomes = []
    for run in ("a", "b"):
        home = tmp_path / run
        assert main(["run", str(path), "--home", str(home)]) == 0
        trials = optuna.load_study(study_name="tiny.search",
                                   storage=Workspace.at(home).storage).trials
        outcomes.append([(t.params, t.state.name, t.value, t.intermediate_values,
                          t.user_attrs.get("outcome", {}).get("metrics", {}).get("train_loss"))
                         for t in trials])
    assert outcomes[0] == outcomes[1]


def _running_on(storage: str, name: str, proc, epochs: int = 3, seconds: float = 120) -> int:
    """A RUNNING trial of `name` that has reported `epochs` epochs, read from PostgreSQL."""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"
                   and len(t.intermediate_values) >= epochs]
        if running:
            return running[0].number
    raise AssertionError(f"no trial of {name} ran {epochs} epochs: {proc.poll()}")


def _outage_run(write_study, tmp_path, postgres, study: str, env: dict | None = None,
                epochs: int = 150):
    spec = {**FAST, "study": study, "base": {**FAST["base"], "epochs": epochs},
            "stages": [{**FAST["stages"][0], "trials": 3}]}
    path = write_study(spec, name=f"{study}.yaml")
    storage, tracking = f"{postgres}/optuna", f"{postgres}/mlflow"
    cmd = [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home",
           str(tmp_path / study), "--storage", storage, "--tracking", tracking]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    _running_on(storage, f"{study}.search", proc)
    return cmd, proc, storage, tracking


def _exact_and_closed(storage: str, tracking: str, study: str) -> None:
    searched = [t for t in _finished(storage, f"{study}.search")
                if t.user_attrs["role"] == "search"]
    assert len(searched) == 3  # the budget, exactly
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id])
    assert runs and all(r.info.status != "RUNNING" for r in runs)


def test_a_database_restart_mid_run_costs_a_pause_not_the_run(write_study, tmp_path,
                                                               postgres):
    cmd, proc, storage, tracking = _outage_run(write_study, tmp_path, postgres, "brief")
    postgres.stop()
    time.sleep(3)
    postgres.start()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "is not answering" in err and "retrying for up to 120 s" in err
    assert "Traceback" not in err
    _exact_and_closed(storage, tracking, "brief")


def test_a_database_that_stays_away_is_named_and_a_rerun_finishes(write_study, tmp_path,
                                                                   postgres):
    # Short trials: whatever the process does when the server goes, it must stop with one
    # line; the rerun then trains the whole budget again.
    cmd, proc, storage, tracking = _outage_run(write_study, tmp_path, postgres, "long",
                                               {"ASL_SWEEP_STORE_RETRY_S": "3"}, epochs=60)
    postgres.stop()
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        postgres.start()
    last = stopped_line(proc, err)
    assert "has not answered for 3 s" in last and "rerun the same command" in last
    assert "store (--storage)" in last or "store (--tracking)" in last
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    _exact_and_closed(storage, tracking, "long")


def test_a_local_artifact_written_in_an_outage_is_not_the_database_answering(
        tmp_path, postgres, monkeypatch, caplog):
    """A PostgreSQL tracking store keeps its artifacts in the home's folder: writing one
    while the server is away succeeds, but it is not the store answering again, so the
    outage is still said once and a given-up store still fails at once (a stopping run
    that wrote a checkpoint between two store calls waited the budget twice and said the
    outage twice)."""
    from asl_sweep.runtime.errors import StoreError
    from asl_sweep.tracking.tracker import Tracker

    monkeypatch.setenv("ASL_SWEEP_STORE_RETRY_S", "1")
    postgres.createdb("artifacts")
    tracker = Tracker(Workspace.at(tmp_path / "home", tracking_uri=f"{postgres}/artifacts"))
    run_id = tracker.new_run(tracker.experiment("away"), "trial 0")
    tracker.log_text(run_id, "before", "notes/before.txt")
    postgres.stop()
    try:
        with pytest.raises(StoreError, match="has not answered for 1 s"):
            tracker.status(run_id)
        tracker.log_text(run_id, "during", "notes/during.txt")  # the home's folder: written
        started = time.monotonic()
        with pytest.raises(StoreError, match="has not answered for 1 s"):
            tracker.status(run_id)
        assert time.monotonic() - started < 0.5  # given up already: no second wait
    finally:
        postgres.start()
    said = [r.getMessage() for r in caplog.records if "is not answering" in r.getMessage()]
    assert len(said) == 1, said
    assert tracker.status(run_id) == "RUNNING"  # back: the store's answer ends the outage


@pytest.fixture
def proxy(tmp_path):
    """`asl-sweep store-proxy`: Optuna's gRPC storage proxy in front of a SQLite database."""
    with store_proxy(f"sqlite:///{tmp_path / 'optuna.db'}") as url:
        yield url


def test_ctrl_c_stops_the_store_proxy(proxy):
    """It holds no trial: the first Ctrl-C stops it (it waited for a second one)."""
    os.killpg(proxy.pid, signal.SIGINT)
    deadline = time.time() + 30
    while _alive(proxy.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(proxy.pid), "the store proxy went on after Ctrl-C"


def _alive(pid: int) -> bool:
    try:  # reaped by nobody here: a zombie (state Z) has stopped
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_two_workers_through_optunas_grpc_proxy_meet_the_budget(write_study, tmp_path, proxy):
    spec = {**FAST, "stages": [{**FAST["stages"][0], "trials": 8}]}
    path = write_study(spec)
    assert main(["run", str(path), "--home", str(tmp_path / "mlruns"), "--workers", "2",
                 "--storage", proxy]) == 0
    finished = _finished(proxy, "tiny.search")
    assert len([t for t in finished if t.user_attrs["role"] == "search"]) == 8
    # The proxy has no heartbeat: each running trial beat through it instead.
    assert all(BEAT in t.system_attrs for t in finished)


def test_a_silent_worker_through_the_proxy_is_found_dead_from_any_machine(proxy, monkeypatch):
    """A beat older than any clock can be off is dead at first sight; one GRACE_S old by
    this clock may be a clock behind: it is dead once seen standing still for GRACE_S."""
    storage = optuna_storage(proxy)
    study = optuna.create_study(storage=storage, study_name="silent")
    long_gone, lately, alive = study.ask(), study.ask(), study.ask()
    for trial, age in ((long_gone, GRACE_S + state.MAX_SKEW_S + 5), (lately, GRACE_S + 5),
                       (alive, 0)):
        storage.set_trial_user_attr(trial._trial_id, TrialKey.WORKER, "another-machine:4242")
        storage.set_trial_system_attr(trial._trial_id, BEAT, time.time() - age)
    fail_dead_trials(study)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "RUNNING", "RUNNING", "WAITING"]  # failed and queued again
    monkeypatch.setattr(state, "GRACE_S", 1.0)
    time.sleep(1.2)
    storage.set_trial_system_attr(alive._trial_id, BEAT, time.time())  # it beat meanwhile
    fail_dead_trials(study)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "FAIL", "RUNNING", "WAITING", "WAITING"]


BEATING = """
import socket, sys, threading
socket.gethostname = lambda: "another-machine"  # its death is found by its beats alone
import optuna
from asl_sweep.search import state
from asl_sweep.search.store import optuna_storage
state.HEARTBEAT_S = 0.2
study = optuna.load_study(study_name="skewed", storage=optuna_storage(sys.argv[1]))
trial = study.ask()
study._storage.set_trial_user_attr(trial._trial_id, state.TrialKey.WORKER, state.worker_id())
with state.beating(study, trial._trial_id):
    print("running", flush=True)
    threading.Event().wait(600)  # not time.sleep: under faketime it fails (EINVAL)
"""


@pytest.mark.slow
def test_a_worker_through_the_proxy_whose_clock_is_behind_is_not_taken_for_dead(
        proxy, monkeypatch):
    """A worker of another machine whose clock is 60 s behind beats in the past: its trial
    was failed and queued again at the first look while it trained (the trial trained
    twice). A beat is judged by the looker's clock alone: one that changes is alive; once
    the worker is killed, its beat stands still and the trial is failed GRACE_S later."""
    storage = optuna_storage(proxy)
    study = optuna.create_study(storage=storage, study_name="skewed")
    worker = elsewhere(BEATING, proxy, ready="running", clock=-60)
    try:
        monkeypatch.setattr(state, "GRACE_S", 1.0)
        for _ in range(5):  # 2.5 s of looks, every one finding its beat 60 s old
            fail_dead_trials(study)
            time.sleep(0.5)
        assert [t.state.name for t in study.get_trials()] == ["RUNNING"]
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    deadline = time.monotonic() + 10
    while study.get_trials()[0].state.name == "RUNNING" and time.monotonic() < deadline:
        fail_dead_trials(study)
        time.sleep(0.5)
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "WAITING"]


def test_a_proxy_that_does_not_answer_is_one_line(tmp_path, capsys):
    from asl_sweep.runtime.errors import StoreError

    # gRPC's own words (it said the class name, "_InactiveRpcError")
    with pytest.raises(StoreError, match=r"grpc://127\.0\.0\.1:\d+: the Optuna storage proxy "
                                         r"does not answer \(failed to connect .*Connection "
                                         r"refused\); start it \(asl-sweep store-proxy\)"):
        optuna_storage(f"grpc://127.0.0.1:{free_port()}")


def test_a_proxy_that_stops_is_named_in_one_line_and_its_trial_runs_again(write_study,
                                                                          tmp_path):
    """The proxy goes away mid-trial and stays away: the worker waits its retry budget,
    stops with one line naming the proxy, and burns no budget; with the proxy back, a rerun
    trains the stopped trial again and finishes the budget exactly."""
    path = write_study({**FAST, "base": {**FAST["base"], "epochs": 60},
                        "stages": [{**FAST["stages"][0], "trials": 3}]})
    db, port = tmp_path / "optuna.db", free_port()
    with store_proxy(f"sqlite:///{db}", port=port) as url:
        cmd = [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home",
               str(tmp_path / "mlruns"), "--storage", url]
        proc = run_until_training(cmd, db, "tiny.search")
    _, err = proc.communicate(timeout=120)  # the proxy is gone
    last = stopped_line(proc, err)
    assert f"the Optuna storage proxy at {url} has not answered for 3 s" in last, last
    assert "rerun the same command" in last
    with store_proxy(f"sqlite:///{db}", port=port) as url:
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        trials = optuna.load_study(study_name="tiny.search",
                                   storage=optuna_storage(url)).trials
    searched = [t for t in trials if t.state.name == "COMPLETE"
                and t.user_attrs.get("role") == "search"]
    assert len(searched) == 3  # the budget, exactly
    # The stopped one (the incumbent, or a search trial), trained again to the end.
    assert any("failed_trial" in t.system_attrs and t.state.name == "COMPLETE"
               for t in trials), [(t.number, t.state.name, t.system_attrs) for t in trials]


def test_a_worker_killed_holding_a_trial_is_found_at_once_and_the_study_finishes(
        write_study, tmp_path):
    """SIGKILL to a `run --workers 2` child as soon as it holds a trial: the trial is found at
    the next look (its worker a process of this machine that is gone, though not yet reaped:
    a zombie was taken for alive and the trial waited out GRACE_S), queued again and run by
    worker 0; the run finishes (exit 0, saying so), the budget exact and nothing left
    RUNNING in either store (a stage's decision the killed worker would have mirrored
    included)."""
    import datetime

    import psutil

    # Trials of about 3 s under CI's load (see the four-worker test): the child joins first.
    path = write_study({**FAST, "base": {**FAST["base"], "epochs": 60},
                        "stages": [{**FAST["stages"][0], "trials": 6,
                                    "confirm": {"top": 1, "max_repeats": 3}}]})
    home = tmp_path / "mlruns"
    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home",
                             str(home), "--workers", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the stores made (a reader that makes Optuna's tables races)
        if "stage search (stage 1 of 1)" in line:
            break
    storage = optuna_storage(Workspace.at(home).storage)
    held = killed_at = None
    while held is None and proc.poll() is None:
        time.sleep(0.2)
        children = {f"{socket.gethostname()}:{c.pid}": c
                    for c in psutil.Process(proc.pid).children()}
        for name in ("tiny.search", "tiny.search.repeats"):
            try:
                trials = optuna.load_study(study_name=name, storage=storage).trials
            except KeyError:
                continue  # the repeats: not made yet
            held = next(((name, t.number, children[w]) for t in trials
                         if t.state.name == "RUNNING"
                         and (w := t.user_attrs.get(TrialKey.WORKER)) in children), None)
            if held is not None:
                held[2].kill()
                killed_at = datetime.datetime.now()
                break
    out, err = proc.communicate(timeout=300)
    assert held is not None, "worker 1 never held a trial: the study was over before it joined"
    assert proc.returncode == 0, err[-2000:]
    assert ("was stopped by signal 9 (SIGKILL: the kernel's out-of-memory killer sends it, "
            "as does kill -9)") in out and "final test accuracy" in out
    ws = Workspace.at(home)
    lost = optuna.load_study(study_name=held[0], storage=ws.storage).trials[held[1]]
    # COMPLETE only where the kill came in the milliseconds after the read as the trial ended.
    assert lost.state.name in ("FAIL", "COMPLETE")
    if lost.state.name == "FAIL":
        found_after = (lost.datetime_complete - killed_at).total_seconds()
        # Found by its beats it is GRACE_S after its last (at least GRACE_S - HEARTBEAT_S after
        # the kill); at the next look, 0.1-8.7 s on 2 cores with a third process busy.
        assert found_after < GRACE_S - 2 * HEARTBEAT_S, (
            f"found {found_after:.1f} s after the kill")
    for name in ("tiny.search", "tiny.search.repeats"):
        trials = optuna.load_study(study_name=name, storage=ws.storage).trials
        assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")
                    and t.user_attrs.get("failure") != "unused"], name
    assert len([t for t in _finished(ws.storage, "tiny.search")
                if t.user_attrs["role"] == "search"]) == 6
    client = MlflowClient(ws.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def test_a_worker_that_decides_the_last_stage_says_how_to_get_the_final_score(write_study,
                                                                              tmp_path, capsys):
    """A worker never reads the test split: one started by hand that finished the study said
    nothing, and the study had no final score without a word of why."""
    path = write_study({**FAST, "stages": [{**FAST["stages"][0], "trials": 2}]})
    home = str(tmp_path / "mlruns")
    assert main(["worker", str(path), "--home", home]) == 0
    out = capsys.readouterr().out
    assert "every stage is decided; the final test score is `asl-sweep run`'s" in out
    assert "final test accuracy" not in out
    assert main(["run", str(path), "--home", home, "--workers", "1"]) == 0
    said = capsys.readouterr()
    assert "final test accuracy" in said.out
    assert " complete " not in said.out + said.err  # nothing trained again


def test_a_dotted_study_name_that_is_another_studys_stage_is_refused_both_ways(write_study,
                                                                               tmp_path, capsys):
    """Stage S of study X is the Optuna study X.S: a study named X.S ran inside X's stage
    (its record was that stage), and a study X with stage S inside the record of X.S."""
    path = write_study({**FAST, "stages": [{**FAST["stages"][0], "trials": 1}]})
    home = str(tmp_path / "one")
    assert main(["run", str(path), "--home", home, "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "--home", home, "--set", "study=tiny.search"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: study tiny.search: that name is taken in this store by a stage of another "
        "study (a stage's Optuna study is named STUDY.STAGE); name this study otherwise, e.g. "
        "--set study=tiny-search")
    other = str(tmp_path / "two")
    assert main(["run", str(path), "--home", other, "--set", "study=tiny.search"]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "--home", other]) == 2
    assert capsys.readouterr().err.startswith(
        "error: study tiny, stage search: its Optuna study 'tiny.search' is the record of "
        "another study")
    assert main(["status", str(path), "--home", other, "--set", "study=tiny.search"]) == 0
    assert "finished" in capsys.readouterr().out  # the dotted study is untouched


def test_a_grid_is_read_in_one_order_by_every_process_of_a_study(write_study):
    """Each process samples with a seed of its own, and the grid sampler shuffled its grid
    with it: a trial's point is a number in that order, so a rerun or a second worker read
    the numbers of the points taken in another order and trained some points twice while it
    skipped others (a rerun after a worker was killed trained the killed point again)."""
    from asl_sweep.search import store

    cfg = load_study(write_study({"stages": [{
        "name": "grid", "trials": 6, "sampler": "grid", "pruner": "none", "confirm": None,
        "space": {"lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]}}]}))
    storage = optuna.storages.InMemoryStorage()
    taken = []
    for seed in (0, 7919 * 3, 7919 * 5):  # the creator, then two other processes
        study = optuna.create_study(study_name="g", storage=storage, load_if_exists=True,
                                    sampler=store._sampler(cfg, 0, seed))
        for _ in range(2):
            trial = study.ask()
            taken.append(trial.suggest_categorical("lr", [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]))
            study.tell(trial, 0.0)
    assert sorted(taken) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
