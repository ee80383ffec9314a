"""final_model: refit: the final repeats trained again on every non-test person, recorded
as MLflow runs, scored beside the repeats, and what export writes."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from asl_sweep.cli import main
from asl_sweep.results.predict import open_model
from asl_sweep.results.readback import read_final
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.plan import plan_lines
from asl_sweep.search.session import open_data
from asl_sweep.settings.studyfile import load_study

STUDY = (
    "study: tinyrefit\n"
    "data: {synthetic: {per_class: 24, signers: 12}, image_size: 16}\n"
    "base: {hidden: [32], epochs: 3, batch_size: 16, device: cpu}\n"
    "stages:\n"
    "  - {name: search, trials: 2, sampler: random, confirm: {top: 1, repeats: 2},\n"
    "     space: {lr: {low: 1e-3, high: 1e-2, log: true}}}\n")


def refit_runs(client: MlflowClient, ws: Workspace) -> list:
    experiment = client.get_experiment_by_name("tinyrefit").experiment_id
    return client.search_runs([experiment], "tags.kind = 'refit'")


@pytest.mark.slow
def test_refit_trains_each_repeat_on_every_non_test_person_and_is_what_export_writes(
        tmp_path, capsys):
    path, home = tmp_path / "study.yaml", tmp_path / "mlruns"
    path.write_text(STUDY.replace("epochs: 3", "epochs: 40"))  # refits long enough to overlap
    run = ["run", str(path), "--home", str(home)]
    export = ["export", str(path), "--home", str(home), "--format", "torchscript",
              "--out", str(tmp_path / "out"), "--set", "final_model=refit"]
    assert main(run) == 0  # final_model: ensemble, the default
    ws = Workspace.at(home)
    assert "refit" not in read_final(load_study(path), ws)
    # Set after the run: nothing on record to export, one line saying what to run.
    capsys.readouterr()
    assert main(export) == 2
    assert "no refit of its final repeats is on record" in capsys.readouterr().err

    # Two runs at once (a fleet's workers restarted with the setting): one trains and
    # scores the refits, the other waits for them (each trained every one: 4 refit runs).
    procs = [subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", *run, "--set",
                               "final_model=refit"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    said = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], said
    trained = [out for out, _ in said if "refit of trial" in out]
    assert len(trained) == 1, said  # the other waited for it, or came after it
    assert "refit on every non-test person, the exported model (final_model: refit)" in trained[0]
    cfg = load_study(path, ["final_model=refit"])
    final = read_final(cfg, ws)
    refit = final["refit"]
    assert refit["members"] == final["trials"] and len(refit["runs"]) == 2
    # The dry run counted them: the fixed rule's 2 repeats, each trained again.
    assert plan_lines(cfg, [])[-2].endswith(
        "over its 2 repeats (final_model: refit); each repeat trained again on every non-test "
        "person: 2 more trainings of 40 epochs")
    client = MlflowClient(ws.tracking_uri)
    runs = {r.info.run_id: r for r in refit_runs(client, ws)}
    assert set(runs) == set(refit["runs"])
    data = open_data(cfg, ws)
    for fold, run_id in enumerate(refit["runs"]):  # repeat r on fold r
        r = runs[run_id]
        assert r.info.status == "FINISHED" and r.data.tags["refit_of"] == str(
            refit["members"][fold])
        part = data.split(16, fold)  # trained on the fold's training and validation images
        assert int(r.data.params["train_images"]) == len(part.train_index) + len(part.val_index)
        # per epoch: training figures only (its validation people are in its training)
        assert len(client.get_metric_history(run_id, "train_acc")) == 40
        assert not client.get_metric_history(run_id, "val_acc")
    experiment = client.get_experiment_by_name("tinyrefit").experiment_id
    study_run = client.search_runs([experiment], "tags.kind = 'study'")[0]
    assert study_run.data.metrics["test_acc_refit"] == pytest.approx(refit["mean"])

    assert main([*run, "--set", "final_model=refit"]) == 0  # a rerun trains no refit again
    assert len(refit_runs(client, ws)) == 2
    assert main(export) == 0
    test = data.test(16)
    probabilities = open_model(str(tmp_path / "out" / "model.torchscript.pt"), home)(test.x)
    accuracy = (np.asarray(probabilities).argmax(1) == test.y.numpy()).mean()
    assert accuracy == pytest.approx(refit["mean"], abs=1e-9)
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert "the refit of trials" in card and "final_model: refit" in card


@pytest.mark.slow
def test_a_run_killed_while_it_refits_leaves_no_run_open_and_a_rerun_trains_it_again(
        tmp_path):
    """SIGKILL while the refit trains (nothing can close its MLflow run): the rerun closes
    that run as stopped, trains the refit again and exports it."""
    import signal
    import sqlite3
    import time

    path, home = tmp_path / "study.yaml", tmp_path / "mlruns"
    path.write_text(STUDY.replace("epochs: 3", "epochs: 150").replace(
        "confirm: {top: 1, repeats: 2}", "confirm: null") + "final_model: refit\n")
    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "run", str(path),
                             "--home", str(home)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    query = ("SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE "
             "t.key = 'kind' AND t.value = 'refit' AND r.status = 'RUNNING'")
    try:
        deadline = time.time() + 120
        while True:
            assert time.time() < deadline and proc.poll() is None, "no refit caught training"
            time.sleep(0.05)
            try:
                with sqlite3.connect(f"file:{home / 'mlflow.db'}?mode=ro", uri=True,
                                     timeout=1) as conn:
                    if conn.execute(query).fetchall():
                        break
            except sqlite3.Error:  # not there yet
                continue
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert main(["run", str(path), "--home", str(home)]) == 0
    ws = Workspace.at(home)
    final = read_final(load_study(path), ws)
    runs = refit_runs(MlflowClient(ws.tracking_uri), ws)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    stopped = next(r for r in runs if r.info.status == "KILLED")
    assert "trained again by a later run" in stopped.data.tags["error"]
    assert final["refit"]["runs"] == [r.info.run_id for r in runs if r.info.status == "FINISHED"]


@pytest.mark.slow
def test_a_repeat_that_stopped_early_is_refit_for_its_best_epochs_not_every_epoch(tmp_path):
    """With early_stop nothing stops a refit (its validation people are in its training):
    a repeat stopped at a few of 60 epochs was refit for all 60. It trains for its repeat's
    best epoch's count, early stopping off, as the usual refit after early stopping does."""
    path, home = tmp_path / "study.yaml", tmp_path / "mlruns"
    path.write_text(STUDY.replace("epochs: 3", "epochs: 60, early_stop: {patience: 3}")
                    + "final_model: refit\n")
    assert main(["run", str(path), "--home", str(home)]) == 0
    ws = Workspace.at(home)
    client = MlflowClient(ws.tracking_uri)
    experiment = client.get_experiment_by_name("tinyrefit").experiment_id
    best = {r.data.tags["trial_number"]: int(r.data.metrics["best_epoch"])
            for r in client.search_runs([experiment], "tags.kind = 'trial'")}
    runs = refit_runs(client, ws)
    assert len(runs) == 2
    for r in runs:
        trained = len(client.get_metric_history(r.info.run_id, "train_acc"))
        assert trained == int(r.data.params["epochs"]) == best[r.data.tags["refit_of"]] < 60
        assert r.data.params["early_stop"] == "off"


