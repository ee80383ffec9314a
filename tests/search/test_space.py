"""Search spaces: conditions (define-by-run) and what each trial records."""

import json

import optuna
import pytest
from mlflow.tracking import MlflowClient

from asl_sweep.cli import main
from asl_sweep.runtime.workspace import Workspace

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
