"""Search spaces: conditions (define-by-run) and what each trial records."""

import json
import sys

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from asl_sweep.cli import main
from asl_sweep.runtime.workspace import Workspace
from tests.conftest import interrupt_a_trial

FAMILIES = {"base": {"epochs": 2, "cnn": {"channels": [8]}}, "stages": [{
    "name": "family", "trials": 6, "sampler": "random", "pruner": "none", "confirm": None,
    "space": {
        "model": ["mlp", "cnn"],
        "cnn.channels": {"choices": [[8], [8, 16]], "when": {"model": "cnn"}},
        "hidden": [[16], [32, 16]],
        "dropout.2": {"low": 0.0, "high": 0.5, "when": {"hidden": [[32, 16]]}},
    }}]}


@pytest.mark.slow
def test_conditional_settings_are_searched_and_recorded_only_where_they_apply(write_study,
                                                                            tmp_path):
    path = write_study(FAMILIES)
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    ws = Workspace.at(home)
    study = optuna.load_study(study_name="tiny.family", storage=ws.storage)
    client = MlflowClient(ws.tracking_uri)
    searched = [t for t in study.trials if t.user_attrs.get("role") == "search"]
    models = {t.params["model"] for t in searched}
    assert models == {"mlp", "cnn"}, models  # both families were tried
    for t in searched:
        assert ("cnn.channels" in t.params) == (t.params["model"] == "cnn")
        assert ("dropout.2" in t.params) == (t.params["hidden"] == "[32, 16]")
        params = client.get_run(t.user_attrs["mlflow_run_id"]).data.params
        assert params["model"] == t.params["model"]
        assert any(k.startswith("cnn.") for k in params) == (t.params["model"] == "cnn")
        assert not any(k.startswith("transfer.") for k in params)
        assert "hidden.0" in params and "[" not in params["hidden.0"]  # one param per element
        layers = len(json.loads(t.params["hidden"]))
        assert len([k for k in params if k.startswith("dropout.")]) == layers + 1


