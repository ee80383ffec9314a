from pathlib import Path

import pytest

from asl_sweep.runtime.errors import ConfigError
from asl_sweep.settings.spec import Choice, FloatRange, IntRange
from asl_sweep.settings.studyfile import load_study

SWEEPS = sorted((Path(__file__).parents[2] / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_study_loads(path):
    cfg = load_study(path)
    assert cfg.stages


def test_space_entries_parse_by_shape(write_study):
    cfg = load_study(write_study({"stages": [{
        "name": "s", "space": {
            "lr": {"low": 1e-5, "high": 1e-1, "log": True},
            "batch_size": {"low": 8, "high": 64, "step": 8},
            "weight_decay": {"low": 0.0, "high": 0.1, "step": 0.05},
            "activation": ["relu", "gelu"],
        }}]}))
    space = cfg.stages[0].space
    assert isinstance(space["lr"], FloatRange) and space["lr"].log and space["lr"].low == 1e-5
    assert isinstance(space["batch_size"], IntRange) and space["batch_size"].step == 8
    assert isinstance(space["weight_decay"], FloatRange)
    assert isinstance(space["activation"], Choice)


def test_scientific_notation_is_a_float(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("study: s\nbase: {lr: 1e-5}\nstages: [{name: a, space: {lr: [0.1]}}]\n")
    assert load_study(path).base.lr == 1e-5


@pytest.mark.parametrize("updates, expected", [
    ({"base": {"epochz": 3}}, "base.epochz: Extra inputs are not permitted"),
    ({"base": {"lr": -1}}, "base.lr: Input should be greater than 0"),
    ({"data": {"val_fraction": 1.5}}, "data.val_fraction"),
    ({"stages": [{"name": "s", "space": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}]},
     "stages.0.space.lr: low must be > 0 for a log range"),
    ({"stages": [{"name": "s", "space": {"lr": {"low": 0.0, "high": 0.1}}}]},
     "stages.0.space.lr.low: Input should be greater than 0"),
    ({"stages": [{"name": "s", "space": {"lrr": [0.1]}}]},
     "stages.0.space.lrr: not a trainer setting"),
    ({"stages": [{"name": "s", "space": {"activation": ["relu", "swish"]}}]},
     "stages.0.space.activation.1: Input should be"),
    ({"stages": [{"name": "s", "sampler": "grid", "space": {"lr": {"low": 0.1, "high": 0.2}}}]},
     "grid sampler: space.lr needs a list or a step"),
    ({"stages": [{"name": "s", "trials": 0}]}, "stages.0.trials"),
    ({"stages": [{"name": "s", "seed_trials": [{"lr": 0.1}], "space": {"hidden": [[32]]}}]},
     "stages.0.seed_trials.0.lr: not in this stage's space"),
    ({"stages": [{"name": "a", "space": {"lr": [0.1]}}, {"name": "a", "space": {"lr": [0.1]}}]},
     "stage names must be unique"),
    ({"stages": [{"name": "s", "trials": 3}]}, "stages.0: space: no setting to search"),
    ({"data": {"group_pattern": "nogroup"}}, "data.group_pattern: needs a capturing group"),
    # The name is a folder too: `..` put the study's artifacts in the home itself.
    ({"study": ".."}, "study: '..' is not a name it takes: letters, digits, _, - and . (not "
                      "first)"),
    ({"study": ".hidden"}, "study: '.hidden' is not a name it takes"),
    ({"stages": [{"name": "a.b"}]}, "stages.0.name: 'a.b' is not a name it takes: letters, "
                                    "digits, _ and -"),
    # Seeds numpy and Optuna's samplers refuse: each was a traceback from inside them.
    ({"data": {"seed": -1}}, "data.seed: Input should be greater than or equal to 0"),
    ({"data": {"synthetic": {"seed": -3}}},
     "data.synthetic.seed: Input should be greater than or equal to 0"),
    ({"stages": [{"name": "s", "seed": -1}]},
     "stages.0.seed: Input should be greater than or equal to 0"),
    # a bare number where a list is one entry a layer: what the list means (was "Input
    # should be a valid list"), in base and in a space, without pydantic's "Value error, "
    ({"base": {"dropout": 0.3}}, "base.dropout: 0.3 is one number: dropout is a list of "
     "rates, dropout[0] on the input and dropout[i] on hidden layer i, e.g. [0.0, 0.3]"),
    ({"base": {"hidden": 64}}, "base.hidden: 64 is one number: hidden is a list of widths"),
    # an accuracy gate written as a percentage: a gate no trial could reach (the budget burnt,
    # then the study stopped)
    ({"stages": [{"name": "s", "target": 85, "space": {"lr": [0.1]}}]},
     "stages.0: target: 85 is outside what val_acc can be (an accuracy, 0 to 1); 85 reads as "
     "a percentage: write 0.85"),
    ({"stages": [{"name": "s", "space": {"dropout": [0.1, 0.3]}}]},
     "stages.0.space.dropout.0: 0.1 is one number: dropout is a list of rates"),
])
def test_config_errors_name_the_key_path(write_study, updates, expected):
    path = write_study(updates)
    with pytest.raises(ConfigError) as e:
        load_study(path)
    assert str(path) in str(e.value)
    assert expected in str(e.value)


def test_set_overrides_are_validated_the_same_way(write_study):
    path = write_study()
    cfg = load_study(path, ["base.epochs=7", "base.lr=1e-2", "base.hidden=[64, 32]",
                            "stages.0.trials=2", "data.image_size=24"])
    assert (cfg.base.epochs, cfg.base.lr, cfg.base.hidden) == (7, 0.01, [64, 32])
    assert cfg.stages[0].trials == 2 and cfg.data.image_size == 24
    with pytest.raises(ConfigError, match="base.epochs: Input should be greater than or equal to 1"):
        load_study(path, ["base.epochs=0"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_study(path, ["base.epochs"])
    # The next item of a list of numbers may be set (a head's second dropout).
    assert load_study(path, ["base.hidden.1=16"]).base.hidden == [32, 16]
    for key in ("base..epochs", "base.epochs.", ".base"):  # was "base.: Extra inputs ..."
        with pytest.raises(ConfigError, match=f"{key} has an empty name between dots"):
            load_study(path, [f"{key}=3"])


def test_a_bad_value_from_set_names_the_set_not_only_the_file(write_study):
    """An error in a value --set gave named only the study file, where the value is not:
    it now names the --set too (the last one at or above the key path), and an error in
    the file's own values names none."""
    path = write_study({"base": {"model": "cnn"}, "stages": [{
        "name": "s", "trials": 2, "confirm": None, "space": {"cnn.kernel": [3, 5]}}]})
    cases = {
        ("base.lr=1", "base.lr=x"): "base.lr: Input should be a valid number, unable to parse "
                                    "string as a number (set by --set 'base.lr=x')",
        ("base=3",): "base: Input should be a valid dictionary or instance of TrainConfig "
                     "(set by --set 'base=3')",
        ("stages.0.space.cnn.kernel=[3, x]",): "stages.0.space.cnn.kernel.1: Input should be "
        "a valid integer, unable to parse string as an integer (set by --set "
        "'stages.0.space.cnn.kernel=[3, x]')",
        ("stages.0.fixed.epochs=0",): "stages.0.fixed.epochs: Input should be greater than "
                                      "or equal to 1 (set by --set 'stages.0.fixed.epochs=0')",
    }
    for given, expected in cases.items():
        with pytest.raises(ConfigError) as e:
            load_study(path, list(given))
        assert str(e.value) == f"{path}: {expected}"
    with pytest.raises(ConfigError) as e:  # the file's own value, another key set
        load_study(write_study({"base": {"lr": "x"}}), ["base.epochs=3", "base.l=1"])
    assert "base.lr: Input should be a valid number" in str(e.value)
    assert str(e.value).count("set by") == 1  # base.l's, not base.lr's


def test_set_reaches_a_stages_dotted_keys(write_study):
    """A stage's space, fixed settings and seed trials are keyed by dotted trainer paths:
    `--set stages.0.space.cnn.kernel=[3, 5]` was `space: {cnn: {kernel: [3, 5]}}`, and
    "stages.0.space.cnn.low: Field required"."""
    path = write_study({"base": {"model": "cnn"}, "stages": [{
        "name": "s", "trials": 2, "confirm": None, "fixed": {"cnn.kernel": 3},
        "seed_trials": [{"cnn.kernel": 5}],
        "space": {"cnn.kernel": [3, 5], "lr": {"low": 1e-4, "high": 1e-2, "log": True}}}]})
    stage = load_study(path, ["stages.0.space.cnn.kernel=[5, 7]",  # an existing key
                              "stages.0.space.cnn.dropout={low: 0.0, high: 0.3}",  # a new one
                              "stages.0.space.lr.low=1e-3",  # a range's field
                              "stages.0.fixed.cnn.kernel=5",
                              "stages.0.seed_trials.0.cnn.kernel=7"]).stages[0]
    assert stage.space["cnn.kernel"].choices == [5, 7]
    assert (stage.space["cnn.dropout"].low, stage.space["cnn.dropout"].high) == (0.0, 0.3)
    assert stage.space["lr"].low == 1e-3 and stage.space["lr"].high == 1e-2
    assert stage.fixed == {"cnn.kernel": 5}
    assert stage.seed_trials[0].params == {"cnn.kernel": 7}
    with pytest.raises(ConfigError, match=r"stages\.0\.space\.cnn\.kernel\.0: Input should be "
                                          "greater than or equal to 1"):
        load_study(path, ["stages.0.space.cnn.kernel=[0, 3]"])


def test_trials_and_data_overrides(write_study, tmp_path):
    cfg = load_study(write_study(), trials=9, data_root=tmp_path)
    assert all(s.trials == 9 for s in cfg.stages)
    assert cfg.data.root == tmp_path


@pytest.mark.parametrize("flag", ["trials", "epochs"])
def test_a_bad_flag_is_blamed_on_the_flag_not_the_file(write_study, flag):
    with pytest.raises(ConfigError) as e:
        load_study(write_study(), **{flag: -1})
    assert str(e.value).startswith(f"--{flag} -1: must be at least 1")
    assert "stages.0" not in str(e.value)


def test_a_condition_on_one_list_choice_says_how_to_write_it(write_study):
    path = write_study({"stages": [{"name": "s", "space": {
        "hidden": [[256, 64], [128]], "dropout.2": {"low": 0.0, "high": 0.5,
                                                   "when": {"hidden": [256, 64]}}}}]})
    with pytest.raises(ConfigError, match=r"write it inside a list: \[\[256, 64\]\]"):
        load_study(path)
    ok = write_study({"stages": [{"name": "s", "space": {
        "hidden": [[256, 64], [128]], "dropout.2": {"low": 0.0, "high": 0.5,
                                                   "when": {"hidden": [[256, 64]]}}}}]},
                     name="ok.yaml")
    assert load_study(ok).stages[0].space["dropout.2"].when == {"hidden": [[256, 64]]}


def test_missing_and_malformed_files(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no such study file$"):
        load_study(tmp_path / "nope.yaml")
    # A study named without its .yaml, or by its name alone, says which file it meant.
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "quick.yaml").write_text("study: quick\n")
    monkeypatch.chdir(tmp_path)
    for given, meant in (("sweeps/quick", "sweeps/quick.yaml"), ("quick", "sweeps/quick.yaml"),
                         ("sweeps/quick.yml", "sweeps/quick.yaml")):
        with pytest.raises(ConfigError) as caught:
            load_study(Path(given))
        assert str(caught.value) == f"{given}: no such study file ({meant} is one: give its path)"
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study(bad)


def test_a_key_given_twice_is_refused_not_silently_the_last(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("study: a\nbase: {epochs: 3}\nstages: [{name: s, space: {lr: [0.1]}}]\n"
                    "base:\n  epochs: 5\n")
    with pytest.raises(ConfigError) as e:
        load_study(path)
    assert str(e.value) == f"{path}: key 'base' given twice in one mapping (lines 2 and 4); keep one"
    ok = tmp_path / "ok.yaml"
    ok.write_text("study: a\nstages: [{name: s, space: {lr: [0.1]}}]\n")
    with pytest.raises(ConfigError, match=r"key 'kernel' given twice"):
        load_study(ok, ["base.cnn={kernel: 3, kernel: 5}"])
    # YAML's merge keys stay what they are: a key of the merged mapping given again wins.
    path.write_text("study: a\nbase:\n  <<: {epochs: 2, lr: 0.01}\n  epochs: 4\n"
                    "stages: [{name: s, space: {lr: [0.1]}}]\n")
    assert load_study(path).base.epochs == 4 and load_study(path).base.lr == 0.01


def test_epochs_sets_every_stage_epochs_fixed_ones_included(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("study: s\nbase: {epochs: 15}\nstages:\n"
                    "  - {name: a, fixed: {epochs: 40}, space: {lr: [0.1]}}\n"
                    "  - {name: b, space: {lr: [0.1]}}\n"
                    "  - {name: c, space: {epochs: [5, 10]}}\n")
    cfg = load_study(path, epochs=3)
    assert cfg.base.epochs == 3 and cfg.stages[0].fixed["epochs"] == 3
    assert cfg.stages[2].space["epochs"].choices == [5, 10]  # a searched setting stays searched


def test_tta_off_written_bare_in_yaml_is_off(tmp_path):
    """YAML reads a bare `off` as false; `tta: off` (file or --set) still means off."""
    path = tmp_path / "s.yaml"
    path.write_text("study: s\ntta: off\nstages: [{name: a, space: {lr: [0.1]}}]\n")
    assert load_study(path).tta == "off"
    assert load_study(path, ["tta=flip"]).tta == "flip"
    assert load_study(path, ["tta=off"]).tta == "off"
    with pytest.raises(ConfigError, match="tta: Input should be 'auto', 'off'"):
        load_study(path, ["tta=spin"])


def test_get_path_reads_what_set_path_writes():
    from asl_sweep.settings.config import get_path, set_path

    tree = {"augment": {"turn": 0.2}, "dropout": [0.1, 0.3], "cnn": None}
    assert get_path(tree, "augment.turn") == 0.2 and get_path(tree, "dropout.1") == 0.3
    assert get_path(tree, "dropout.2") is None and get_path(tree, "cnn.kernel") is None
    set_path(tree, "dropout.2", 0.5)
    assert get_path(tree, "dropout.2") == 0.5


def test_a_data_root_that_is_a_web_address_says_download_it(write_study):
    """`root: https://host/asl.zip` was read as the path ./https:/host/asl.zip (its slashes
    folded) and said to be "not a folder (does not exist)"."""
    with pytest.raises(ConfigError) as e:
        load_study(write_study({"data": {"root": "https://host.org/asl.zip"}}))
    assert str(e.value).endswith("data.root: https://host.org/asl.zip: a web address; "
                                 "asl-sweep reads files on this machine: download it first")
    assert load_study(write_study({"data": {"root": "photos:2026"}})).data.root.name == \
        "photos:2026"  # a colon in a folder's name is a name


def test_a_data_root_under_the_users_home_is_expanded(write_study, monkeypatch, tmp_path):
    """`root: ~/photos` in a YAML meets no shell: it was read as ./~/photos, "not a folder"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_study(write_study({"data": {"root": "~/photos"}})).data.root == \
        tmp_path / "photos"
    assert load_study(write_study(), ["data.root=~/elsewhere"]).data.root == \
        tmp_path / "elsewhere"
    # --home and $ASL_SWEEP_HOME the same (a quoted '~/x', an env file's value)
    from asl_sweep.cli import build_parser

    assert build_parser().parse_args(["status", "s.yaml", "--home", "~/h"]).home == \
        tmp_path / "h"
    monkeypatch.setenv("ASL_SWEEP_HOME", "~/from-env")
    assert build_parser().parse_args(["status", "s.yaml"]).home == tmp_path / "from-env"


def test_a_study_saved_by_windows_tools_reads_as_written(tmp_path):
    """Windows PowerShell's `cat quick.yaml > mine.yaml` writes UTF-16 with a byte-order mark
    (it was 'not a text file'); Notepad writes UTF-8 with one, and CRLF line ends. A file
    in another 8-bit encoding says to save it as UTF-8."""
    text = (Path(__file__).parents[2] / "sweeps" / "quick.yaml").read_text()
    expected = load_study(Path(__file__).parents[2] / "sweeps" / "quick.yaml")
    for name, encoding, ends in (("ps.yaml", "utf-16", "\n"),
                                 ("notepad.yaml", "utf-8-sig", "\r\n")):
        (tmp_path / name).write_bytes(text.replace("\n", ends).encode(encoding))
        assert load_study(tmp_path / name) == expected
    (tmp_path / "latin.yaml").write_bytes(
        (text + "description: caf\u00e9\n").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml: not UTF-8 text \(a study is UTF-8 "
                                          r"YAML\): save it as UTF-8"):
        load_study(tmp_path / "latin.yaml")


def test_a_key_that_is_not_a_setting_names_the_one_it_most_likely_meant(write_study):
    """`base.lrr`, `data.image_sise`, `stages.0.triasl` in a study or a --set: 'Extra inputs
    are not permitted', and the user was left to find the key's spelling."""
    path = write_study()
    for given, meant in (("base.lrr", "base.lr"), ("data.image_sise", "data.image_size"),
                         ("stages.0.triasl", "stages.0.trials"),
                         ("base.augment.rotaton", "base.augment.rotation")):
        with pytest.raises(ConfigError) as caught:
            load_study(path, [f"{given}=1"])
        assert f"{given}: Extra inputs are not permitted (did you mean {meant}?)" in str(
            caught.value)
    with pytest.raises(ConfigError) as caught:
        load_study(path, ["base.zzzz=1"])
    assert str(caught.value).endswith("base.zzzz: Extra inputs are not permitted (set by "
                                      "--set 'base.zzzz=1')")


def test_a_searched_or_fixed_key_that_is_not_a_setting_names_the_one_it_meant(write_study):
    """A space's `augment.rotaton: [0, 10]` said 'stages.0.space.augment.rotaton.0: Extra
    inputs are not permitted' (the choice's index, pydantic's words); `lrr` said only 'not
    a trainer setting'."""
    path = write_study()
    for given, said in (
            ("stages.0.space.augment.rotaton=[0, 10]",
             "stages.0.space.augment.rotaton: not a trainer setting (see base:); did you mean "
             "augment.rotation?"),
            ("stages.0.space.lrr={low: 0.001, high: 0.01}",
             "stages.0.space.lrr: not a trainer setting (see base:); did you mean lr?"),
            ("stages.0.fixed.augment.rotaton=10",
             "stages.0.fixed.augment.rotaton: not a trainer setting (see base:); did you mean "
             "augment.rotation?")):
        with pytest.raises(ConfigError) as caught:
            load_study(path, [given])
        assert str(caught.value).endswith(f"{said} (set by --set {given!r})"), str(
            caught.value)
