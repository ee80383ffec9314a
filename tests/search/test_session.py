"""What a study's session says before anything trains."""

from asl_sweep.cli import main
from tests.conftest import make_image_folder


def test_a_person_metric_on_images_without_people_is_named_with_what_to_set(write_study,
                                                                             tmp_path, capsys):
    """cnn.yaml and transfer.yaml choose on val_person_q25; run on a photo folder without
    data.group_pattern it is val_acc and the splits are not by person: one note says so and
    what to set; with the pattern there is nothing to say."""
    people = tuple(f"p{i}" for i in range(8))
    root = make_image_folder(tmp_path / "photos", per_class=16, people=people)
    stage = {"name": "search", "trials": 1, "metric": "val_person_q25", "confirm": None,
             "space": {"lr": [3e-3]}}
    path = write_study({"base": {"epochs": 1}, "stages": [stage]})
    home = str(tmp_path / "mlruns")
    assert main(["run", str(path), "--data", str(root), "--home", home]) == 0
    out = capsys.readouterr().out
    (note,) = [line for line in out.splitlines() if line.startswith("note: ")]
    assert note.startswith("note: stage search chooses on people (val_person_q25), but the images in "
                           f"{root} have none (data.group_pattern is not set)")
    # (the pattern the file names look as if they follow: p0_A_0.png)
    assert ("set data.group_pattern to a regex whose group 1 names each file's person (e.g. "
            "'^([^_]+)_')") in note
    # The leaderboard after it ranks by val_acc, which the metric is here, and says so.
    header = next(line for line in out.splitlines() if line.startswith("trial "))
    assert header.split() == ["trial", "train_acc", "val_acc", "params"]
    assert ("top trials by val_acc (as val_person_q25: the images name no people)") in out
    # Read back by its YAML (data: the built-in set), with the data its run recorded.
    assert main(["status", str(path), "--home", home]) == 0
    out = capsys.readouterr().out
    assert "best so far: trial 0 (incumbent), val_acc 1.0000" in out, out
    assert "val_person_q25" not in out
    assert main(["run", str(path), "--data", str(root), "--home", home, "--set", "study=grouped",
                 "--set", "data.group_pattern=^(p[0-9])_"]) == 0
    out = capsys.readouterr().out
    assert "person-disjoint" in out and "note: " not in out


def test_file_names_that_name_people_without_a_pattern_are_noted(write_study, tmp_path,
                                                                  capsys):
    """A photo folder whose file names name people (p0_A_0.png), run without
    data.group_pattern, is split by image: one note says the names look like people, the
    pattern that finds them, and that the test score reads high otherwise. Names that do
    not (the shared ASL photos: A1008.jpg) get no note."""
    people = tuple(f"p{i}" for i in range(8))
    root = make_image_folder(tmp_path / "photos", per_class=16, people=people)
    path = write_study({"base": {"epochs": 1},
                        "stages": [{"name": "search", "trials": 1, "confirm": None,
                                    "space": {"lr": [3e-3]}}]})
    home = str(tmp_path / "mlruns")
    assert main(["train", str(path), "--data", str(root), "--home", home]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: the file names in {root} look as if they name people "
                     "(data.group_pattern '^([^_]+)_' finds 8, most in several classes), but "
                     "without data.group_pattern the split is by image: one person's photos "
                     "can sit in training and in test, and the test score reads high for new "
                     "people; set data.group_pattern: '^([^_]+)_' (or --set "
                     "data.group_pattern='^([^_]+)_') for a person-disjoint split"]
    for image in root.rglob("*.png"):  # A/p0_A_0.png -> A/A0p0.png: no person in the name
        image.rename(image.with_name(image.parent.name + image.stem.split("_")[2] +
                                     image.stem.split("_")[0] + ".png"))
    assert main(["train", str(path), "--data", str(root), "--home", str(tmp_path / "other")]) == 0
    assert "note: " not in capsys.readouterr().out


def test_a_precision_autocast_cannot_give_here_is_named(write_study, tmp_path, capsys):
    """bf16 and fp16 are CUDA autocast; asked for on the CPU the trainer runs fp32, which a
    user who set them would not guess from the same figures."""
    path = write_study({"base": {"epochs": 1, "precision": "bf16", "device": "cpu"},
                        "stages": [{"name": "search", "trials": 1, "confirm": None,
                                    "space": {"lr": [3e-3]}}]})
    assert main(["train", str(path), "--home", str(tmp_path / "mlruns")]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert notes == ["note: precision bf16 is autocast on CUDA only; on cpu every trial trains "
                     "in fp32 (precision: auto says the same without this note)"]
