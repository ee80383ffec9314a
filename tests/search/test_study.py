"""Stage orchestration end to end, with real stores: carrying forward, gates, the incumbent,
confirmation by paired repeats, the evidence rule, the final test score, and kill -9."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

import asl_sweep.search.trial
from asl_sweep.cli import main
from asl_sweep.data.studydata import StudyData
from asl_sweep.results.readback import read_final, read_stages
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.state import StageKey, outcome_of
from asl_sweep.search.state import read as attrs
from asl_sweep.settings.studyfile import load_study
from asl_sweep.tracking.tracker import _flatten
from asl_sweep.training.train import PARTITIONS, partitions
from tests.conftest import TINY_STUDY, interrupt_a_trial, make_image_folder, running_trial

TWO_STAGES = {"stages": [
    {"name": "shape", "goal": "pick a shape", "trials": 3, "sampler": "random", "pruner": "none",
     "confirm": None, "space": {"hidden": [[32], [16, 16]], "activation": ["relu", "tanh"]},
     "seed_trials": [{"hidden": [16, 16], "activation": "tanh", "reported": 0.329}]},
    {"name": "rate", "goal": "re-tune the rate", "trials": 3, "sampler": "random",
     "pruner": "none", "confirm": None, "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                                  "dropout.0": {"low": 0.0, "high": 0.3}}},
]}

# Stage 1 can only hurt (weight decay far too strong); stage 2 starts from a rate far too low
# (its `fixed`) and searches a good one: kept, then adopted, each on paired evidence.
EVIDENCE = {"data": {"synthetic": {"per_class": 24}}, "base": {"epochs": 5}, "stages": [
    # Raced though it lost in the search (search_gain off, as by default): the race's rule.
    {"name": "decay", "goal": "weight decay that only hurts", "trials": 2, "sampler": "random",
     "pruner": "none", "confirm": {"top": 1, "search_gain": False},
     "space": {"weight_decay": {"low": 5.0, "high": 20.0}}},
    {"name": "rate", "goal": "a rate that clearly helps", "trials": 1, "sampler": "grid",
     "pruner": "none", "confirm": {"top": 1}, "fixed": {"lr": 1.0e-6},
     "space": {"lr": [3.0e-3]}},
]}


def test_later_stages_carry_earlier_winners(write_study, tmp_path):
    path = write_study(TWO_STAGES)
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    ws = Workspace.at(home)
    shape, rate = read_stages(load_study(path), ws)
    # The incumbent ran first, as it came; then the seed trial, with the hand-picked settings.
    assert shape.trials[0].user_attrs["role"] == "incumbent" and shape.trials[0].params == {}
    assert shape.trials[1].user_attrs["role"] == "seed"
    assert shape.trials[1].params == {"hidden": "[16, 16]", "activation": "tanh"}
    assert shape.trials[1].user_attrs["reported"] == 0.329
    winner = shape.result.params
    assert rate.carried == winner
    client = MlflowClient(ws.tracking_uri)
    lrs = set()
    for t in rate.trials[1:]:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        for key, value in winner.items():  # every stage-2 trial trained with stage 1's winner
            for name, text in _flatten({key: value}).items():
                assert run.data.params[name] == text
            assert run.data.tags[f"decided_by.{key}"] == "shape"
        assert run.data.tags["decided_by.lr"] == "rate"
        lrs.add(t.params["lr"])
    assert len(lrs) == 3  # the re-opened parameter varies
    stage_runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                    "tags.kind = 'stage'")
    assert sorted(r.info.run_name for r in stage_runs) == ["1-shape", "2-rate"]
    storage = optuna.storages.RDBStorage(ws.storage)
    assert optuna.load_study(study_name="tiny.rate", storage=storage).metric_names == ["val_acc"]


GATE = {"base": {"epochs": 40}, "stages": [
    {"name": "overfit", "goal": "100% on 9 images", "subset": 9, "metric": "train_acc",
     "target": 1.0, "trials": 5, "pruner": "none", "sampler": "random",
     "space": {"lr": {"low": 3e-3, "high": 1e-2, "log": True}}}]}


def test_a_reached_gate_ends_its_stage_early(write_study, tmp_path):
    path = write_study(GATE)
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    (view,) = read_stages(load_study(path), Workspace.at(home))
    assert view.result.status == "target reached" and view.result.value == 1.0
    assert len(view.trials) < 5


def test_an_unreachable_gate_stops_the_run_or_continues(write_study, tmp_path, capsys):
    unreachable = {"base": {"epochs": 2, "lr": 1e-6}, "stages": [
        {**GATE["stages"][0], "trials": 2, "space": {"lr": {"low": 1e-6, "high": 2e-6}}},
        {"name": "next", "trials": 1, "confirm": None, "space": {"lr": [1e-3]}}]}
    path = write_study(unreachable)
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 3
    err = capsys.readouterr().err
    assert "stage overfit: no trial reached train_acc >= 1.0" in err and "on_fail" in err
    (first, second) = read_stages(load_study(path), Workspace.at(home))
    assert second.trials == []  # nothing after the failed gate ran
    client = MlflowClient(Workspace.at(home).tracking_uri)
    (stage_run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                      "tags.kind = 'stage' and tags.stage = 'overfit'")
    assert (stage_run.info.status, stage_run.data.tags["outcome"]) == ("FAILED", "target missed")
    # Read back, the stopped stage says why: status said "in progress", export and evaluate
    # "no finished stage yet; run it first", and the gate's advice of more epochs was refused
    # by the resume check.
    assert main(["status", str(path), "--home", str(home)]) == 0
    assert "[1] overfit: stopped the study: no trial reached train_acc >= 1.0" in (
        capsys.readouterr().out)
    for command in ("export", "evaluate"):
        assert main([command, str(path), "--home", str(home)]) == 2
        assert capsys.readouterr().err.startswith(
            "error: study tiny stopped at stage overfit (no trial reached train_acc >= 1.0")
    assert main(["report", str(path), "--home", str(home), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "No final test score: the study stopped at stage overfit (no trial reached" in md
    assert "| overfit | 100% on 9 images | stopped the study (target missed) |" in md
    assert main(["run", str(path), "--home", str(home), "--set", "study=goes-on",
                 "--set", "stages.0.on_fail=continue"]) == 0
    capsys.readouterr()
    assert main(["compare", str(path), str(path), "--home", str(home),
                 "--other-set", "study=goes-on", "--other-set", "stages.0.on_fail=continue"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("overfit")]
    assert row.split()[1:5] == ["stopped", "the", "study", "(target"]
    assert "target missed:" in row  # the other study's decision beside it
    # The advice holds: on_fail: continue in the same home decides the stage from its trials.
    assert main(["run", str(path), "--home", str(home), "--set",
                 "stages.0.on_fail=continue"]) == 0
    first, second = read_stages(load_study(path), Workspace.at(home))
    assert first.result.status == "target missed" and first.stopped is None
    assert second.result is not None


@pytest.fixture(scope="module")
def evidence_study(tmp_path_factory):
    """A two-stage study with confirmation, run once through the CLI while every call of the
    trainer is watched (the real trainer runs; the watcher only records what it was given)."""
    import yaml

    from tests.conftest import TINY_STUDY, deep_update

    root = tmp_path_factory.mktemp("evidence")
    path = root / "study.yaml"
    spec = deep_update(yaml.safe_load(yaml.safe_dump(TINY_STUDY)), EVIDENCE)
    spec["stages"] = EVIDENCE["stages"]
    path.write_text(yaml.safe_dump(spec))
    seen = []
    real = asl_sweep.search.trial.train

    def watched(cfg, data, *args, **kwargs):
        seen.append((cfg.seed, data.train_index.copy(), data.val_index.copy()))
        return real(cfg, data, *args, **kwargs)

    home = root / "mlruns"
    asl_sweep.search.trial.train = watched
    try:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["run", str(path), "--home", str(home)]) == 0
    finally:
        asl_sweep.search.trial.train = real
    return path, Workspace.at(home), seen, out.getvalue()


def test_a_candidate_that_lost_in_the_search_is_not_raced(write_study, tmp_path, capsys):
    """With confirm.search_gain a stage races only candidates whose search trial beat the
    incumbent's on the same fold and seed: a space that only hurts keeps the incumbent with
    no confirmation trained, and says why in the decision and the terminal. The study's last
    stage still trains the incumbent's first round (min_repeats fresh repeats), so the final
    test score has its seed spread. Off (the default), the same stage races
    (test_a_space_that_can_only_hurt_keeps_the_incumbent)."""
    decay = {**EVIDENCE["stages"][0], "confirm": {"top": 1, "search_gain": True}}
    path = write_study({**EVIDENCE, "stages": [decay, {**decay, "name": "again"}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    cfg, ws = load_study(path), Workspace.at(home)
    stages = read_stages(cfg, ws)
    for stage in stages:
        assert stage.result.status == "kept incumbent" and stage.result.params == {}
        assert re.fullmatch(r"kept incumbent: no search trial beat it on the search's fold "
                            r"and seed \(the best, trial [12]: -\d+\.\d pt\); not raced "
                            r"\(confirm.search_gain\)", stage.result.decision)
    first, last = stages
    assert [t.user_attrs["role"] for t in first.trials] == ["incumbent", "search", "search"]
    assert first.result.repeats == [0]
    assert [t.user_attrs["role"] for t in last.trials] == [
        "incumbent", "search", "search", "confirm", "confirm"]
    assert len(last.result.repeats) == 3
    final = read_final(cfg, ws)
    assert final["summary"].split(" (")[0].endswith("over 3 repeats")
    out = capsys.readouterr().out
    assert "did not beat the incumbent on the search's fold and seed: not raced" in out
    assert "stage again: nothing to race; the incumbent's 2 fresh repeats" in out
    assert first.result.decision in out and last.result.decision in out


def test_a_stage_whose_incumbent_failed_says_why_its_winner_was_not_raced(write_study,
                                                                           tmp_path):
    """A starting configuration that fails (here a CNN too deep for the image size) leaves
    nothing to race a candidate against: the best completed trial is taken, and its
    decision says why there was no race (it said "(no confirmation)", as for a stage that
    asks for none)."""
    shallow = {"name": "depth", "trials": 1, "sampler": "grid", "pruner": "none",
               "confirm": {"top": 1}, "space": {"cnn.channels": [[8]]}}
    path = write_study({**EVIDENCE, "base": {"epochs": 3, "model": "cnn",
                                             "cnn": {"channels": [8] * 6}},
                        "stages": [shallow]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    (stage,) = read_stages(load_study(path), Workspace.at(home))
    assert [t.state.name for t in stage.trials] == ["FAIL", "COMPLETE"]
    assert stage.trials[0].user_attrs["failure"] == "error"  # its own failure
    assert re.fullmatch(r"trial 1: best val_acc \d\.\d{4} \(not raced: the incumbent failed, "
                        r"so there was nothing to confirm it against\)", stage.result.decision)


def test_a_stage_with_no_candidate_says_there_was_nothing_to_race(write_study, tmp_path):
    """Every search trial the incumbent's own settings (or pruned): the decision says there
    was nothing to race, not that a candidate failed its repeats; as the study's last stage
    it still trains the incumbent's first round for the final score's seed spread."""
    same = {"name": "same", "trials": 1, "sampler": "grid", "pruner": "none",
            "confirm": {"top": 1}, "space": {"lr": [1.0e-3]}}
    path = write_study({**EVIDENCE, "base": {"epochs": 5, "lr": 1.0e-3}, "stages": [same]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    (stage,) = read_stages(load_study(path), Workspace.at(home))
    assert stage.result.status == "kept incumbent" and stage.result.params == {}
    assert stage.result.decision.startswith("kept incumbent: nothing to race (no search trial")
    assert [t.user_attrs["role"] for t in stage.trials] == [
        "incumbent", "search", "confirm", "confirm"]


def test_a_decision_its_worker_died_before_mirroring_is_mirrored_before_the_final_score(
        write_study, tmp_path, monkeypatch):
    """The worker that finishes a stage's last trial mirrors its decision and the others go
    on (state.mirrors_decision). Where it dies first (a worker of `run --workers 2` killed
    after the race's last repeat), `run` mirrors it once every stage is decided: the
    stage's MLflow run ends with its decision, not RUNNING under a finished study."""
    import asl_sweep.search.study as study_module

    monkeypatch.setattr(study_module, "mirrors_decision", lambda study, trials: False)
    path = write_study({"stages": [{**TINY_STUDY["stages"][0], "trials": 1}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    ws = Workspace.at(home)
    client = MlflowClient(ws.tracking_uri)
    (stage_run,) = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.kind = 'stage'")
    assert stage_run.info.status == "FINISHED", stage_run.info.status
    assert stage_run.data.tags["decision"] and "winner_value" in stage_run.data.metrics
    assert attrs(optuna.load_study(study_name="tiny.search", storage=ws.storage))[StageKey.MIRRORED]


def test_a_space_that_can_only_hurt_keeps_the_incumbent(evidence_study):
    path, ws, _, out = evidence_study
    decay, rate = read_stages(load_study(path), ws)
    assert decay.result.status == "kept incumbent" and decay.result.params == {}
    # Raced: clearly worse after the first look (2 fresh repeats), so dropped there (by its
    # upper bound, or as futile where the halves' values spread more).
    assert re.search(r"kept incumbent: every candidate dropped; the best, trial \d+: -\d+\.\d pt "
                     r"over 2 fresh paired repeats, (upper bound -\d+\.\d pt <= min gain|futile)",
                     decay.result.decision)
    assert decay.result.evidence["rounds"] == 2
    assert decay.result.decision in out
    assert rate.carried == {}  # nothing adopted, nothing carried


def test_a_clearly_better_setting_is_adopted(evidence_study):
    path, ws, _, out = evidence_study
    _, rate = read_stages(load_study(path), ws)
    assert rate.result.status == "adopted" and rate.result.params == {"lr": 3.0e-3}
    assert re.search(r"adopted trial \d+: \+\d+\.\d pt over \d fresh paired repeats, lower "
                     r"bound \+\d+\.\d pt > min gain \+0\.0 pt \(95% one-sided paired t",
                     rate.result.decision)
    rounds = rate.result.evidence["rounds"]
    assert 2 <= rounds < 6  # decided before max_repeats
    assert len(rate.result.repeats) == 1 + rounds  # the search trial (shown) and the fresh ones
    # The search trial is not evidence: the value is the mean of the fresh repeats alone.
    fresh = rate.result.evidence["configs"][str(rate.result.trial)]
    assert sorted(fresh["values"]) == [str(r) for r in range(1, rounds + 1)]
    assert "search_value" in fresh
    assert rate.result.value == pytest.approx(np.mean(list(fresh["values"].values())))


def test_every_optuna_client_sees_a_search_trial_as_the_stage_best(evidence_study):
    """The repeats train in a study of their own beside the stage's, so Optuna's best trial
    of a stage (the API, `optuna best-trial`, optuna-dashboard) is never a repeat on another
    fold: here it is the trial each stage chose."""
    import json
    import wsgiref.util

    import optuna_dashboard

    path, ws, _, _ = evidence_study
    storage = optuna.storages.RDBStorage(ws.storage, skip_table_creation=True)
    app = optuna_dashboard.wsgi(storage)
    for view in read_stages(load_study(path), ws):
        name = f"tiny.{view.stage.name}"
        study = optuna.load_study(study_name=name, storage=storage)
        assert {t.user_attrs["role"] for t in study.trials} <= {"incumbent", "seed", "search"}
        repeats = optuna.load_study(study_name=f"{name}.repeats", storage=storage).trials
        assert repeats and {t.user_attrs["role"] for t in repeats} == {"confirm"}
        assert study.user_attrs["chosen_trial"] == view.result.trial
        assert study.best_trial.number == view.result.trial
        optuna_cli = str(Path(sys.executable).parent / "optuna")
        cli = subprocess.run([optuna_cli, "best-trial", "--study-name", name,
                              "--storage", ws.storage, "-f", "json"],
                             capture_output=True, text=True, timeout=120)
        assert json.loads(cli.stdout)["number"] == view.result.trial, cli.stderr
        environ: dict = {"PATH_INFO": f"/api/studies/{study._study_id}"}
        wsgiref.util.setup_testing_defaults(environ)
        said: list[str] = []
        body = b"".join(app(environ, lambda code, headers, *_, said=said: said.append(code)))
        assert said == ["200 OK"], body[:500]
        assert [t["number"] for t in json.loads(body)["best_trials"]] == [view.result.trial]
        # The stage's trials whole, as asl-sweep reads them: repeats numbered after its own.
        numbers = [t.number for t in view.trials]
        assert numbers == list(range(len(numbers)))
        assert set(view.result.repeats) - {view.result.trial} <= set(
            numbers[len(study.trials):])


def test_only_the_carried_configurations_keep_their_checkpoints(evidence_study, capsys):
    """keep_checkpoints: winners (the default): once a stage has decided, the best.pt of
    every trial but the repeats of the configuration it carries is deleted."""
    path, ws, _, _ = evidence_study
    client = MlflowClient(ws.tracking_uri)
    for view in read_stages(load_study(path), ws):
        kept = set(view.result.repeats)
        complete = [t for t in view.trials if t.state.name == "COMPLETE"]
        assert len(complete) > len(kept)  # something to delete
        for t in complete:
            files = {a.path for a in client.list_artifacts(t.user_attrs["mlflow_run_id"])}
            assert ("checkpoints" in files) == (t.number in kept), (t.number, files)
    assert main(["status", str(path), "--home", str(ws.home)]) == 0
    said = capsys.readouterr().out
    assert re.search(r"^disk: artifacts \d+\.\d MB, .*keep_checkpoints: winners", said,
                     re.MULTILINE)


def test_repeats_are_paired_and_their_folds_person_disjoint(evidence_study):
    path, ws, _, _ = evidence_study
    cfg = load_study(path)
    data = StudyData(cfg.data, ws.cache, "cpu", log=lambda _: None)
    for view in read_stages(cfg, ws):
        pairs = {}
        for t in view.trials:
            if t.user_attrs.get("role") in ("confirm", "incumbent") or t.number in view.plan[
                    "candidates"]:
                run = MlflowClient(ws.tracking_uri).get_run(t.user_attrs["mlflow_run_id"])
                repeat = t.user_attrs.get("repeat", 0)
                pairs.setdefault(repeat, set()).add((run.data.tags["seed"], outcome_of(t).fold))
                # The race compares each repeat cross-fitted over halves of its fold's
                # validation people (PARTITIONS splits): one image of the largest half moves
                # that half's val_acc by 1 / its images, and the average of all the halves'
                # scores by that over their number.
                val = data.splits.fold(outcome_of(t).fold)[1]
                codes = {g: i for i, g in enumerate(sorted(set(data.groups[val])))}
                unit = torch.tensor([codes[g] for g in data.groups[val]])
                split = partitions(len(codes))
                largest = max(max(int(row[unit].sum()), len(val) - int(row[unit].sum()))
                              for row in split)
                assert outcome_of(t).step == pytest.approx(1 / largest / (2 * PARTITIONS))
                assert 0.0 <= outcome_of(t).crossfit <= 1.0
        assert sorted(pairs) == list(range(view.result.evidence["rounds"] + 1))
        for repeat, combos in pairs.items():
            assert len(combos) == 1, (repeat, combos)  # every config: the same seed and fold
            ((seed, fold),) = combos
            assert int(seed) == repeat and fold == repeat
            train, val = data.splits.fold(fold)
            assert not set(data.groups[train]) & set(data.groups[val])


def test_no_test_image_reaches_training_or_selection(evidence_study):
    path, ws, seen, _ = evidence_study
    cfg = load_study(path)
    data = StudyData(cfg.data, ws.cache, "cpu", log=lambda _: None)
    test = set(data.splits.test.tolist())
    groups = data.groups
    # Every training the study did (stage 2's candidate, lr 3e-3, is stage 1's incumbent and
    # its repeats: found again, not trained again; search/reuse.py).
    assert len(seen) >= 12
    for _, train_index, val_index in seen:
        assert not test & set(train_index.tolist()) and not test & set(val_index.tolist())
        assert not set(groups[data.splits.test]) & set(groups[train_index])
        assert not set(groups[data.splits.test]) & set(groups[val_index])


def test_evaluate_reproduces_the_printed_test_accuracy(evidence_study, capsys):
    path, ws, _, out = evidence_study
    final = read_final(load_study(path), ws)
    line = f"final test accuracy of rate's configuration: {final['summary']}"
    assert out.count(line) == 1  # printed once, as it was scored
    assert out.count("final test accuracy") == 1
    assert main(["evaluate", str(path), "--home", str(ws.home)]) == 0
    printed = capsys.readouterr().out
    assert f"test accuracy: {final['summary']}" in printed
    # Why it fails: the test people worst first, in the terminal, the record and MLflow.
    people = final["breakdown"]["by_person"]
    assert people and [r["accuracy"] for r in people] == sorted(r["accuracy"] for r in people)
    assert f"worst test people of {len(people)} (accuracy, images): {people[0]['person']}" in printed
    assert "worst test people of" in out and "worst test classes:" in out
    client = MlflowClient(ws.tracking_uri)
    study_run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                   "tags.kind = 'study'")[0]
    tables = {a.path for a in client.list_artifacts(study_run.info.run_id, "test")}
    assert tables == {"test/by_person.json", "test/by_class.json", "test/confusion.json"}
    # The software that ran it, on the study's run.
    import platform

    import torch

    tags = study_run.data.tags
    assert tags["torch_version"] == torch.__version__ and tags["asl_sweep_version"]
    assert tags["python_version"] == platform.python_version() and tags["optuna_version"]
    assert main(["evaluate", str(path), "--home", str(ws.home), "--split", "val"]) == 0
    assert "biased upward" in capsys.readouterr().out


def test_commands_after_run_with_data_use_that_folder(write_study, tmp_path, image_folder, capsys):
    path = write_study({"stages": [{"name": "s", "trials": 1, "confirm": None,
                                    "space": {"lr": [3e-3]}}]})
    home = str(tmp_path / "mlruns")
    assert main(["run", str(path), "--home", home, "--data", str(image_folder)]) == 0
    capsys.readouterr()
    assert main(["report", str(path), "--home", home, "--out", str(tmp_path / "r")]) == 0
    assert str(image_folder) in (tmp_path / "r" / "report.md").read_text()
    assert main(["export", str(path), "--home", home, "--format", "onnx",
                 "--out", str(tmp_path / "e")]) == 0
    assert str(image_folder) in (tmp_path / "e" / "MODEL_CARD.md").read_text()
    assert main(["evaluate", str(path), "--home", home]) == 0
    capsys.readouterr()
    # Other photos given with --data: their names and contents are not the ones recorded.
    other = make_image_folder(tmp_path / "other", per_class=4)
    assert main(["report", str(path), "--home", home, "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"the images in {other} changed since the study ran (their names or contents" in err
    # A rerun with other data settings: one line naming both values, and no MLflow run left
    # RUNNING (before, MLflow refused to change a param and the study run stayed RUNNING).
    assert main(["run", str(path), "--home", home, "--data", str(image_folder),
                 "--set", "data.image_size=24"]) == 2
    err = capsys.readouterr().err
    assert "data.image_size: this study ran with 16, this command says 24" in err
    assert "--set study=NEW" in err
    client = MlflowClient(Workspace.at(home).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert all(r.info.status != "RUNNING" for r in runs)
    # The photos moved since: the line says so and what to pass (it was "data.root: ... is
    # not a folder", and --data with the new place was "this study ran with ..."); the same
    # files elsewhere are read there, other files are refused.
    moved = tmp_path / "moved"
    image_folder.rename(moved)
    assert main(["evaluate", str(path), "--home", home]) == 2
    assert (f"study tiny ran on the images in {image_folder}, which is not a folder now: pass "
            "--data with the folder they are in now") in capsys.readouterr().err
    assert main(["evaluate", str(path), "--home", home, "--data", str(moved)]) == 0
    # `run` too (a resume, or a worker whose node has its own copy at another path): the
    # folder is a place, the digest is the data
    capsys.readouterr()
    assert main(["run", str(path), "--home", home, "--data", str(moved)]) == 0
    assert (f"study tiny: reads its images in {moved} (it first read them in {image_folder})"
            in capsys.readouterr().out)
    next(moved.glob("A/*.png")).unlink()
    assert main(["evaluate", str(path), "--home", home, "--data", str(moved)]) == 2
    assert "changed since the study ran" in capsys.readouterr().err


def test_kill_9_during_confirmation_then_rerun_finishes_it(write_study, tmp_path):
    spec = {"base": {"epochs": 5}, "stages": [
        {**TWO_STAGES["stages"][0]},
        {**TWO_STAGES["stages"][1], "trials": 2, "fixed": {"epochs": 40},
         "confirm": {"top": 1, "repeats": 2}}]}
    path = write_study(spec)
    home = tmp_path / "mlruns"
    ws = Workspace.at(home)
    cmd = [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home", str(home)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        killed_local = running_trial(home / "optuna.db", "tiny.rate.repeats", proc,
                                     role="confirm")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    storage = optuna.storages.RDBStorage(ws.storage, skip_table_creation=True)
    before = read_stages(load_study(path), ws)[0].result
    killed = optuna.load_study(study_name="tiny.rate.repeats",
                               storage=storage).trials[killed_local]
    # The repeats are numbered after the stage's trials (store.stage_trials).
    killed_number = killed_local + attrs(optuna.load_study(
        study_name="tiny.rate", storage=storage))["plan"]["first_repeat"]

    assert main(cmd[3:]) == 0  # the rerun here, in this process: no process to start
    shape, rate = read_stages(load_study(path), ws)
    assert shape.result == before and len(shape.trials) == 4  # not rerun, decision unchanged
    assert sum(t.user_attrs.get("role") in ("seed", "search") and t.state.name == "COMPLETE"
               for t in rate.trials) == 2  # the budget, exactly
    lost = rate.trial(killed_number)
    assert lost.state.name == "FAIL"
    retry = [t for t in rate.trials if t.system_attrs.get("failed_trial") == killed_number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == killed.params
    for key in ("role", "confirms", "repeat"):
        assert retry[0].user_attrs[key] == killed.user_attrs[key]
    assert rate.result is not None and retry[0].number in {
        int(n) for c in rate.result.evidence["configs"].values() for n in c["trials"].values()}
    client = MlflowClient(ws.tracking_uri)
    assert client.get_run(lost.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert read_final(load_study(path), ws) is not None
    assert not np.isnan(read_final(load_study(path), ws)["mean"])


def test_resolution_is_searched_each_size_decoded_once_and_scored_at_its_own_size(
        write_study, tmp_path):
    from asl_sweep.search.evaluation import load_checkpoint
    from asl_sweep.tracking.tracker import Tracker

    path = write_study({"keep_checkpoints": "all", "stages": [{  # each trial's is read below
        "name": "size", "goal": "the resolution", "trials": 2, "sampler": "grid",
        "pruner": "none", "confirm": None, "space": {"image_size": [12, 20]}}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    ws = Workspace.at(home)
    (view,) = read_stages(load_study(path), ws)
    sizes = {}
    for t in view.trials:
        file = load_checkpoint(Tracker(ws), t)
        sizes[t.user_attrs["role"], t.params.get("image_size")] = file.spec.image_size
    # The incumbent at data.image_size (16), each searched size at its own.
    assert sizes == {("incumbent", None): 16, ("search", 12): 12, ("search", 20): 20}
    # One decoded cache per size, each decoded once.
    assert len(list(ws.cache.glob("images-*.pt"))) == 3
    final = read_final(load_study(path), ws)
    assert final["n_images"] > 0 and 0.0 <= final["mean"] <= 1.0


SLOW_SCORING = """
import sys, time
import asl_sweep.search.evaluation as study
real = study.score_repeats
def slow(*args, **kwargs):
    print("scoring", flush=True)
    time.sleep(2)
    return real(*args, **kwargs)
study.score_repeats = slow
from asl_sweep.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_the_final_scoring_exits_130_and_a_rerun_scores(write_study, tmp_path):
    path = write_study({"stages": [{"name": "s", "trials": 1, "confirm": None,
                                    "space": {"lr": [3e-3]}}]})
    home = tmp_path / "mlruns"
    args = ["run", str(path), "--home", str(home)]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SCORING, *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("scoring"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    # No trial was running: the line does not say one was queued again.
    assert "nothing recorded was lost" in err and "trial is queued" not in err, err
    assert read_final(load_study(path), Workspace.at(home)) is None
    assert main(args) == 0
    assert read_final(load_study(path), Workspace.at(home))["n_images"] > 0


def test_a_data_error_comes_before_the_stores_and_binds_nothing(write_study, tmp_path, capsys,
                                                                image_folder):
    path = write_study({"stages": [{"name": "s", "trials": 1, "confirm": None,
                                    "space": {"lr": [3e-3]}}]})
    home = tmp_path / "mlruns"
    missing = tmp_path / "typo"
    assert main(["run", str(path), "--home", str(home), "--data", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    # Nothing was created or bound: the stores were never opened.
    assert not (home / "optuna.db").exists() and not (home / "mlflow.db").exists()
    assert main(["run", str(path), "--home", str(home), "--data", str(image_folder)]) == 0


def test_a_study_with_no_finished_trial_binds_to_the_data_of_the_run_that_trains(
        write_study, tmp_path):
    from asl_sweep.runtime.errors import StoreError
    from asl_sweep.search.optuna_api import study_id_of
    from asl_sweep.search.record import bind
    from asl_sweep.search.state import read as attrs
    from asl_sweep.search.store import optuna_storage

    storage = optuna_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    first = load_study(write_study({"data": {"image_size": 16}}))
    bind(storage, first, log=lambda _: None)  # a first run that trained nothing
    said = []
    changed = load_study(write_study({"data": {"image_size": 24}}, name="b.yaml"))
    record, _, keys = bind(storage, changed, log=said.append)
    assert attrs(record)["data"]["image_size"] == keys["data"]["image_size"] == 24
    assert "no trial has finished yet" in said[0] and "data.image_size" in said[0]
    # A finished trial of another study whose name starts with this one's (study tiny.b,
    # stage search) is not one of this study's: it still binds.
    neighbour = optuna.create_study(study_name="tiny.b.search", storage=storage)
    neighbour.add_trial(optuna.trial.create_trial(value=0.5))
    record, _, keys = bind(storage, first, log=said.append)
    assert keys["data"]["image_size"] == 16 and len(said) == 2
    # Once a trial of the study is training (another worker, on the data it read) or has
    # finished, its data is fixed.
    stage = optuna.create_study(study_name="tiny.search", storage=storage)
    training = storage.create_new_trial(study_id_of(stage))
    with pytest.raises(StoreError, match="this study ran with 16, this command says 24"):
        bind(storage, changed, log=lambda _: None)
    storage.set_trial_state_values(training, optuna.trial.TrialState.COMPLETE, [0.5])
    with pytest.raises(StoreError, match="this study ran with 16, this command says 24"):
        bind(storage, changed, log=lambda _: None)
    # The built-in set (no root) is said as such: it was "this study ran with None".
    photos = load_study(write_study({"data": {"root": str(tmp_path)}}, name="c.yaml"))
    with pytest.raises(StoreError, match=r"data.root: this study ran with the built-in "
                                         r"synthetic letters \(no --data\), this command says '"):
        bind(storage, photos, log=lambda _: None)


def test_a_run_keeps_the_settings_it_read_for_the_commands_that_name_the_study(write_study,
                                                                            tmp_path):
    """`asl-sweep report NAME` where the YAML is not at hand: the record keeps the settings
    the last run read (its YAML and --set), the ones the study's stages ran with."""
    from asl_sweep.search.record import bind, recorded_study
    from asl_sweep.search.store import optuna_storage
    from asl_sweep.settings.studyfile import build_study

    storage = optuna_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    path = write_study({})
    assert recorded_study(storage, "tiny") is None  # nothing run
    first = load_study(path, ["stages.0.trials=5", "base.lr=0.02"])
    bind(storage, first, log=lambda _: None)
    assert build_study(recorded_study(storage, "tiny"), "recorded") == first
    later = load_study(path, ["stages.0.trials=7"])
    bind(storage, later, log=lambda _: None)
    assert build_study(recorded_study(storage, "tiny"), "recorded") == later
    # The command's own --set applies on top; a stage's Optuna study (or another program's)
    # is no study.
    assert build_study(recorded_study(storage, "tiny"), "recorded",
                       ["base.epochs=9"]).base.epochs == 9
    optuna.create_study(study_name="tiny.search", storage=storage)
    assert recorded_study(storage, "tiny.search") is None
    # A study an older asl-sweep ran (its record keeps no settings): say to give its YAML.
    from asl_sweep.runtime.errors import ConfigError
    from asl_sweep.search.state import RecordKey, SummaryKey, open_shared, write

    record, _ = open_shared("older", storage)
    record.set_user_attr(SummaryKey.KIND, "study record")
    write(record, RecordKey.DATA, {})
    with pytest.raises(ConfigError, match="older: no such study file; study older is "
                                          "recorded in this store, but its runs kept no"):
        recorded_study(storage, "older")


def test_a_study_with_no_finished_trial_binds_to_its_files_as_they_are_now(write_study,
                                                                            tmp_path):
    """A photo folder tidied after a `train` (which finishes no trial): the study binds to
    the files as they are now, as it does to changed data settings; once a trial of it has
    finished, changed files are refused."""
    from asl_sweep.runtime.errors import StoreError
    from asl_sweep.search.optuna_api import study_id_of
    from asl_sweep.search.record import bind, check_digest
    from asl_sweep.search.state import read as attrs
    from asl_sweep.search.store import optuna_storage

    storage = optuna_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    cfg = load_study(write_study({}))
    record, _, keys = bind(storage, cfg, log=lambda _: None)
    check_digest(record, cfg, "before", keys, storage)
    said = []
    check_digest(record, cfg, "after", None, storage, said.append)
    assert attrs(record)["digest"] == "after" and len(said) == 1
    assert said[0].startswith("study tiny: no trial has finished yet, so it binds to the images")
    # The commands that read a study back never rebind (they give no storage).
    with pytest.raises(StoreError, match="changed since the study ran"):
        check_digest(record, cfg, "tidied again")
    # A trial training now (another worker, its own copy of the files) or finished: refused.
    stage = optuna.create_study(study_name="tiny.search", storage=storage)
    training = storage.create_new_trial(study_id_of(stage))
    with pytest.raises(StoreError, match="changed since the study ran"):
        check_digest(record, cfg, "another copy", None, storage, said.append)
    storage.set_trial_state_values(training, optuna.trial.TrialState.COMPLETE, [0.5])
    with pytest.raises(StoreError, match="changed since the study ran"):
        check_digest(record, cfg, "tidied again", None, storage, said.append)
    assert attrs(record)["digest"] == "after" and len(said) == 1


def test_export_and_evaluate_of_an_unfinished_study_name_what_is_missing(write_study, tmp_path,
                                                                        capsys):
    home = str(tmp_path / "mlruns")
    # The study's first stage has run (a run that was stopped after it, or is still going).
    first = write_study({"stages": TWO_STAGES["stages"][:1]}, name="first.yaml")
    assert main(["run", str(first), "--home", home]) == 0
    path = write_study(TWO_STAGES)
    capsys.readouterr()
    for command in ("export", "evaluate"):
        assert main([command, str(path), "--home", home]) == 2
        err = capsys.readouterr().err
        assert "is not finished (stage rate has not decided)" in err
        assert "--stage shape" in err
    assert main(["evaluate", str(path), "--home", home, "--stage", "shape"]) == 0


# Stage 1 carries a working MLP; stage 2 switches to a CNN that cannot learn (a rate of 1e-7):
# the MLP runs beside it as a second incumbent and the stage keeps it, on the race's evidence.
SWITCH = {"data": {"synthetic": {"per_class": 24}}, "base": {"epochs": 5}, "stages": [
    {"name": "mlp", "goal": "a working MLP", "trials": 1, "sampler": "grid", "pruner": "none",
     "confirm": None, "space": {"lr": [3.0e-3]}},
    {"name": "cnn", "goal": "a CNN that cannot learn", "trials": 1, "sampler": "grid",
     "pruner": "none", "confirm": {"top": 1}, "image_size": 12,
     "fixed": {"model": "cnn", "hidden": [], "lr": 1.0e-7}, "space": {"cnn.kernel": [3]}},
]}


def test_a_new_family_is_adopted_only_if_it_beats_the_previous_one(write_study, tmp_path):
    from asl_sweep.search.evaluation import load_checkpoint

    path = write_study(SWITCH)
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    ws = Workspace.at(home)
    mlp, cnn = read_stages(load_study(path), ws)
    previous = [t for t in cnn.trials if t.user_attrs.get("previous_family")
                and t.user_attrs["role"] == "incumbent"]
    assert len(previous) == 1  # the second incumbent: the MLP the first stage carried
    first = previous[0]
    assert cnn.plan["incumbent"] == first.number  # candidates race against it
    assert cnn.result.status == "kept incumbent" and cnn.result.trial == first.number
    assert cnn.result.decision.startswith(f"kept the previous family (mlp, trial {first.number})")
    assert cnn.result.config == mlp.result.config  # the MLP's configuration, carried on
    # The final configuration, scored on test and exported, is the MLP, at its own size.
    final = read_final(load_study(path), ws)
    assert set(final["trials"]) == set(cnn.result.repeats)
    from asl_sweep.tracking.tracker import Tracker
    files = [load_checkpoint(Tracker(ws), cnn.trial(n)) for n in cnn.result.repeats]
    assert {f.config.model for f in files} == {"mlp"}
    assert {f.spec.image_size for f in files} == {load_study(path).data.image_size}


def test_status_shows_the_budget_run_and_a_larger_one_says_what_to_do(write_study, tmp_path,
                                                                      capsys):
    path = write_study()  # the tiny study: 4 trials in the YAML
    home = str(tmp_path / "mlruns")
    assert main(["run", str(path), "--home", home, "--trials", "1"]) == 0
    capsys.readouterr()
    assert main(["status", str(path), "--home", home]) == 0
    assert "(budget 1, plus the incumbent" in capsys.readouterr().out
    assert main(["run", str(path), "--home", home, "--trials", "3"]) == 0
    out = capsys.readouterr().out
    assert ("stage search: finished with a budget of 1 trials; --trials 3 does not reopen a "
            "decided stage") in out and "--set study=tiny-more --trials 3" in out
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    assert len(study.trials) == 2  # nothing added: the incumbent and 1


def test_a_worker_that_loses_a_take_keeps_its_pace_one_that_ran_a_trial_starts_over(
        monkeypatch):
    """The idle pause between looks (search/study.py, Idle): a try that found every trial it
    read taken by others waits the pause as it stood (it does not look again at once, nor
    start over at the shortest pause); a trial run starts the pause over."""
    from types import SimpleNamespace

    from asl_sweep.search import study

    slept = []
    monkeypatch.setattr(study.signals, "pause", slept.append)
    idle = study.Idle(SimpleNamespace(workers_seen=64))
    trials = [optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING)]
    for _ in range(3):
        idle.wait(trials)
    paced = idle.seconds
    assert paced > 4.0 and len(slept) == 3
    idle.after_take(None, trials)  # lost: waits, then looks
    assert len(slept) == 4 and slept[-1] >= 0.75 * paced and idle.seconds >= paced
    idle.after_take(7, trials)  # ran trial 7
    assert len(slept) == 4 and idle.seconds == 4.0


def test_a_worker_looks_for_dead_trials_at_once_in_its_first_stage_after_a_pause_in_later_ones(
        tmp_path, monkeypatch):
    """_close_lost_runs: a process's first look for trials whose worker died is at once (a
    rerun after kill -9 need not wait); its first look at a later stage comes after the usual
    pause (a fleet reaching a stage together read its trials 64 at once), and that one still
    looks at every lost trial of the stage."""
    from types import SimpleNamespace

    from asl_sweep.search import study

    url = f"sqlite:///{tmp_path}/optuna.db"
    first, later = (optuna.create_study(study_name=n, storage=url) for n in ("first", "later"))
    session = SimpleNamespace(workers_seen=2, lost_looked={}, lost_swept=set(), began=None,
                              closed_runs=set(), mirror=None)
    assert study._close_lost_runs(session, first) == []  # looked, at once
    assert study._close_lost_runs(session, first) is None  # not again within LOOK_S
    assert study._close_lost_runs(session, later) is None  # a later stage: not at once
    now = study.time.monotonic()
    monkeypatch.setattr(study.time, "monotonic", lambda: now + 1.3 * study.LOOK_S)
    assert study._close_lost_runs(session, later) == []
    assert session.lost_swept == {"first", "later"}


@pytest.mark.slow
def test_a_study_resumes_only_from_the_settings_it_started_with(write_study, tmp_path,
                                                               capsys):
    """A stage stopped mid-search (SIGTERM) and rerun with other trainer settings would rank
    trials trained two ways; a finished study rerun with `--epochs 1` (a quick look, say)
    would print its old results as if they were the command's. The first is one line, exit
    2, nothing runs; the second says what the stages were decided from; where and how often
    a training saves (device, checkpoints) may change on a resume."""
    spec = {"data": {"synthetic": {"per_class": 8}, "image_size": 12},
            "base": {"hidden": [32], "epochs": 40, "batch_size": 16},
            "stages": [{"name": "search", "trials": 2, "sampler": "random", "pruner": "none",
                        "confirm": None, "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}]}
    path = write_study(spec)
    home = tmp_path / "mlruns"
    args = ["run", str(path), "--home", str(home)]
    # The stop is a real process's; the reruns after it run here (no process to start).
    interrupt_a_trial([sys.executable, "-m", "asl_sweep.cli", *args], home / "optuna.db",
                      "tiny.search", role="search")

    assert main([*args, "--set", "base.batch_size=8"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: study tiny, stage search: its trials so far started from "
                           "base.batch_size 16, but this command says 8")
    assert "restore them to resume it, or start a new study with --set study=NEW" in line
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    assert not any(t.state.name == "RUNNING" for t in study.trials)

    assert main([*args, "--set", "base.device=cpu", "--set", "base.checkpoint_every=3",
                 "--trials", "3"]) == 0
    resumed = capsys.readouterr().out
    assert "decided from" not in resumed
    # A larger budget on a resume (or a worker started by hand) says it changed the stage's.
    assert ("stage search: budget 2 -> 3 trials, as this command asks (--trials or the study "
            "file), for every worker of the stage\n") in resumed

    assert main([*args, "--epochs", "1"]) == 0
    quick_look = capsys.readouterr().out
    assert ("stage search: decided from base.epochs 40, but this command says 1; a decided "
            "stage is not reopened") in quick_look
    assert "--set study=tiny-new" in quick_look

    spec["stages"].append({"name": "more", "trials": 1, "sampler": "random", "pruner": "none",
                           "confirm": None, "space": {"weight_decay": [0.0, 1e-4]}})
    path = write_study(spec)
    assert main([*args, "--epochs", "1"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: study tiny, stage more: the stages before it were decided "
                           "from other settings (stage search: base.epochs 40, but this "
                           "command says 1)")
    assert not any(s.study_name == "tiny.more" and s.n_trials
                   for s in optuna.get_all_study_summaries(Workspace.at(home).storage))
