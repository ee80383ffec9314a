"""Nothing a user loads may run code: predict loads only what asl-sweep exported itself,
through loaders that run no pickle, and refuses anything else in one line."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from asl_sweep.cli import main
from asl_sweep.runtime.workspace import Workspace


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(path)
    return path


def crafted_mlflow_model(folder, marker, claims_asl_sweep: bool):
    """An MLflow pyfunc model whose pickle would create `marker` when loaded."""
    folder.mkdir(parents=True)
    (folder / "python_model.pkl").write_bytes(pickle.dumps(Evil(marker)))
    spec = {"flavors": {"python_function": {"loader_module": "mlflow.pyfunc.model",
                                            "python_model": "python_model.pkl",
                                            "python_version": "3.11.7"}}}
    if claims_asl_sweep:  # a hostile folder that copies asl-sweep's marker
        (folder / "extra_files").mkdir()
        torch.save({"model": Evil(marker)}, folder / "extra_files" / "asl_sweep_model.pt")
        spec["metadata"] = {"asl_sweep": {"format": "asl-sweep/export", "version": 1,
                                          "classes": ["A"], "image_size": 16,
                                          "model_file": "extra_files/asl_sweep_model.pt"}}
    (folder / "MLmodel").write_text(yaml.safe_dump(spec))
    return folder


@pytest.mark.parametrize("claims", [False, True], ids=["plain", "fake-marker"])
def test_a_crafted_mlflow_model_folder_is_refused_and_runs_nothing(tmp_path, image, capsys,
                                                                   claims):
    marker = tmp_path / "pwned"
    folder = crafted_mlflow_model(tmp_path / "model", marker, claims)
    assert main(["predict", str(folder), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and str(folder) in err
    assert not marker.exists()


def registered_crafted_model(tmp_path, claims_asl_sweep: bool):
    """A home whose registry holds the crafted model as models:/evil/1 (alias champion)."""
    marker = tmp_path / "pwned"
    folder = crafted_mlflow_model(tmp_path / "model", marker, claims_asl_sweep)
    ws = Workspace.at(tmp_path / "mlruns").prepare()
    client = MlflowClient(ws.tracking_uri, registry_uri=ws.tracking_uri)
    run = client.create_run(client.create_experiment(
        "evil", artifact_location=ws.artifacts.as_uri()))
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.create_registered_model("evil")
    client.create_model_version("evil", f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias("evil", "champion", "1")
    # The same files as a logged model too (MLflow 3), whose id `export` prints
    logged = client.create_logged_model(run.info.experiment_id, name="evil",
                                        source_run_id=run.info.run_id)
    client.log_model_artifacts(logged.model_id, str(folder))
    (tmp_path / "logged-id").write_text(logged.model_id)
    return ws.home, marker


def test_a_crafted_registered_model_is_refused_and_runs_nothing(tmp_path, image, capsys):
    home, marker = registered_crafted_model(tmp_path, claims_asl_sweep=False)
    assert main(["predict", "models:/evil/1", str(image), "--home", str(home)]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()


def test_a_registered_model_is_found_in_every_form_mlflow_takes(tmp_path, image, capsys):
    """models:/NAME/latest, models:/NAME, models:/NAME@ALIAS and a logged model's id (which
    `export` prints; it was "no registered model m-...") reach the model (and its refusal);
    a name, version or alias the registry has not is one line saying what it has."""
    home, marker = registered_crafted_model(tmp_path, claims_asl_sweep=False)
    capsys.readouterr()
    logged = (tmp_path / "logged-id").read_text()
    for uri in ("models:/evil/latest", "models:/evil", "models:/evil@champion",
                f"models:/{logged}"):
        assert main(["predict", uri, str(image), "--home", str(home)]) == 2
        assert "refused" in capsys.readouterr().err, uri
    where = f"sqlite:///{home / 'mlflow.db'}"
    for uri, says in [
            ("models:/evil/7", "evil has no version 7 (its versions: 1)"),
            ("models:/evil@prod", "evil has no alias prod (its aliases: champion; its "
                                  "versions: 1)"),
            ("models:/nope/1", f"no registered model nope in {where} (registered there: "
                               "evil)"),
            ("models:/a/b/c", "not a model URI; give models:/NAME/VERSION"),
            ("models:/m-0123abc", f"no logged model m-0123abc in {where}"),
            ("runs:/0123abc/model", f"no run 0123abc in {where}")]:
        assert main(["predict", uri, str(image), "--home", str(home)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {uri}: {says}") and len(err.splitlines()) == 1, err
    assert not marker.exists()


def test_a_registered_forgery_with_asl_sweeps_marker_is_named_by_its_uri(tmp_path, image,
                                                                         capsys):
    """Its model file is a pickle: refused, and the line names models:/evil/1, not a file in
    the temporary folder it was downloaded to (gone by then)."""
    home, marker = registered_crafted_model(tmp_path, claims_asl_sweep=True)
    capsys.readouterr()  # the setup's own output (MLflow creating its tables, run alone)
    assert main(["predict", "models:/evil/1", str(image), "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: models:/evil/1: its asl_sweep_model.pt: ") and "refused" in err
    assert "/tmp" not in err and len(err.splitlines()) == 1 and not marker.exists()


def test_a_pickle_in_a_pt_file_is_refused(tmp_path, image, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"model": Evil(marker)}, path)
    assert main(["predict", str(path), str(image)]) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()


def test_a_torchscript_file_asl_sweep_did_not_export_is_refused(tmp_path, image, capsys):
    path = tmp_path / "other.torchscript.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(path))
    assert main(["predict", str(path), str(image)]) == 2
    assert "refused" in capsys.readouterr().err


@pytest.mark.parametrize("name, content, message", [
    ("model.onnx", b"\x08\x07 not a protobuf at all \xff\xff", "not a readable ONNX file"),
    ("weights.pt", b"plain text, not torch", "not a file asl-sweep wrote"),
    ("state.pt", None, "not an asl-sweep model file"),
])
def test_files_that_are_not_models_are_one_line(tmp_path, image, capsys, name, content, message):
    path = tmp_path / name
    if content is None:
        torch.save({"weight": torch.zeros(2)}, path)  # a state dict: tensors, not a model file
    else:
        path.write_bytes(content)
    assert main(["predict", str(path), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_an_image_given_as_the_model_says_the_model_comes_first(image, capsys):
    """`predict photo.jpg model.pt` (the order swapped) said "not a file asl-sweep wrote, or
    damaged (UnpicklingError)"."""
    assert main(["predict", str(image), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {image}: an image, not a model: give the model first "
                   "(model.torchscript.pt, model.onnx, models:/NAME/VERSION or the study "
                   "YAML), then the images")


def test_what_is_not_a_model_on_this_machine_says_what_to_give(tmp_path, image, capsys):
    """A web address was `https:/host/...: no such model file` (its slashes folded); a study's
    name (now its export), a registered model's name without models:/, the exports folder, or
    the card or the class list beside an export were "no such model", "without an MLmodel file" or "not a
    file asl-sweep wrote (UnpicklingError)". Each now says what to give instead."""
    home = tmp_path / "home"
    export = home / "exports" / "quick"
    export.mkdir(parents=True)
    (export / "model.torchscript.pt").write_bytes(b"")  # found by name: never read here
    (export / "MODEL_CARD.md").write_text("# quick\n")

    def said(model, *images):
        assert main(["predict", model, *(images or [str(image)]), "--home", str(home)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        return err

    assert said("https://example.com/model.onnx") == (
        "error: https://example.com/model.onnx: a web address; asl-sweep reads files on this "
        "machine: download it first")
    # A study's name is its export, as every command that names a study takes its name
    # (this export's file is empty: refused, the file named).
    assert said("quick").startswith(f"error: {export / 'model.torchscript.pt'}: ")
    assert said("asl-sweep-quick").endswith("(a registered model is named "
                                            "models:/asl-sweep-quick/latest or "
                                            "models:/asl-sweep-quick/N)")
    logged = "m-" + "0123456789abcdef" * 2  # a logged model's id, as the MLflow UI shows it
    assert said(logged).endswith(f"(a logged model's id is named models:/{logged})")
    assert said(str(home / "exports")).endswith(
        f"holds the exports of 1 study (quick); give one of them, e.g. {export}")
    assert said(str(export / "MODEL_CARD.md")).endswith(
        f"not a model; the model beside it is {export / 'model.torchscript.pt'} (or give the "
        f"folder, {export})")
    assert said(str(export), "-") == ("error: -: predict does not read images from standard "
                                      "input; give image files or folders that hold them")
    with pytest.raises(SystemExit) as e:
        main(["predict", str(export), "https://example.com/a.jpg"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        "https://example.com/a.jpg: a web address; asl-sweep reads files on this machine: "
        "download it first")


@pytest.mark.slow
def test_models_uri_without_a_store_creates_nothing(tmp_path, image):
    proc = subprocess.run([sys.executable, "-m", "asl_sweep.cli", "predict", "models:/x/1",
                           str(image), "--home", str(tmp_path / "nowhere")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no MLflow store" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "nowhere").exists()
    assert "Traceback" not in proc.stderr


def test_an_unknown_registered_model_in_a_home_with_none_is_one_line(tmp_path, image, capsys):
    home = Workspace.at(tmp_path / "mlruns").prepare().home
    MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_experiments()  # the store, empty
    capsys.readouterr()
    code = main(["predict", "models:/no-such-model/1", str(image), "--home", str(home)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(
        "error: models:/no-such-model/1: no registered model no-such-model in ")
    assert err.endswith("(nothing is registered there yet; `asl-sweep export STUDY.yaml` "
                        "registers models:/asl-sweep-STUDY/N)")


class Forged(torch.nn.Module):
    """A scripted module whose forward writes a file: what a forged export could carry."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        written = torch.from_file(self.path, True, 16)  # shared=True creates the file
        return torch.zeros(x.shape[0], 9) + written.sum() * 0


def _forged_torchscript(path, pwned, model_file=None):
    from asl_sweep.results.predict import MARKER, MODEL_FILE, marker

    extra = {f"{MARKER}.json": json.dumps(marker(list("ABCDEFGHI"), 16))}
    if model_file is not None:
        extra[MODEL_FILE] = model_file.read_bytes()
    torch.jit.save(torch.jit.script(Forged(str(pwned))), str(path), _extra_files=extra)
    return path


def test_a_forged_torchscript_with_asl_sweeps_marker_runs_nothing(tmp_path, image, capsys):
    pwned = tmp_path / "pwned"
    forged = _forged_torchscript(tmp_path / "model.torchscript.pt", pwned)
    torch.jit.load(str(forged))(torch.zeros(1, 3, 4, 4))  # the module really does write
    assert pwned.exists()
    pwned.unlink()
    assert main(["predict", str(forged), str(image)]) == 2
    assert "no asl-sweep model file inside" in capsys.readouterr().err
    assert not pwned.exists()


def test_a_forged_torchscript_around_a_real_model_file_predicts_from_the_file(tmp_path, image,
                                                                             capsys):
    from asl_sweep.models.layers import InputSpec
    from asl_sweep.models.registry import build_model
    from asl_sweep.settings.config import TrainConfig
    from asl_sweep.training.checkpoint import ModelFile

    cfg, spec = TrainConfig(hidden=[8]), InputSpec(16, 9, (0.5,) * 3, (0.25,) * 3)
    model = build_model(cfg, spec)
    real = ModelFile(model.state_dict(), cfg, spec, list("ABCDEFGHI"), 1,
                     {"val_acc": 0.5}, {}).save(tmp_path / "best.pt", sync=False)
    pwned = tmp_path / "pwned"
    forged = _forged_torchscript(tmp_path / "model.torchscript.pt", pwned, real)
    assert main(["predict", str(forged), str(image), "--json"]) == 0
    assert '"class"' in capsys.readouterr().out  # predicted by the rebuilt model
    assert not pwned.exists()  # the scripted forward never ran


def test_an_onnx_file_the_study_did_not_record_is_refused(tmp_path, image, capsys):
    import onnx
    from onnx import TensorProto, helper

    from asl_sweep.results.predict import MARKER, marker

    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["probabilities"])], "g",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.UINT8, [1, 3, 16, 16])])
    model = helper.make_model(graph)
    model.metadata_props.add(key=MARKER, value=json.dumps(marker(list("AB"), 16)))
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    assert main(["predict", str(path), str(image), "--home", str(tmp_path / "mlruns")]) == 2
    err = capsys.readouterr().err
    assert "refused: not the bytes a study" in err and "--home" in err


def test_a_torchscript_carrying_a_pickle_as_its_model_file_is_named_by_its_path(
        tmp_path, image, capsys):
    """The model file inside is a pickle that would run code: refused, and the line names
    the user's .torchscript.pt, not the temporary file it was read into."""
    pwned, pickled = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": Evil(pwned)}, pickled)
    forged = _forged_torchscript(tmp_path / "model.torchscript.pt", pwned, model_file=pickled)
    assert main(["predict", str(forged), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {forged}: its asl_sweep_model.pt: "), err
    assert "/tmp/tmp" not in err and len(err.splitlines()) == 1 and not pwned.exists()


def test_a_folder_to_predict_skips_what_a_mac_zip_or_a_notebook_leaves(tmp_path, image):
    from asl_sweep.results.predict import image_files

    folder = tmp_path / "unzipped"
    (folder / "__MACOSX").mkdir(parents=True)
    (folder / "__MACOSX" / "._photo.png").write_bytes(b"\x00\x05\x16\x07")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "photo.png").write_bytes(image.read_bytes())
    (folder / "._photo.png").write_bytes(b"\x00\x05\x16\x07")
    (folder / "photo.png").write_bytes(image.read_bytes())
    assert image_files([folder]) == [folder / "photo.png"]


@pytest.mark.slow
def test_a_large_folder_streams_its_predictions_and_stops_on_ctrl_c(tmp_path, image):
    """Every line came at the end, after the whole folder, and a Ctrl-C was taken only then:
    a folder of thousands of photos gave no sign of life and could not be stopped."""
    import os
    import signal

    from asl_sweep.models.layers import InputSpec
    from asl_sweep.models.registry import build_model
    from asl_sweep.settings.config import TrainConfig
    from asl_sweep.training.checkpoint import ModelFile

    cfg, spec = TrainConfig(hidden=[8]), InputSpec(16, 9, (0.5,) * 3, (0.25,) * 3)
    model = ModelFile(build_model(cfg, spec).state_dict(), cfg, spec, list("ABCDEFGHI"), 1,
                      {"val_acc": 0.5}, {}).save(tmp_path / "best.pt", sync=False)
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(5000):
        (folder / f"{n:04d}.png").write_bytes(image.read_bytes())
    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "predict", str(model),
                             str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout.readline().split() == ["file", "class", "probability"]
        assert proc.stdout.readline().startswith(str(folder / "0000.png"))  # as it comes
        proc.send_signal(signal.SIGINT)
        # Through the same buffered readers as the lines above (communicate() reads the pipes
        # beneath them, missing what readline() had read ahead); stderr is one line.
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    done = int(err.split("interrupted after ")[1].split()[0])
    assert 1 <= done < 5000 and len(out.splitlines()) == done - 1, err
    assert err.strip().endswith("of 5000 files (those above); rerun the command for them all")


def test_a_file_name_in_another_encoding_is_shown_escaped(tmp_path, image, capsys):
    """A photo named in Latin-1 (a zip made on Windows, unpacked here): printing its name to
    a UTF-8 terminal was a traceback (UnicodeEncodeError); it is shown with its byte
    escaped, in the table and in --json."""
    import os

    from asl_sweep.models.layers import InputSpec
    from asl_sweep.models.registry import build_model
    from asl_sweep.settings.config import TrainConfig
    from asl_sweep.training.checkpoint import ModelFile

    cfg, spec = TrainConfig(hidden=[8]), InputSpec(16, 9, (0.5,) * 3, (0.25,) * 3)
    model = ModelFile(build_model(cfg, spec).state_dict(), cfg, spec, list("ABCDEFGHI"), 1,
                      {"val_acc": 0.5}, {}).save(tmp_path / "best.pt", sync=False)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9.png")).write_bytes(image.read_bytes())
    done = subprocess.run([sys.executable, "-m", "asl_sweep.cli", "predict", str(model),
                           str(folder)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})  # not C's
    assert done.returncode == 0, done.stderr[-2000:]
    assert "caf\\xe9.png  " in done.stdout, done.stdout
    assert main(["predict", str(model), str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["file"].endswith("/caf\\xe9.png")
