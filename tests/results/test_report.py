"""The report, read back from the stores: a section per stage, images that exist, logged to
the study's MLflow run."""

import re
import subprocess
import sys

from mlflow.tracking import MlflowClient

from asl_sweep.cli import main
from asl_sweep.runtime.workspace import Workspace
from tests.search.test_study import TWO_STAGES


def test_report_has_a_section_per_stage_and_its_images_exist(write_study, tmp_path):
    path = write_study(TWO_STAGES)
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    out = tmp_path / "report"
    assert main(["report", str(path), "--home", str(home), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    plain = out / "plain.txt"
    plain.write_text("")  # what any other output gets here (the umask's mode)
    for name in ("report.md", "report.html"):
        assert (out / name).stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert "## Stage 1: shape" in md and "## Stage 2: rate" in md
    assert md.count("| trial | role | state | parameters | train acc |") == 2
    assert "Human baseline (trial 1): the student reported 0.329" in md and "Diagnosis:" in md
    assert "Final test accuracy of rate's configuration" in md
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert any("confusion" in i for i in images) and any("curves" in i for i in images)
    # The per-class table says whose it is (the exported model's, as the confusion matrix;
    # the per-class line below it is the repeats' mean).
    assert "Per class, the exported model (" in md and "on the test split, as in the" in md
    # What fails: the per-person table (the mean over repeats) and the failure gallery.
    assert "### Where it fails: the test people, worst first" in md
    assert "### What fails, as pictures" in md and any("failures" in i for i in images)
    for image in images:
        assert (out / image).stat().st_size > 1000, image
    # Three trials a stage say nothing about parameter importance: no chart drawn from them.
    assert not any("importance" in i for i in images)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(images)
    client = MlflowClient(Workspace.at(home).tracking_uri)
    exp = client.get_experiment_by_name("tiny")
    (study_run,) = client.search_runs([exp.experiment_id], "tags.kind = 'study'")
    logged = {a.path for a in client.list_artifacts(study_run.info.run_id, "report")}
    assert "report/report.html" in logged


def test_report_before_any_run_is_a_clear_error(write_study, tmp_path, capsys):
    path = write_study()
    assert main(["report", str(path), "--home", str(tmp_path / "mlruns")]) == 2
    assert "nothing recorded yet" in capsys.readouterr().err


def test_report_keeps_optunas_warnings_out(write_study, tmp_path):
    import warnings

    from asl_sweep.results.report import write_report
    from asl_sweep.settings.studyfile import load_study

    path = write_study({"base": {"epochs": 2}, "stages": [{
        "name": "s", "trials": 6, "sampler": "random", "pruner": "none", "confirm": None,
        "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "hidden": [[32], [16, 16]],
                  "dropout.2": {"low": 0.0, "high": 0.5, "when": {"hidden": [[16, 16]]}}}}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_report(load_study(path), Workspace.at(home), tmp_path / "r", log=lambda _: None)
    from optuna.exceptions import ExperimentalWarning

    said = [str(w.message) for w in caught if "optuna" in w.filename
            and not issubclass(w.category, ExperimentalWarning)]  # the CLI filters those
    assert not said, said
    assert any("importance" in p.name for p in (tmp_path / "r").iterdir())


def test_the_trial_table_names_every_role_and_a_pruned_trials_epochs():
    import optuna
    from optuna.trial import TrialState

    from asl_sweep.results.report import ROLE, _acc

    assert all(ROLE.values())  # a search trial says "search", not an empty cell
    pruned = optuna.trial.create_trial(state=TrialState.PRUNED, params={}, distributions={},
                                       intermediate_values={1: 0.41, 2: 0.52, 3: 0.47})
    assert _acc(pruned, "val_acc", reported="val_acc") == "0.520 (pruned)"
    assert _acc(pruned, "val_acc", "last", "val_acc") == "0.470 (epoch 3)"
    assert _acc(pruned, "train_acc", reported="val_acc") == "-"  # it reported val_acc only


def test_a_study_without_student_settings_has_no_student_columns(write_study, tmp_path,
                                                                  capsys):
    path = write_study({"stages": [{"name": "search", "trials": 2, "sampler": "grid",
                                    "pruner": "none", "confirm": None,
                                    "space": {"lr": [3e-3, 1e-2]}}]})
    home, out = tmp_path / "mlruns", tmp_path / "report"
    assert main(["run", str(path), "--home", str(home)]) == 0
    assert main(["report", str(path), "--home", str(home), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| stage | goal | decision | validation (mean of repeats) | carried |" in md
    assert "student" not in md.lower()
    # A home others may only read (a shared results folder, a real read-only bind mount):
    # the report is written where --out says, and the line says its copy on the MLflow run
    # is what is missing (it was an error, exit 2, though the report was written).
    if subprocess.run(["mount", "--bind", str(home), str(home)],
                      capture_output=True).returncode != 0:
        return  # needs root: the rest of this test stands
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(home)], check=True)
        done = subprocess.run([sys.executable, "-m", "asl_sweep.cli", "report", str(path),
                               "--home", str(home), "--out", str(tmp_path / "elsewhere")],
                              capture_output=True, text=True, timeout=300)
        capsys.readouterr()
        home_only = main(["report", str(path), "--home", str(home)])  # fails before writing
    finally:
        subprocess.run(["umount", "-l", str(home)], capture_output=True)
    # without --out, the line said to make the folder writable, not that --out writes elsewhere
    assert home_only == 2
    assert capsys.readouterr().err.strip().endswith(
        "then rerun the same command; or write them to another folder with --out DIR")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(not kept on the study's MLflow run: " in done.stdout
    assert "(Read-only file system)" in done.stdout or "readonly" in done.stdout, done.stdout
    assert (tmp_path / "elsewhere" / "report.html").is_file()


def test_the_trial_table_shows_what_a_stage_ranks_on_where_accuracy_is_not_it(write_study,
                                                                               tmp_path):
    """A stage on a person metric over two folds ranks its trials by their mean: the table
    shows that value beside fold 0's accuracies, which alone did not say why."""
    import optuna

    path = write_study({"stages": [{"name": "search", "trials": 1, "sampler": "grid",
                                    "pruner": "none", "confirm": None, "folds": 2,
                                    "metric": "val_person_mean", "space": {"lr": [1e-2]}}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    assert main(["report", str(path), "--home", str(home), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| trial |"))
    assert header.endswith("| val_person_mean (best epoch; the mean of 2 folds but for "
                           "repeats, one fold each) |")
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    for t in study.trials:
        row = next(line for line in md.splitlines() if line.startswith(f"| {t.number} |"))
        assert row.endswith(f"| {t.value:.3f} |")


def test_a_partial_curve_is_labelled_by_what_happened_to_its_trial():
    """A report written while the study runs called a running trial's best epoch so far
    '(pruned)', and so a trial stopped by Ctrl-C or a failure."""
    import optuna
    from optuna.trial import TrialState

    from asl_sweep.results.report import _acc

    said = {}
    for state in (TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL):
        trial = optuna.trial.create_trial(state=state, intermediate_values={1: 0.5, 2: 0.7})
        said[state.name] = (_acc(trial, "val_acc", reported="val_acc"),
                            _acc(trial, "val_acc", "last", "val_acc"))
    assert said == {"PRUNED": ("0.700 (pruned)", "0.700 (epoch 2)"),
                    "RUNNING": ("0.700 (so far)", "0.700 (epoch 2)"),
                    "FAIL": ("0.700 (stopped)", "0.700 (epoch 2)")}
