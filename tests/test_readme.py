"""The README's first screen and its study example stay true."""

from pathlib import Path

import yaml

from asl_sweep.settings.spec import StudyConfig

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_the_readme_study_example_is_a_valid_study():
    block = README.split("```yaml", 1)[1].split("```", 1)[0]
    cfg = StudyConfig.model_validate(yaml.safe_load(block))
    assert cfg.stages[0].space["dropout.2"].when


def test_the_first_screen_gives_the_two_commands():
    first_screen = README.split("---", 1)[0]
    run, test = [line.strip() for line in first_screen.splitlines()
                 if line.startswith("    python3.11 -m venv .venv")]
    assert run.endswith("asl-sweep run sweeps/quick.yaml")
    assert test.endswith("python -m pytest -q")
    assert (Path(__file__).parent.parent / "sweeps" / "quick.yaml").exists()
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q" in ci and "'.[dev]'" in ci


def test_the_first_command_scores_on_enough_people_to_mean_something(tmp_path):
    """The quick demo's test split has 10 signers (3 in the demo before it): an interval
    over them means something. Its time and score: benchmarks/first_command.py."""
    from asl_sweep.data.studydata import StudyData
    from asl_sweep.settings.studyfile import load_study

    cfg = load_study(Path(__file__).parent.parent / "sweeps" / "quick.yaml")
    data = StudyData(cfg.data, tmp_path, "cpu", log=lambda _: None)
    assert len(set(data.groups[data.splits.test])) >= 10
    assert cfg.base.model == "cnn" and cfg.stages[0].confirm is not None
    assert "What the demo just showed" in README.split("---", 1)[0]
