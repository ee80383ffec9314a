"""The README's first screen and its study example stay true."""

import re
from pathlib import Path

import yaml

from asl_sweep.settings.spec import StudyConfig

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def _yaml_block(text: str) -> dict:
    return yaml.safe_load(text.split("```yaml", 1)[1].split("```", 1)[0])


def test_the_readme_study_example_is_a_valid_study():
    cfg = StudyConfig.model_validate(_yaml_block(README))
    assert cfg.data.group_pattern and cfg.stages[0].space["cnn.kernel"].choices


def test_the_annotated_study_is_a_valid_study():
    cfg = StudyConfig.model_validate(_yaml_block(
        (ROOT / "docs" / "reference" / "study-yaml.md").read_text()))
    assert cfg.stages[0].space["dropout.2"].when


def test_the_readme_is_a_front_page():
    """What it is, what you get, the two commands, a tour and links: the rest is in docs/."""
    assert len(README.splitlines()) <= 200
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


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


def test_the_docs_state_the_registered_models_signature_as_it_is():
    """Issue 34: the README said the registered model's signature is uint8; it is float32
    (the model card said so)."""
    serve = (ROOT / "docs" / "how-to" / "serve-a-model.md").read_text()
    assert "its signature takes float32 images" in serve
    assert "signature takes uint8" not in serve + README
