"""The plan `run --dry-run` prints: what each stage searches and the trainings it plans."""

import subprocess
import sys
from pathlib import Path

import torch

from asl_sweep.cli import main
from asl_sweep.data.studydata import StudyData
from asl_sweep.runtime.machine import usable_cpus
from asl_sweep.search.plan import input_lines, plan_lines
from asl_sweep.settings.studyfile import load_study

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"


def test_the_plan_says_each_stages_search_and_its_trainings():
    cfg = load_study(SWEEPS / "quick.yaml")
    lines = plan_lines(cfg, input_lines(cfg))
    assert lines[1] == ("data: built-in synthetic letters (100/class, 40 signers): 900 images "
                        "(A, B, C, D, E, F, G, H, I), 32px; 486 train / 180 val / 234 test "
                        "images, person-disjoint (21 / 9 / 10 signers), 9 classes, 3 "
                        "validation fold(s) (test scored once, after the search)")
    assert lines[2].startswith("stage 1 of 1 architecture: larger filters for a small CNN")
    assert lines[3] == "  searches: cnn.kernel in [5, 7]; lr from 0.002 to 0.008, log"
    # the incumbent, 3 trials, then 2 to 4 fresh repeats of the candidate and the incumbent
    # (the demo trains 8 when its race ends at the first look)
    assert lines[4] == ("  trainings: 8 to 12 of 12 epochs: the incumbent + 3 search trials, "
                        "then the top 1 raced against the incumbent on 2 to 4 fresh paired "
                        "repeats each")
    # The final: the test scored once over the configuration's trial and its 2 to 4 rounds.
    assert lines[-2] == ("final: architecture's configuration scored once on the test split "
                         "over its 3 to 5 repeats (final_model: ensemble)")
    assert lines[-1].startswith("in all: 8 to 12 trainings")


def test_the_plan_counts_the_refits_a_final_model_refit_trains():
    """cnn.yaml exports the refit: each of the final configuration's repeats trained once
    more, on every non-test person (about a fifth of its wall time on 2 cores); the dry run left
    them out of its count."""
    cfg = load_study(SWEEPS / "cnn.yaml")
    lines = plan_lines(cfg, ["data: photos"])
    assert lines[-2] == ("final: schedule's configuration scored once on the test split over "
                         "its 3 to 4 repeats (final_model: refit); each repeat trained again on "
                         "every non-test person: 3 to 4 more trainings of 80 epochs")
    assert lines[-1].startswith("in all: 34 to 47 trainings")
    stopping = load_study(SWEEPS / "cnn.yaml", ["base.early_stop={patience: 5}"])
    assert plan_lines(stopping, [])[-2].endswith("3 to 4 more trainings of at most 80 epochs")
    one = load_study(SWEEPS / "cnn.yaml", ["stages.2.confirm=null"])
    assert plan_lines(one, [])[-2].endswith("over its 1 repeat (final_model: refit); each "
                                            "repeat trained again on every non-test person: 1 "
                                            "more training of 80 epochs")


def test_a_gate_a_fixed_rule_and_a_stage_without_a_race_are_planned_as_they_run():
    report = plan_lines(load_study(SWEEPS / "report.yaml"), ["data: photos"])
    assert ("  trainings: 9 of 40 epochs: the incumbent + 8 search trials (1 of them a seed "
            "trial), until one reaches train_acc 1 (a gate)") in report
    fixed = load_study(SWEEPS / "quick.yaml", ["stages.0.confirm={repeats: 3}"])
    assert plan_lines(fixed, ["data: photos"])[4] == (
        "  trainings: 8 of 12 epochs: the incumbent + 3 search trials, then the top 1 and "
        "the incumbent 3 times each (their search trials the first)")
    bare = load_study(SWEEPS / "quick.yaml", ["stages.0.confirm=null"])
    assert plan_lines(bare, ["data: photos"])[4] == ("  trainings: 4 of 12 epochs: the incumbent + 3 "
                                             "search trials, the best adopted without a race")