@pytest.mark.slow
def test_a_stage_that_moves_one_setting_at_a_time_changes_one_in_each_trial(write_study,
                                                                           tmp_path):
    """moves: 1: trial k changes the k-th setting the space lists from the start (a
    conditional one with the setting it depends on); everything else trains at the start's
    values, which MLflow records as the trial's settings."""
    path = write_study({"base": {"epochs": 1, "lr": 0.01}, "stages": [{
        "name": "levers", "trials": 4, "sampler": "random", "pruner": "none", "confirm": None,
        "moves": 1, "space": {
            "lr": {"low": 1e-4, "high": 1e-3, "log": True},
            "hidden": [[16], [32, 16]],
            "dropout.2": {"low": 0.0, "high": 0.5, "when": {"hidden": [[32, 16]]}},
            "weight_decay": {"low": 0.1, "high": 0.2},
        }}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    ws = Workspace.at(home)
    study = optuna.load_study(study_name="tiny.levers", storage=ws.storage)
    client = MlflowClient(ws.tracking_uri)
    searched = sorted((t for t in study.trials if t.user_attrs.get("role") == "search"),
                      key=lambda t: t.number)
    moved = [set(t.params) - {"dropout.2"} for t in searched]
    assert moved == [{"lr"}, {"hidden"}, {"weight_decay"}, {"lr"}]  # in order, then again
    for t in searched:
        params = client.get_run(t.user_attrs["mlflow_run_id"]).data.params
        if "lr" not in t.params:
            assert float(params["lr"]) == 0.01  # the start's
        if "weight_decay" not in t.params:
            assert float(params["weight_decay"]) < 0.1  # the start's, outside the range
        assert ("dropout.2" in t.params) == (t.params.get("hidden") == "[32, 16]")
    assert main(["report", str(path), "--home", str(home)]) == 0
    report = (home / "reports" / "tiny" / "report.md").read_text()
    assert "1 setting changed a trial from the start, in the space's order" in report


def test_a_move_never_draws_the_start_value_of_a_choice():
    from asl_sweep.search.space import suggest
    from asl_sweep.settings.spec import StageConfig

    space = StageConfig(name="s", space={"flip": [False, True], "hidden": [[], [16], [32]],
                                         "lr": {"low": 0.1, "high": 0.2}}).space
    def draws(start):  # one study a start: Optuna needs the same choices in every trial
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        return [suggest(study.ask(), space, {"flip", "hidden", "lr"}, start) for _ in range(30)]

    moved = draws({"flip": False, "hidden": [], "lr": 0.15})
    assert {d["flip"] for d in moved} == {True}
    assert sorted({json.dumps(d["hidden"]) for d in moved}) == ["[16]", "[32]"]
    # without a start every value stays a draw; a start outside the choices leaves them
    for free in (draws(None), draws({"flip": None, "hidden": [8]})):
        assert {d["flip"] for d in free} == {False, True} and [] in [d["hidden"] for d in free]


@pytest.mark.slow
def test_a_stage_that_moves_one_lever_at_a_time_never_trains_the_start_again(write_study,
                                                                             tmp_path):
    """Each move changes its lever: a choice draws a value other than the start's, the
    image size one other than the size the start trains at (data's, base leaves it)."""
    path = write_study({"base": {"epochs": 1, "activation": "relu"}, "stages": [{
        "name": "levers", "trials": 6, "sampler": "random", "pruner": "none",
        "confirm": None, "moves": 1,
        "space": {"activation": ["relu", "tanh"], "image_size": [16, 12]}}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    study = optuna.load_study(study_name="tiny.levers", storage=Workspace.at(home).storage)
    searched = [t for t in study.trials if t.user_attrs.get("role") == "search"]
    assert [t.params for t in sorted(searched, key=lambda t: t.number)] == [
        {"activation": "tanh"}, {"image_size": 12}] * 3


def test_moves_is_the_next_settings_in_the_spaces_order_and_a_queued_trials_own():
    from asl_sweep.search.space import changed_settings
    from asl_sweep.settings.spec import StageConfig

    space = StageConfig(name="s", space={"a": [1, 2], "b": [1, 2], "c": {"low": 0, "high": 1},
                                         "d": {"choices": [1, 2], "when": {"b": [2]}}}).space
    assert changed_settings(space, 3, None) is None  # every setting
    assert [changed_settings(space, k, 1) for k in (1, 2, 3, 4)] == [
        {"a"}, {"b", "d"}, {"c"}, {"a"}]
    assert changed_settings(space, 1, 2) == {"a", "b", "d"}
    assert changed_settings(space, 2, 2) == {"c", "a"}
    assert changed_settings(space, 2, 1, fixed={"c": 0.5}) == {"c"}  # a retry: its own
    with pytest.raises(ValueError, match="moves"):
        StageConfig(name="s", sampler="grid", moves=1, space={"a": [1, 2]})
    # More moves than the space has levers (d moves with b): said, not read as "every one".
    with pytest.raises(ValueError, match="moves: 4 is more than the 3 setting"):
        StageConfig(name="s", moves=4, space={"a": [1, 2], "b": [1, 2], "c": [0, 1],
                                              "d": {"choices": [1, 2], "when": {"b": [2]}}})
    assert StageConfig(name="s", moves=3, space={"a": [1, 2], "b": [1, 2], "c": [0, 1]}).moves


def test_what_a_stage_cannot_resume_over_is_named_and_what_it_can_is_not():
    from asl_sweep.search.space import changed_since, suggest
    from asl_sweep.settings.spec import StageConfig

    def space(**settings):
        return StageConfig(name="s", space=settings).space

    drawn = space(hidden=[[16], [32]], lr={"low": 0.1, "high": 0.2})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    suggest(study.ask(), drawn)
    trials = study.get_trials(deepcopy=False)
    assert changed_since(trials, drawn) is None
    # new bounds and new settings Optuna resumes over; a dropped setting is not drawn again
    assert changed_since(trials, space(hidden=[[16], [32]], lr={"low": 0.05, "high": 0.3},
                                       wd={"low": 0.0, "high": 1.0})) is None
    assert changed_since(trials, space(lr={"low": 0.1, "high": 0.2})) is None
    assert changed_since(trials, space(hidden=[[16], [64]], lr={"low": 0.1, "high": 0.2})) == (
        "hidden", "[[16], [32]]", "[[16], [64]]")  # the setting, then and now
    assert changed_since(trials, space(hidden=[[16], [32]], lr={"low": 0.1, "high": 0.2,
                                                                "log": True})) == (
        "lr", "float 0.1 to 0.2", "float 0.1 to 0.2, log")
    assert changed_since(trials, space(hidden=[[16], [32]], lr=[0.1, 0.2]))[0] == "lr"
    # a stage that moves one lever at a time drew each choice without the start's value
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    suggest(study.ask(), drawn, {"hidden"}, {"hidden": [16]})
    moved = study.get_trials(deepcopy=False)
    assert changed_since(moved, drawn, {"hidden": [16], "lr": 0.15}) is None
    assert changed_since(moved, drawn)[0] == "hidden"  # not the values it drew from


@pytest.mark.slow
def test_a_stage_resumed_over_edited_choices_is_one_line_and_restored_it_goes_on(write_study,
                                                                                tmp_path,
                                                                                capsys):
    """A real run stopped mid-search (SIGTERM), its YAML's choices edited, run again: Optuna
    cannot draw from trials of other values (its sampler fails deep inside), so one line
    names the setting, exit 2, nothing runs; the values restored, the stage resumes and
    finishes, a moves stage over the values less the start's that it drew from."""
    spec = {"data": {"synthetic": {"per_class": 8}, "image_size": 12},
            "base": {"hidden": [32], "epochs": 40, "batch_size": 16},
            "stages": [{"name": "search", "trials": 3, "sampler": "random", "pruner": "none",
                        "confirm": None, "moves": 1,
                        "space": {"hidden": [[32], [16], [8]],
                                  "lr": {"low": 1e-4, "high": 1e-2, "log": True}}}]}
    path = write_study(spec)
    shipped = path.read_text()
    home = tmp_path / "mlruns"
    cmd = [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home", str(home)]
    interrupt_a_trial(cmd, home / "optuna.db", "tiny.search", role="search")

    edited = yaml.safe_load(path.read_text())
    edited["stages"][0]["space"]["hidden"] = [[32], [16], [4]]
    path.write_text(yaml.safe_dump(edited, sort_keys=False))
    # The reruns here, in this process (the stop was a real process's).
    assert main(cmd[3:]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "stages.0.space.hidden is [[16], [4]]" in line and "drawn from [[16], [8]]" in line
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    assert not any(t.state.name == "RUNNING" for t in study.trials)

    path.write_text(shipped)
    assert main(cmd[3:]) == 0
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    searched = [t for t in study.trials
                if t.user_attrs.get("role") == "search" and t.state.name == "COMPLETE"]
    assert len(searched) == 3
