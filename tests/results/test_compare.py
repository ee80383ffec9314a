"""`asl-sweep compare`: two studies' decisions and final test scores side by side."""

from asl_sweep.cli import main


def test_compare_prints_each_stage_and_both_test_scores(write_study, tmp_path, capsys):
    path = write_study({"stages": [{"name": "search", "trials": 1, "sampler": "grid",
                                    "pruner": "none", "confirm": None,
                                    "space": {"lr": [3e-3]}}]})
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


def test_compare_names_a_study_that_never_ran(write_study, tmp_path, capsys):
    path = write_study()
    assert main(["compare", str(path), str(path), "--home", str(tmp_path / "empty")]) == 2
    assert "run it first" in capsys.readouterr().err