def test_a_dry_run_checks_the_data_and_records_nothing(write_study, tmp_path, image_folder,
                                                       capsys):
    path, home = write_study(), tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home), "--data", str(image_folder),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study tiny: dry run: settings read and checked, nothing trained")
    assert f"data: {image_folder}: " in out and "in all: " in out
    assert not home.exists()  # no store, no cache
    # What a run would refuse is refused as it would be: here a folder that is not there.
    assert main(["run", str(path), "--home", str(home), "--data", str(tmp_path / "typo"),
                 "--dry-run"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_the_dry_run_says_the_workers_and_refuses_a_count_the_run_refuses(write_study,
                                                                          tmp_path, capsys):
    """It planned 10000 workers without a word, where the run refuses them in one line."""
    path, home = write_study(), tmp_path / "mlruns"
    argv = ["run", str(path), "--home", str(home), "--dry-run"]
    assert main([*argv, "--workers", "2"]) == 0
    threads = max(1, usable_cpus() // 2)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"workers: 2 side by side, {threads} thread{'s' if threads > 1 else ''} each "
        "(--workers 2)")
    assert main([*argv, "--workers", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "workers: one training at a time, in this process (--workers 1)")
    assert main([*argv, "--workers", "10000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --workers 10000: this machine holds at most ") and (
        "give --workers" in err), err
    assert not home.exists()
    # Resolving them loads no MLflow (a study's run does: 1.8 s more a dry run).
    loaded = subprocess.run([sys.executable, "-c", "import sys\n"
                             "from asl_sweep.cli import main\n"
                             "main(sys.argv[1:])\n"
                             "print('mlflow' in sys.modules)", *argv, "--workers", "2"],
                            capture_output=True, text=True, timeout=120)
    assert loaded.stdout.splitlines()[-1] == "False", loaded.stdout + loaded.stderr


def test_photos_kept_person_first_are_named_before_a_run_learns_people_for_letters(
        write_study, tmp_path, capsys):
    """ROOT/anna/A/01.jpg: the classes would be the people. The note it had said the file
    names name people and advised a group_pattern that groups by letter."""
    from tests.conftest import make_image_folder

    root = tmp_path / "by-person"
    for person in ("anna", "ben", "cleo", "dev", "eli", "fay"):
        make_image_folder(root / person, per_class=2, people=(person,))
    assert main(["run", str(write_study()), "--home", str(tmp_path / "mlruns"), "--data",
                 str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"note: every folder in {root} (6: anna, ben, cleo, dev, eli, fay) holds the same " \
           f"3 folders (A, B, C); if those are the classes and the folders above them people " \
           f"({root}/anna/A/01.jpg), this study learns to tell the 6 people apart: keep a " \
           f"folder per class at the top ({root}/A/anna/01.jpg, then data.group_pattern " \
           "'^([^/]+)/' splits by person)" in out, out
    assert "look as if they name people" not in out


def test_the_dry_run_splits_the_data_as_the_run_does_and_refuses_what_it_refuses(
        write_study, tmp_path, image_folder, capsys):
    """Split from the listing alone (nothing decoded), the same images and people as the
    run's split; a group_pattern that misses a file is the run's error line, before it."""
    path, home = write_study(), tmp_path / "mlruns"
    argv = ["run", str(path), "--home", str(home), "--data", str(image_folder), "--dry-run"]
    assert main([*argv, "--set", "data.group_pattern=^(p[0-9])_"]) == 0
    out = capsys.readouterr().out
    cfg = load_study(path, ["data.group_pattern=^(p[0-9])_", f"data.root={image_folder}"])
    described = StudyData(cfg.data, tmp_path / "cache", torch.device("cpu")).describe()
    assert "person-disjoint" in described and f"; {described} (test scored once" in out
    # People in the names, but the split is by image: the run's note, before the run.
    assert main(argv) == 0
    assert "look as if they name people (data.group_pattern '^([^_]+)_' finds 3" in (
        capsys.readouterr().out)
    assert main([*argv, "--set", "data.group_pattern=^(zz)_"]) == 2
    assert "data.group_pattern '^(zz)_' does not match its file name" in capsys.readouterr().err
    # The run checks the same before it makes a store or decodes an image, and so does a
    # worker joining from another machine.
    for command in ("run", "worker"):
        assert main([command, *argv[1:-1], "--set", "data.group_pattern=^(zz)_"]) == 2
        assert "data.group_pattern '^(zz)_' does not match" in capsys.readouterr().err
    assert not home.exists()


def test_the_dry_run_says_where_a_backbones_weights_are_and_refuses_a_missing_file(tmp_path,
                                                                                   capsys):
    home = str(tmp_path / "mlruns")
    argv = ["run", str(SWEEPS / "transfer.yaml"), "--home", home, "--dry-run"]
    assert main([*argv, "--set", "base.transfer.weights=none"]) == 0
    assert "\nweights: mobilenet_v2: random (weights: none)\nstage 1 of 3" in (
        capsys.readouterr().out)
    assert main([*argv, "--set", f"base.transfer.weights={tmp_path / 'typo.pth'}"]) == 2
    assert f"base.transfer.weights: {tmp_path / 'typo.pth'} is not a file" in (
        capsys.readouterr().err)


def test_a_group_pattern_that_gives_each_image_its_own_group_is_named(write_study, tmp_path,
                                                                      image_folder, capsys):
    """'(.*)' (or a pattern that takes in the photo's number) split by image while saying
    person-disjoint, and a person metric scored each image alone, without a word."""
    path = write_study({"stages": [{"name": "s", "metric": "val_person_q25", "trials": 2,
                                    "space": {"lr": {"low": 1e-3, "high": 1e-2}}}]})
    argv = ["run", str(path), "--home", str(tmp_path / "mlruns"), "--data", str(image_folder),
            "--dry-run"]
    assert main([*argv, "--set", "data.group_pattern=(.*)"]) == 0
    images = sum(1 for f in image_folder.rglob("*") if f.is_file())
    out = capsys.readouterr().out
    assert (f"note: data.group_pattern '(.*)' gives {images} of {images} images a group of "
            f"their own ({images} groups)") in out, out
    assert "the person metrics (val_person_q25) score each of those images alone" in out
    assert "write group 1 to capture the person only (e.g. '^([^_]+)_')" in out
    assert main([*argv, "--set", "data.group_pattern=^(p[0-9])_"]) == 0
    assert "a group of their own" not in capsys.readouterr().out
