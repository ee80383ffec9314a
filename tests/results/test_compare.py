"""`asl-sweep compare`: two studies' decisions and final test scores side by side."""

import re

import numpy as np
import pytest

from asl_sweep.cli import main
from asl_sweep.results.compare import paired_difference

ONE_TRIAL = {"stages": [{"name": "search", "trials": 1, "sampler": "grid", "pruner": "none",
                         "confirm": None, "space": {"lr": [3e-3]}}]}


def _compared_with(path, home: str, capsys, study: str, setting: str) -> str:
    """The same YAML run again as `study` with one other setting, then compared with the
    first: what compare prints."""
    assert main(["run", str(path), "--home", home, "--set", f"study={study}",
                 "--set", setting]) == 0
    capsys.readouterr()
    assert main(["compare", str(path), str(path), "--home", home,
                 "--other-set", f"study={study}", "--other-set", setting]) == 0
    return capsys.readouterr().out


def test_compare_prints_each_stage_and_both_test_scores(write_study, tmp_path, capsys):
    path = write_study(ONE_TRIAL)
    home = str(tmp_path / "mlruns")
    assert main(["run", str(path), "--home", home]) == 0
    assert main(["run", str(path), "--home", home, "--set", "study=other",
                 "--set", "base.lr=1e-6", "--set", "final_model=refit"]) == 0
    capsys.readouterr()
    other = write_study({"study": "other", "base": {"lr": 1e-6}, "final_model": "refit",
                         "stages": [{"name": "search", "trials": 1, "sampler": "grid",
                                     "pruner": "none", "confirm": None,
                                     "space": {"lr": [3e-3]}}]}, name="other.yaml")
    assert main(["compare", str(path), str(other), "--home", home]) == 0
    out = capsys.readouterr().out
    assert out.startswith("compare tiny (")
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "best: lr=0.003" in rows["search"]
    assert rows["final"].count("95% CI") == 2  # both scores, with their intervals
    # What each exports: one repeat (that repeat), and the refit of it
    assert re.search(r"best repeat \(trial \d+\): \d\.\d{3} +refit of 1: \d\.\d{3} \(95% CI",
                     rows["exported"]), rows["exported"]
    # Same data: the same test split, so a paired difference over its people (it said only
    # whether the two intervals overlapped).
    assert re.search(r"test accuracy other - tiny: [+-]\d+\.\d pt, 95% CI [+-]\d+\.\d to "
                     r"[+-]\d+\.\d pt \(paired: bootstrap over the \d+ test people both "
                     r"scored, .*\): ", out), out
    assert "data settings differ" not in out and "intervals" not in out
    # Another size alone draws the same split (over the files, not their pixels).
    out = _compared_with(path, home, capsys, "bigger", "data.image_size=20")
    assert "the same test split, each study at its own size (16 and 20 px)" in out
    assert "data settings differ" not in out and "paired: bootstrap" in out
    # Another split: no paired difference, the two scores read apart.
    out = _compared_with(path, home, capsys, "resplit", "data.seed=1")
    assert re.search(r"test accuracy resplit - tiny: [+-]\d+\.\d pt; the 95% intervals (do not "
                     r")?overlap; the data settings differ, so the test splits do too: read the "
                     r"two scores apart, not as a paired difference", out), out


def test_compare_names_a_study_that_never_ran(write_study, tmp_path, capsys):
    path = write_study()
    assert main(["compare", str(path), str(path), "--home", str(tmp_path / "empty")]) == 2
    assert "run it first" in capsys.readouterr().err


