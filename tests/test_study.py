import os
import signal
import subprocess
import sys

import optuna
from mlflow.tracking import MlflowClient

from asl_sweep.cli import main
from asl_sweep.readback import read_stages
from asl_sweep.studyfile import load_study
from asl_sweep.workspace import Workspace
from tests.conftest import running_trial

TWO_STAGES = {"stages": [
    {"name": "shape", "goal": "pick a shape", "trials": 3, "sampler": "random", "pruner": "none",
     "space": {"hidden": [[32], [16, 16]], "activation": ["relu", "tanh"]},
     "seed_trials": [{"hidden": [16, 16], "activation": "tanh"}]},
    {"name": "rate", "goal": "re-tune the rate", "trials": 3, "sampler": "random",
     "pruner": "none", "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                  "dropout.0": {"low": 0.0, "high": 0.3}}},
]}


def _study(ws, name):
    # Never create tables from the test: that would race the process under test doing it.
    storage = optuna.storages.RDBStorage(ws.storage, skip_table_creation=True)
    return optuna.load_study(study_name=name, storage=storage)


def test_later_stages_carry_earlier_winners(write_study, tmp_path):
    path = write_study(TWO_STAGES)
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    ws = Workspace.at(home)
    shape, rate = read_stages(load_study(path), ws)
    # The seed trial ran first, with exactly the hand-picked settings.
    assert shape.trials[0].user_attrs["seed_trial"]
    assert shape.trials[0].params == {"hidden": "[16, 16]", "activation": "tanh"}
    winner = shape.winner.params
    assert rate.carried == winner
    client = MlflowClient(ws.tracking_uri)
    lrs = set()
    for t in rate.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        # Every stage-2 trial trained with stage 1's winner ...
        assert run.data.params["activation"] == winner["activation"]
        assert run.data.params["hidden"] == str(winner["hidden"])
        # ... and records which stage decided what.
        assert run.data.tags["decided_by.hidden"] == "shape"
        assert run.data.tags["decided_by.lr"] == "rate"
        assert t.user_attrs["decided_by"] == {"hidden": "shape", "activation": "shape",
                                              "lr": "rate", "dropout.0": "rate"}
        lrs.add(t.params["lr"])
    assert len(lrs) == 3  # the re-opened parameter varies
    stage_runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                    "tags.kind = 'stage'")
    assert {r.data.tags["outcome"] for r in stage_runs} == {"best"}


GATE = {"base": {"epochs": 40}, "stages": [
    {"name": "overfit", "goal": "100% on 9 images", "subset": 9, "metric": "train_acc",
     "target": 1.0, "trials": 5, "pruner": "none", "sampler": "random",
     "space": {"lr": {"low": 3e-3, "high": 1e-2, "log": True}}}]}


def test_a_reached_gate_ends_its_stage_early(write_study, tmp_path):
    path = write_study(GATE)
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    (view,) = read_stages(load_study(path), Workspace.at(home))
    assert view.winner.status == "target reached" and view.winner.value == 1.0
    assert len(view.trials) < 5


def test_an_unreachable_gate_stops_the_run_or_continues(write_study, tmp_path, capsys):
    unreachable = {"base": {"epochs": 2}, "stages": [
        {**GATE["stages"][0], "trials": 2, "space": {"lr": {"low": 1e-6, "high": 2e-6}}},
        {"name": "next", "trials": 1, "space": {"lr": [1e-3]}}]}
    path = write_study(unreachable)
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 3
    err = capsys.readouterr().err
    assert "stage overfit: no trial reached train_acc >= 1.0" in err and "on_fail" in err
    (first, second) = read_stages(load_study(path), Workspace.at(home))
    assert second.trials == []  # nothing after the failed gate ran
    unreachable["stages"][0]["on_fail"] = "continue"
    path = write_study(unreachable, "continue.yaml")
    assert main(["run", str(path), "--home", str(tmp_path / "other")]) == 0
    first, second = read_stages(load_study(path), Workspace.at(tmp_path / "other"))
    assert first.winner.status == "target missed" and second.winner is not None


def test_kill_9_mid_stage_then_rerun_finishes_the_budget(write_study, tmp_path):
    # Stage-2 trials run long enough (about a second) to be caught mid-flight.
    spec = {"base": {"epochs": 5}, "stages": [
        {**TWO_STAGES["stages"][0]},
        {**TWO_STAGES["stages"][1], "trials": 4, "fixed": {"epochs": 150}}]}
    path = write_study(spec)
    home = tmp_path / "mlruns"
    ws = Workspace.at(home)
    cmd = [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home", str(home)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        killed_number = running_trial(home / "optuna.db", "tiny.rate", proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    before = read_stages(load_study(path), ws)[0].winner
    killed_params = _study(ws, "tiny.rate").trials[killed_number].params

    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    shape, rate = read_stages(load_study(path), ws)
    assert shape.winner == before and len(shape.trials) == 3  # not rerun, winner unchanged
    states = [t.state.name for t in rate.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1
    killed = rate.trials[killed_number]
    assert killed.state.name == "FAIL"
    retry = [t for t in rate.trials if t.system_attrs.get("failed_trial") == killed_number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == killed_params
    client = MlflowClient(ws.tracking_uri)
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "FAILED"
