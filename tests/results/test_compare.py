"""`asl-sweep compare`: two studies' decisions and final test scores side by side."""

from asl_sweep.cli import main

ONE_TRIAL = {"stages": [{"name": "search", "trials": 1, "sampler": "grid", "pruner": "none",
                         "confirm": None, "space": {"lr": [3e-3]}}]}


def test_compare_prints_each_stage_and_both_test_scores(write_study, tmp_path, capsys):
    path = write_study(ONE_TRIAL)
    home = str(tmp_path / "mlruns")
    assert main(["run", str(path), "--home", home]) == 0
    assert main(["run", str(path), "--home", home, "--set", "study=other",
                 "--set", "base.lr=1e-6"]) == 0
    capsys.readouterr()
    other = write_study({"study": "other", "base": {"lr": 1e-6},
                         "stages": [{"name": "search", "trials": 1, "sampler": "grid",
                                     "pruner": "none", "confirm": None,
                                     "space": {"lr": [3e-3]}}]}, name="other.yaml")
    assert main(["compare", str(path), str(other), "--home", home]) == 0
    out = capsys.readouterr().out
    assert out.startswith("compare tiny (")
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "best: lr=0.003" in rows["search"]
    assert rows["final"].count("95% CI") == 2  # both scores, with their intervals
    assert "test accuracy other - tiny: " in out and "intervals" in out
    assert "data settings differ" not in out  # same data: the same test split
    # Another size alone draws the same split (over the files, not their pixels).
    assert main(["run", str(path), "--home", home, "--set", "study=bigger",
                 "--set", "data.image_size=20"]) == 0
    capsys.readouterr()
    assert main(["compare", str(path), str(path), "--home", home,
                 "--other-set", "study=bigger", "--other-set", "data.image_size=20"]) == 0
    out = capsys.readouterr().out
    assert "the same test split, each study at its own size (16 and 20 px)" in out
    assert "data settings differ" not in out


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