def test_compare_names_both_studies_of_one_yaml_and_refuses_a_study_with_itself(
        write_study, tmp_path, capsys):
    # The docs' workflow: the same YAML run again as a new study with --set study=NAME.
    path = write_study(ONE_TRIAL)
    home = str(tmp_path / "mlruns")
    assert main(["run", str(path), "--home", home]) == 0
    assert main(["run", str(path), "--home", home, "--set", "study=tiny-more",
                 "--set", "base.lr=1e-6"]) == 0
    capsys.readouterr()
    assert main(["compare", str(path), str(path), "--home", home,
                 "--other-set", "study=tiny-more"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("compare tiny (") and "with tiny-more (" in out
    assert "test accuracy tiny-more - tiny: " in out
    # --set names the first study only (before, it applied to both sides, and the study was
    # compared with itself: "+0.0 pt").
    assert main(["compare", str(path), str(path), "--home", home,
                 "--set", "study=tiny-more"]) == 0
    assert "compare tiny-more (" in capsys.readouterr().out
    assert main(["compare", str(path), str(path), "--home", home]) == 2
    err = capsys.readouterr().err
    assert "both sides are study 'tiny'" in err and "--other-set study=NAME" in err


def test_the_second_study_in_another_home_is_read_from_that_homes_stores(write_study, tmp_path,
                                                                          capsys):
    """--other-home names the second study's record: it is not read from the first's
    --storage and --tracking (before, a first side named by its URIs sent the second side to
    the first's database, where it had never run), and an error about it names its flags."""
    path = write_study(ONE_TRIAL)
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["run", str(path), "--home", str(first)]) == 0
    assert main(["run", str(path), "--home", str(second), "--set", "study=other",
                 "--set", "base.lr=1e-6"]) == 0
    capsys.readouterr()
    by_uri = ["--storage", f"sqlite:///{first / 'optuna.db'}",
              "--tracking", f"sqlite:///{first / 'mlflow.db'}"]
    assert main(["compare", str(path), str(path), *by_uri, "--other-home", str(second),
                 "--other-set", "study=other"]) == 0
    assert "with other (" in capsys.readouterr().out
    assert main(["compare", str(path), str(path), "--home", str(first),
                 "--other-home", str(tmp_path / "empty"), "--other-set", "study=other"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the second study: study other: nothing recorded yet")
    assert "--other-home" in err and len(err.splitlines()) == 1


def _final(accuracy: list[float], people: dict[str, tuple[int, float]]) -> dict:
    """A final test record as a study stores it: its repeats' accuracies and its per-person
    rows (images, the mean accuracy over the repeats)."""
    return {"accuracy": accuracy, "breakdown": {"by_person": [
        {"person": p, "images": n, "accuracy": a} for p, (n, a) in people.items()]}}


def test_the_paired_difference_is_over_the_same_people_with_the_seed_spread():
    people = {f"s{i:02d}": (18 + i % 2 * 9, 0.5 + 0.04 * i) for i in range(10)}
    same = paired_difference(_final([0.70, 0.72, 0.71], people),
                             _final([0.70, 0.72, 0.71], people))
    assert same["ci"][0] < 0 < same["ci"][1] and same["people"] == 10 and same["seeds"]
    better = {p: (n, a + 0.05) for p, (n, a) in people.items()}  # 5 pt on every person
    up = paired_difference(_final([0.70, 0.72, 0.71], people),
                           _final([0.75, 0.77, 0.76], better))
    assert 0.03 < up["ci"][0] < 0.05 < up["ci"][1] < 0.07
    # The seed spread widens it; one repeat has none to add, and says so.
    noisy = paired_difference(_final([0.60, 0.72, 0.81], people),
                              _final([0.65, 0.77, 0.86], better))
    assert noisy["ci"][1] - noisy["ci"][0] > 2 * (up["ci"][1] - up["ci"][0])
    assert not paired_difference(_final([0.71], people), _final([0.76], better))["seeds"]


@pytest.mark.parametrize("people", [5, 10])
def test_with_no_true_difference_the_paired_interval_rarely_says_one_scores_higher(people):
    """Two studies whose per-person scores differ by a few images at random, no true
    difference: a 95% interval should exclude 0 about 5% of the time. Plain percentiles of
    the resampled people excluded it 13.5% (5 people) and 11.3% (10 people) of these 1,000
    draws; expanded for the few people, 3.0% and 6.5%."""
    rng = np.random.default_rng(5)
    wrong = 0
    for k in range(1000):
        images = rng.choice([9, 18, 27], size=people)
        gain = rng.choice([-2, -1, 0, 0, 0, 1, 2], size=people) / 9.0
        a = {f"s{i}": (int(images[i]), 0.8) for i in range(people)}
        b = {f"s{i}": (int(images[i]), 0.8 + gain[i]) for i in range(people)}
        lo, hi = paired_difference(_final([0.8], a), _final([0.8], b), draws=2000, seed=k)["ci"]
        wrong += lo > 0 or hi < 0
    assert wrong / 1000 <= 0.075


@pytest.mark.parametrize("other", [
    {"s00": (18, 0.5)},  # other people
    {f"s{i:02d}": (19, 0.5) for i in range(10)},  # the same names, other images
])
def test_no_paired_difference_where_the_people_differ(other):
    people = {f"s{i:02d}": (18, 0.5) for i in range(10)}
    assert paired_difference(_final([0.5, 0.5], people), _final([0.5, 0.5], other)) is None
    assert paired_difference(_final([0.5], {}), _final([0.5], {})) is None


def test_two_studies_of_one_name_in_two_homes_are_told_apart_by_their_homes(write_study,
                                                                             tmp_path):
    """`compare A.yaml A.yaml --other-home H2`: the table's columns and the test line said
    'quick' and 'quick' ('quick scores higher'); each is named with its home."""
    from asl_sweep.results.compare import _names
    from asl_sweep.runtime.workspace import Workspace
    from asl_sweep.settings.studyfile import load_study

    cfg, other = load_study(write_study({})), load_study(write_study({}), ["study=other"])
    first, second = Workspace.at(tmp_path / "first"), Workspace.at(tmp_path / "second")
    assert _names((cfg, first), (other, first)) == ("tiny", "other")
    assert _names((cfg, first), (cfg, second)) == ("tiny (first)", "tiny (second)")
    elsewhere = Workspace.at(tmp_path / "x" / "first")
    assert _names((cfg, first), (cfg, elsewhere)) == (f"tiny ({first.home})",
                                                      f"tiny ({elsewhere.home})")
