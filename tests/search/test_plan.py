"""The plan `run --dry-run` prints: what each stage searches and the trainings it plans."""

from pathlib import Path

from asl_sweep.cli import main
from asl_sweep.search.plan import data_line, plan_lines
from asl_sweep.settings.studyfile import load_study

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"


def test_the_plan_says_each_stages_search_and_its_trainings():
    cfg = load_study(SWEEPS / "quick.yaml")
    lines = plan_lines(cfg, data_line(cfg))
    assert lines[1].startswith("data: built-in synthetic letters (100/class, 40 signers), 32px; "
                               "validation 0.2 and test 0.25 of the people")
    assert lines[2].startswith("stage 1 of 1 architecture: larger filters for a small CNN")
    assert lines[3] == "  searches: cnn.kernel in [5, 7]; lr from 0.002 to 0.008, log"
    # the incumbent, 3 trials, then 2 to 4 fresh repeats of the candidate and the incumbent
    # (the demo trains 8 when its race ends at the first look)
    assert lines[4] == ("  trainings: 8 to 12 of 12 epochs: the incumbent + 3 search trials, "
                        "then the top 1 raced against the incumbent on 2 to 4 fresh paired "
                        "repeats each")
    assert lines[-1].startswith("in all: 8 to 12 trainings")


def test_a_gate_a_fixed_rule_and_a_stage_without_a_race_are_planned_as_they_run():
    report = plan_lines(load_study(SWEEPS / "report.yaml"), "photos")
    assert ("  trainings: 9 of 40 epochs: the incumbent + 8 search trials (1 of them a seed "
            "trial), until one reaches train_acc 1 (a gate)") in report
    fixed = load_study(SWEEPS / "quick.yaml", ["stages.0.confirm={repeats: 3}"])
    assert plan_lines(fixed, "photos")[4] == (
        "  trainings: 8 of 12 epochs: the incumbent + 3 search trials, then the top 1 and "
        "the incumbent 3 times each (their search trials the first)")
    bare = load_study(SWEEPS / "quick.yaml", ["stages.0.confirm=null"])
    assert plan_lines(bare, "photos")[4] == ("  trainings: 4 of 12 epochs: the incumbent + 3 "
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