@pytest.mark.slow
def test_a_refit_of_images_without_people_says_images_not_people(tmp_path, image_folder,
                                                                 capsys):
    """A folder with no group_pattern has no people: its refit trains on the training and
    validation images, and its line and MLflow note said people."""
    path, home = tmp_path / "study.yaml", tmp_path / "mlruns"
    path.write_text(STUDY.replace("{synthetic: {per_class: 24, signers: 12}, image_size: 16}",
                                  f"{{root: {image_folder}, image_size: 16}}")
                    + "final_model: refit\n")
    assert main(["run", str(path), "--home", str(home), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("the training and validation images of fold 0") == 2
    assert "validation people" not in out
    ws = Workspace.at(home)
    notes = [r.data.tags["mlflow.note.content"]
             for r in refit_runs(MlflowClient(ws.tracking_uri), ws)]
    assert len(notes) == 2 and all("every non-test image" in n for n in notes)


@pytest.mark.slow
def test_the_refits_of_a_run_with_workers_train_on_every_thread_the_workers_left(tmp_path):
    """`run --workers 2` shares the cores: each worker, `run` too, trains on one thread of
    two. Once every stage is decided the workers leave, and the refits, `run`'s alone, ran
    on its one thread while the other core idled. They train on the threads `run` had."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}
    own = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             env=env, capture_output=True, text=True, check=True).stdout)
    if own < 2:
        pytest.skip("one CPU thread here: nothing for the workers to leave")
    path, home = tmp_path / "study.yaml", tmp_path / "mlruns"
    path.write_text(STUDY + "final_model: refit\n")
    done = subprocess.run([sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home",
                           str(home), "--workers", "2"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ws = Workspace.at(home)
    runs = refit_runs(MlflowClient(ws.tracking_uri), ws)
    assert len(runs) == 2 and {r.data.params["threads"] for r in runs} == {str(own)}
    each = int(re.search(r"2 workers side by side, (\d+) threads? each", done.stdout)[1])
    assert each < own  # a worker's share (1 of 2 cores here), not what the refits had
    assert f"the final test on {own} threads" in done.stdout


def test_on_photos_without_people_the_refit_and_the_person_metric_say_images(
        tmp_path, image_folder, capsys):
    """A folder with no group_pattern: the run said "refit on every non-test person" and
    ranked trials "by val_person_q25", and its stage headers, trial lines and decisions
    printed val_acc's values as val_person_q25, where the split and the metric are by
    image."""
    path, home = tmp_path / "study.yaml", tmp_path / "mlruns"
    path.write_text(STUDY.replace("stages:\n", "final_model: refit\nstages:\n").replace(
        "trials: 2,", "trials: 2, metric: val_person_q25,"))
    assert main(["run", str(path), "--home", str(home), "--data", str(image_folder),
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "refit on every non-test image (2 models, probabilities averaged)" in out
    assert "non-test person" not in out
    said = "val_acc (as val_person_q25: the images name no people)"
    assert f"top trials by {said} (best epoch" in out, out
    assert f"trials + confirmation of the top 1, {said}]" in out
    # Every other line prints the values under the name they are: val_acc.
    lines = [line for line in out.replace(said, "").splitlines() if "group_pattern" not in line]
    assert not [line for line in lines if "val_person_q25" in line], out
    assert "train_acc  val_acc  params" in out  # ranked by val_acc: no second column of it
    assert re.search(r"trial 1 complete val_acc [01]\.\d{3}", out), out
    cfg = load_study(path, [f"data.root={image_folder}"])
    assert plan_lines(cfg, [])[-2].endswith("each repeat trained again on every non-test "
                                            "image: 2 more trainings of 3 epochs")
