"""Trainings found again (search/reuse.py): a stage's incumbent is what the stage before it
trained, so its trials stand on those trainings instead of training again; with
reuse_trainings: false every trial trains."""

import optuna
import pytest
from mlflow.tracking import MlflowClient

import asl_sweep.search.trial
from asl_sweep.cli import main
from asl_sweep.results.readback import read_stages
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.record import load_record
from asl_sweep.search.reuse import training_key
from asl_sweep.search.selection import role_of
from asl_sweep.search.state import TRAINED_PREFIX as PREFIX
from asl_sweep.search.state import Role, outcome_of, reused_from
from asl_sweep.search.state import read as attrs
from asl_sweep.settings.studyfile import load_study

# Two stages that can only hurt (weight decay far too strong): each keeps its incumbent, so
# the second stage's incumbent is the first's, trained on the same seeds and folds. Each
# races its candidate though it lost in the search (search_gain off, as by default).
KEEP_TWICE = {"data": {"synthetic": {"per_class": 24}}, "base": {"epochs": 3}, "stages": [
    {"name": "decay", "trials": 1, "sampler": "random", "pruner": "none",
     "confirm": {"top": 1, "max_repeats": 3, "search_gain": False},
     "space": {"weight_decay": {"low": 5.0, "high": 20.0}}},
    # A median pruner (it starts after 3 trials: it prunes nothing here), whose stage
    # keeps a reused trial's curve.
    {"name": "decay_again", "trials": 1, "sampler": "random", "pruner": "median",
     "confirm": {"top": 1, "max_repeats": 3, "search_gain": False},
     "space": {"weight_decay": {"low": 5.0, "high": 20.0}}},
]}


def run_counting(path, home, extra=()):
    trained = []
    real = asl_sweep.search.trial.train

    def counted(cfg, *args, **kwargs):
        trained.append(cfg.seed)
        return real(cfg, *args, **kwargs)

    asl_sweep.search.trial.train = counted
    try:
        assert main(["run", str(path), "--home", str(home), "--workers", "1", *extra]) == 0
    finally:
        asl_sweep.search.trial.train = real
    return trained


@pytest.fixture(scope="module")
def kept_twice(tmp_path_factory):
    import yaml

    from tests.conftest import TINY_STUDY, deep_update

    root = tmp_path_factory.mktemp("reuse")
    path = root / "study.yaml"
    spec = deep_update(yaml.safe_load(yaml.safe_dump(TINY_STUDY)), KEEP_TWICE)
    spec["stages"] = KEEP_TWICE["stages"]
    path.write_text(yaml.safe_dump(spec))
    home = root / "mlruns"
    trained = run_counting(path, home)
    return path, Workspace.at(home), trained


def incumbent_trials(view):
    return [t for t in view.trials if t.state.name == "COMPLETE" and (
        t.user_attrs.get("role") == "incumbent" or t.user_attrs.get("incumbent"))]


def test_the_next_stage_stands_on_the_incumbent_the_last_one_trained(kept_twice):
    path, ws, trained = kept_twice
    first, second = read_stages(load_study(path), ws)
    assert first.result.status == second.result.status == "kept incumbent"
    before = {t.user_attrs.get("repeat", 0): t for t in incumbent_trials(first)}
    again = incumbent_trials(second)
    assert len(again) >= 3  # the incumbent and at least two racing repeats
    for t in again:
        source = before[t.user_attrs.get("repeat", 0)]
        assert reused_from(t).startswith("stage decay, trial ")
        assert t.user_attrs["mlflow_run_id"] == source.user_attrs["mlflow_run_id"]
        assert t.value == source.value and outcome_of(t).fold == outcome_of(source).fold
        assert outcome_of(t).step == outcome_of(source).step > 0
        assert outcome_of(t).crossfit == outcome_of(source).crossfit is not None
        # Its curve where a pruner weighs it like any trial: the stage's incumbent; a repeat
        # is never compared (its MLflow run has every epoch).
        compared = role_of(t) == Role.INCUMBENT
        assert t.intermediate_values == (source.intermediate_values if compared else {})
        assert not compared or t.intermediate_values
    # Nothing trained twice: every training the run did is one trial that is not reused.
    fresh = [t for v in (first, second) for t in v.trials
             if t.state.name in ("COMPLETE", "PRUNED") and not reused_from(t)]
    assert len(trained) == len(fresh)
    # The final score read the reused trials' checkpoints (the first stage's runs).
    assert set(second.result.repeats) <= {t.number for t in again}


