"""The exception policy of a trial: its own failures are results, everything else is not."""

import subprocess
import sys

import optuna
import pytest
from mlflow.tracking import MlflowClient

from asl_sweep.cli import main
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.state import outcome_of

DIVERGES = {"base": {"optimizer": "sgd", "epochs": 3}, "stages": [{
    "name": "search", "trials": 3, "sampler": "grid", "pruner": "none", "confirm": None,
    "space": {"lr": [1.0e6, 1.0e-2, 3.0e-2]}}]}

BROKEN_TRAINER = """
import sys
import asl_sweep.search.trial
def broken(*args, **kwargs):
    raise TypeError("train() got an unexpected keyword argument 'from_a_refactor'")
asl_sweep.search.trial.train = broken
from asl_sweep.cli import main
sys.exit(main(sys.argv[1:]))
"""

# What the kernel's out-of-memory killer does to a process that trains some settings.
KILLED_BY_SETTINGS = """
import os, signal, sys
import asl_sweep.search.trial
real = asl_sweep.search.trial.train
def train(cfg, *args, **kwargs):
    if cfg.hidden == [48]:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(cfg, *args, **kwargs)
asl_sweep.search.trial.train = train
from asl_sweep.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_diverging_trial_fails_on_its_own_and_the_stage_goes_on(write_study, tmp_path, capsys):
    path = write_study(DIVERGES)
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    assert "failed: FloatingPointError: training diverged" in capsys.readouterr().out
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    by_lr = {t.params["lr"]: t for t in study.trials if "lr" in t.params}
    assert by_lr[1.0e6].state.name == "FAIL" and by_lr[1.0e6].user_attrs["failure"] == "error"
    assert len(study.trials) == 4  # the incumbent and 3: the failure used its turn, no retry
    assert "trial" in study.user_attrs["decision"] or "incumbent" in study.user_attrs["decision"]
    assert str(by_lr[1.0e6].number) not in study.user_attrs["decision"].split(":")[0]


def test_a_model_too_large_for_the_machine_fails_its_trial_before_it_allocates(
        write_study, tmp_path, capsys, caplog):
    """A sampled head of 200,000 x 200,000 weights (600 GiB to train) was torch's allocator
    error as a traceback that stopped the search (or, below the allocator's own limit, the
    process killed mid-epoch). It is that trial's own failure, said before any memory is
    taken; `train` with such settings is one line, exit 2."""
    path = write_study({"stages": [{
        "name": "search", "trials": 2, "sampler": "grid", "pruner": "none", "confirm": None,
        "space": {"hidden": [[200000, 200000], [32]]}}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "failed: SettingsError: the mlp these settings describe has 40," in out
    assert "GiB of this machine; use smaller layers (hidden, cnn.channels)" in out
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    (big,) = [t for t in study.trials if t.state.name == "FAIL"]
    assert big.user_attrs["failure"] == "error" and "200000" in str(big.params["hidden"])
    assert len(study.trials) == 3  # the incumbent and 2: the failure used its turn
    assert main(["train", str(path), "--home", str(home), "--set",
                 "base.hidden=[200000, 200000]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the mlp these settings describe") and "\n" not in err


@pytest.mark.slow
def test_settings_whose_process_is_killed_each_time_fail_on_their_own_and_say_why(
        write_study, tmp_path, capsys, caplog):
    """A process killed whenever it trains some settings (out of memory) was retried on each
    rerun, killed again without a word, and after three retries dropped without one, its
    turn neither used nor said. Each loss is said on the next run; the third ends the
    trial as its own failure (its turn used), and the stage finishes without it."""
    path = write_study({"stages": [{
        "name": "search", "trials": 1, "sampler": "grid", "pruner": "none", "confirm": None,
        "space": {"hidden": [[48]]}}]})
    home = tmp_path / "mlruns"

    def run():
        return subprocess.run([sys.executable, "-c", KILLED_BY_SETTINGS, "run", str(path),
                               "--home", str(home), "--workers", "1"],
                              capture_output=True, text=True, timeout=120)

    said = []
    for _ in range(3):
        proc = run()
        assert proc.returncode == -9, proc.stderr
        said.append(proc.stdout + proc.stderr)
    assert "lost with its worker" not in said[0]
    assert ("trial 1 (hidden=[48]) was lost with its worker (the process was killed or "
            "crashed); queued again (1 of 3 losses before it counts as failed)") in said[1]
    assert "(2 of 3 losses before it counts as failed)" in said[2]
    # The fourth run here, in this process: it trains the settings no more.
    assert main(["run", str(path), "--home", str(home), "--workers", "1"]) == 0
    out = capsys.readouterr()
    assert ("trial 1 (hidden=[48]) was lost with its worker 3 times: it counts as failed on "
            "its own and is not run again. A process killed each time it trains these "
            "settings is most likely out of memory") in out.out + out.err + caplog.text
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    last = study.trials[-1]
    assert last.state.name == "FAIL" and last.user_attrs["failure"] == "error"
    assert last.system_attrs["retry_history"] == [1, 2, 3]
    assert "final test accuracy" in out.out


def test_a_bug_in_the_trainer_stops_the_run_with_its_traceback(write_study, tmp_path):
    path = write_study()
    home = tmp_path / "mlruns"
    proc = subprocess.run([sys.executable, "-c", BROKEN_TRAINER, "run", str(path), "--home",
                           str(home)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "TypeError: train() got an unexpected" in proc.stderr
    assert "trial failed" not in proc.stdout + proc.stderr
    ws = Workspace.at(home)
    study = optuna.load_study(study_name="tiny.search", storage=ws.storage)
    crashed, *slots, retry = study.trials  # the incumbent crashed, and waits to run again
    assert crashed.state.name == "FAIL" and crashed.user_attrs["failure"] == "crashed"
    # Not a search result: the same settings wait to run again, no budget is used (the
    # stage's search budget still waits, queued, untouched).
    assert retry.state.name == "WAITING" and retry.params == crashed.params
    assert retry.user_attrs["role"] == "incumbent"
    assert slots and {t.state.name for t in slots} == {"WAITING"}
    assert retry.system_attrs["failed_trial"] == crashed.number
    client = MlflowClient(ws.tracking_uri)
    run_id = crashed.user_attrs["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FAILED"
    trace = client.download_artifacts(run_id, "error/traceback.txt", str(tmp_path))
    assert "TypeError" in open(trace).read()
    experiment = client.get_experiment_by_name("tiny")
    for run in client.search_runs([experiment.experiment_id]):
        assert run.info.status != "RUNNING", run.data.tags


def test_early_stopping_never_cuts_a_gate_stage_short(write_study, tmp_path):
    # A rate so low that validation never improves: early stopping (patience 1) would stop
    # every trial after 2 epochs. The gate trains all 6; the plain stage after it stops.
    path = write_study({"base": {"epochs": 6, "lr": 1e-7, "early_stop": {"patience": 1}},
                        "stages": [
                            {"name": "gate", "trials": 1, "sampler": "random", "pruner": "none",
                             "confirm": None, "metric": "train_acc", "target": 0.99,
                             "on_fail": "continue", "space": {"hidden": [[32]]}},
                            {"name": "plain", "trials": 1, "sampler": "random",
                             "pruner": "none", "confirm": None, "space": {"hidden": [[32]]}}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    client = MlflowClient(Workspace.at(home).tracking_uri)
    epochs = {}
    for stage in ("gate", "plain"):
        study = optuna.load_study(study_name=f"tiny.{stage}", storage=Workspace.at(home).storage)
        run = study.trials[0].user_attrs["mlflow_run_id"]
        epochs[stage] = len(client.get_metric_history(run, "val_acc"))
    assert epochs == {"gate": 6, "plain": 2}


def test_every_trial_run_has_its_own_process_metrics_even_a_short_one(write_study, tmp_path):
    """The trial's own process (CPU, resident memory, threads), sampled at its start and end
    and every 5 s between: a trial of a second has two samples (MLflow's machine-wide
    monitor left 11 of 20 runs, every pruned one, without any)."""
    path = write_study({"base": {"epochs": 2},  # about a second a trial
                        "stages": [{"name": "search", "trials": 2, "sampler": "random",
                                    "pruner": "none", "confirm": None,
                                    "space": {"hidden": [[32], [16]]}}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    client = MlflowClient(Workspace.at(home).tracking_uri)
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    assert len(study.trials) == 3
    for t in study.trials:
        run = t.user_attrs["mlflow_run_id"]
        rss = client.get_metric_history(run, "system/process_rss_mb")
        cpu = client.get_metric_history(run, "system/process_cpu_percent")
        assert len(rss) >= 2 and len(cpu) >= 2, (t.number, len(rss))  # start and end
        assert all(50 < m.value < 20_000 for m in rss)  # a process with torch loaded, in MB
        assert all(m.value >= 0 for m in cpu)
        assert sorted(m.step for m in rss) == list(range(len(rss)))
        assert "system/cpu_utilization_percentage" not in client.get_run(run).data.metrics


def _run_with_folds(write_study, tmp_path, capsys, folds: int):
    """A one-trial stage validating on `folds` person folds, run: (study YAML, home, what run
    printed, the stage's Optuna study)."""
    path = write_study({"stages": [{"name": "search", "trials": 1, "sampler": "grid",
                                    "pruner": "none", "confirm": None, "folds": folds,
                                    "metric": "val_person_mean",
                                    "space": {"lr": [1e-2]}}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    return path, home, capsys.readouterr().out, study


def test_a_stage_with_folds_validates_each_trial_on_several_person_folds(write_study, tmp_path,
                                                                         capsys):
    _, home, out, study = _run_with_folds(write_study, tmp_path, capsys, folds=2)
    client = MlflowClient(Workspace.at(home).tracking_uri)
    for t in study.trials:  # the incumbent and the search trial
        values = outcome_of(t).fold_values
        assert len(values) == 2 and t.value == pytest.approx(sum(values) / 2)
        assert values[0] == pytest.approx(outcome_of(t).metrics["val_person_mean"])
        metrics = client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics
        assert metrics["val_person_mean_fold1"] == pytest.approx(values[1])
        assert metrics["val_person_mean_folds_mean"] == pytest.approx(t.value)
    # The leaderboard ranks by the mean over the folds, and shows it beside fold 0's figures.
    assert "the mean over 2 person folds, the accuracies fold 0's" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("trial "))
    column = lines[header].index("val_person_mean (2 folds)")
    shown = [float(line[column:].split()[0]) for line in lines[header + 2:header + 4]]
    ranked = sorted((t.value for t in study.trials), reverse=True)
    assert shown == [pytest.approx(v, abs=5e-4) for v in ranked]


def test_folds_past_what_the_split_has_are_said_and_labelled_as_they_ran(write_study, tmp_path,
                                                                         capsys):
    """`folds: 10` on a split with fewer person folds ran that many, while the run, the
    leaderboard and status said "the mean over 10 person folds"."""
    path, home, out, study = _run_with_folds(write_study, tmp_path, capsys, folds=10)
    ran = {len(outcome_of(t).fold_values) for t in study.trials}
    assert len(ran) == 1 and 1 < (k := ran.pop()) < 10
    assert (f"stage search: folds 10, but the split has {k} validation folds of the people "
            f"outside test: each search trial is the mean over {k} fold(s)") in out
    assert f"the mean over {k} person folds, the accuracies fold 0's" in out
    assert f"val_person_mean ({k} folds)" in out and "10 folds" not in out
    assert main(["status", str(path), "--home", str(home)]) == 0
    status = capsys.readouterr().out
    assert f"the mean over {k} person folds)" in status and "10 person folds" not in status


def test_a_store_that_did_not_take_a_requeue_is_named_with_its_fault():
    """Optuna wraps a full disk as 'invalid data in the commit, e.g. exceeding max length':
    the warning says the store was full (seen with a home on a full tmpfs)."""
    import sqlite3

    from optuna.exceptions import StorageInternalError

    from asl_sweep.search.trial import _cause

    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as e:
            raise StorageInternalError("An exception is raised during the commit. This "
                                       "typically happens due to invalid data") from e
    except StorageInternalError as e:
        said = _cause(e, "the Optuna store")
    assert said == "the Optuna store could not be written (database or disk is full)"
    assert _cause(ValueError("x\ny"), "the Optuna store") == "ValueError: x"
