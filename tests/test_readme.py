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