def test_every_training_on_record_still_has_its_checkpoint(kept_twice):
    """A checkpoint deleted once its stage decided takes its entry with it, so no later
    trial can stand on a training whose model is gone."""
    path, ws, _ = kept_twice
    record = load_record(optuna.storages.RDBStorage(ws.storage), load_study(path).study)
    entries = {k: v for k, v in attrs(record).items() if k.startswith(PREFIX)}
    live = [v for v in entries.values() if v]
    assert live and len(live) < len(entries)  # some deleted (the candidates'), some kept
    client = MlflowClient(ws.tracking_uri)
    for entry in live:
        files = {a.path for a in client.list_artifacts(entry["run_id"])}
        assert "checkpoints" in files, entry


def test_the_key_names_everything_that_decides_a_training():
    key = training_key("settings", 32, 1, None, "val_acc", "maximize")
    assert key == training_key("settings", 32, 1, None, "val_acc", "maximize")
    for other in (("other", 32, 1, None, "val_acc", "maximize"),
                  ("settings", 48, 1, None, "val_acc", "maximize"),
                  ("settings", 32, 2, None, "val_acc", "maximize"),
                  ("settings", 32, 1, 20, "val_acc", "maximize"),
                  ("settings", 32, 1, None, "val_loss", "minimize")):
        assert training_key(*other) != key


def test_reuse_off_trains_every_trial(kept_twice, tmp_path):
    path, _, trained_with_reuse = kept_twice
    home = tmp_path / "mlruns"
    trained = run_counting(path, home, ["--set", "reuse_trainings=false"])
    ws = Workspace.at(home)
    views = read_stages(load_study(path, ["reuse_trainings=false"]), ws)
    assert not any(reused_from(t) for v in views for t in v.trials)
    assert len(trained) > len(trained_with_reuse)


def test_a_lost_checkpoint_is_trained_again_not_reused_and_the_study_finishes(tmp_path,
                                                                             capsys):
    """Issue 33: a stage decides, a user deletes its kept repeats' best.pt, the study goes
    on: the next stage trains its incumbent again instead of standing on a checkpoint that
    is gone, and the final score reads checkpoints that exist. Then the final repeats'
    checkpoints are deleted too: export says in one line how to get them back, and a rerun
    of the finished study trains them again."""
    import yaml

    from tests.conftest import TINY_STUDY, deep_update

    spec = deep_update(yaml.safe_load(yaml.safe_dump(TINY_STUDY)), KEEP_TWICE)
    spec["stages"] = KEEP_TWICE["stages"][:1]
    path, home = tmp_path / "study.yaml", tmp_path / "mlruns"
    path.write_text(yaml.safe_dump(spec))
    run_counting(path, home)  # stage decay decides, keeps its incumbent's repeats

    def delete_checkpoints() -> int:
        gone = list(home.rglob("checkpoints/best.pt"))
        for file in gone:
            file.unlink()
        return len(gone)

    assert delete_checkpoints() >= 2
    spec["stages"] = KEEP_TWICE["stages"]  # the study goes on to its second stage
    path.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    trained = run_counting(path, home)
    out = capsys.readouterr().out
    assert "has lost its checkpoint; training again" in out and "reused from" not in out
    assert len(trained) >= 3  # the incumbent's repeats trained again, not reused
    assert "final test accuracy" in out

    assert delete_checkpoints() >= 2
    code = main(["evaluate", str(path), "--home", str(home)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is missing from the run's artifacts" in err and "rerun the study" in err
    assert len(err.splitlines()) == 1
    run_counting(path, home)  # finished: no stage reopens, the lost repeats train again
    assert "is gone; training it again" in capsys.readouterr().out
    assert main(["evaluate", str(path), "--home", str(home)]) == 0
