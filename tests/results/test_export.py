import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from asl_sweep.cli import main
from asl_sweep.results.export import load_exported, registered_name
from asl_sweep.results.predict import open_model
from asl_sweep.results.readback import read_final
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.evaluation import predict_labels
from asl_sweep.search.session import open_data
from asl_sweep.settings.studyfile import load_study


def run_and_export(root, study_yaml: str):
    """Run a study written as YAML text, export it in every format: (cfg, ws, out)."""
    study = root / "study.yaml"
    study.write_text(study_yaml)
    home = root / "mlruns"
    assert main(["run", str(study), "--home", str(home)]) == 0
    out = root / "exported"
    assert main(["export", str(study), "--home", str(home), "--format", "all",
                 "--out", str(out)]) == 0
    return load_study(study), Workspace.at(home), out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny finished study, exported in every format."""
    return run_and_export(tmp_path_factory.mktemp("export"), (
        "study: tiny\n"
        "data: {synthetic: {per_class: 24}, image_size: 16}\n"
        "base: {hidden: [32], epochs: 3, batch_size: 16, device: cpu}\n"
        "stages:\n"
        "  - {name: search, trials: 2, sampler: random, confirm: {top: 1, repeats: 2},\n"
        "     space: {lr: {low: 1e-3, high: 1e-2, log: true}}}\n"))


@pytest.mark.parametrize("form", ["torchscript", "onnx", "mlflow", "model file"])
def test_each_exported_form_reproduces_the_test_accuracy(exported, form):
    cfg, ws, out = exported
    final = read_final(cfg, ws)
    source = {"torchscript": str(out / "model.torchscript.pt"), "onnx": str(out / "model.onnx"),
              "mlflow": f"models:/{registered_name(cfg)}/1",
              "model file": None}[form]
    if source is None:  # the trial's own best.pt, as asl-sweep keeps it
        source = str(out / "best.pt")
        load_exported(cfg, ws).file.save(out / "best.pt")
    predictor = open_model(source, ws.home)
    assert predictor.classes == list("ABCDEFGHI") and predictor.image_size == 16
    test = open_data(cfg, ws).test(16)
    predictions = np.concatenate([predictor(test.x[i:i + 64]).argmax(1)
                                  for i in range(0, len(test.y), 64)])
    accuracy = (predictions == test.y.numpy()).mean()
    # The exported model is the ensemble of the configuration's 2 repeats (final_model's
    # default), in every form: the test figure `run` printed for it.
    assert cfg.final_model == "ensemble" and len(final["ensemble"]["members"]) == 2
    assert accuracy == pytest.approx(final["ensemble"]["mean"], abs=1e-9)


def test_the_exported_model_is_the_ensemble_beside_the_best_repeat_by_validation(exported):
    cfg, ws, _ = exported
    chosen = load_exported(cfg, ws)
    values = {t.number: t.value for t in chosen.view.repeats()}
    assert chosen.trial.number == max(values, key=lambda n: (values[n], -n))
    assert len(chosen.file.members) == 2 and chosen.lineage()["final_model"] == "ensemble"
    single = load_exported(cfg.model_copy(update={"final_model": "best_repeat"}), ws)
    assert not single.file.members
    assert single.scored.accuracy == pytest.approx(chosen.test["best_repeat"]["accuracy"])
    model = chosen.file.build()
    test = open_data(cfg, ws).test(16)
    assert (predict_labels(model, test.x) == chosen.scored.predictions).all()


def test_torchscript_takes_uint8_and_float_alike(exported):
    _, _, out = exported
    module = torch.jit.load(str(out / "model.torchscript.pt"))
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    assert torch.allclose(module(x), module(x.float() / 255), atol=1e-6)
    # Float 0-255, the same rule as the registered model's (a value above 1 means 0-255);
    # read as 0-1 it gave a confident wrong class.
    assert torch.allclose(module(x), module(x.float()), atol=1e-6)
    bigger = torch.nn.functional.interpolate(x.float() / 255, size=(40, 40))
    assert module(bigger).shape == (3, 9)  # any size: resized inside


def test_registered_model_version_carries_lineage_and_the_test_score(exported):
    cfg, ws, out = exported
    client = MlflowClient(ws.tracking_uri)
    version = client.get_model_version(registered_name(cfg), "1")
    final = read_final(cfg, ws)
    assert version.tags["study"] == "tiny" and version.tags["stage"] == "search"
    assert json.loads(version.tags["classes"]) == list("ABCDEFGHI")
    assert float(version.tags["test_acc_mean"]) == pytest.approx(final["mean"], abs=1e-6)
    assert "never seen by the search" in version.tags["test_rule"]
    assert version.tags["decided_by.lr"] == "search" or "decided_by.lr" not in version.tags
    # What the registry's pages show first: the score with its interval, the data, the study.
    for text in (version.description,
                 client.get_registered_model(registered_name(cfg)).description):
        assert text.startswith(f"Test accuracy {final['summary']}")
        assert "built-in synthetic letters" in text and "Study tiny" in text
    card = (out / "MODEL_CARD.md").read_text()
    assert final["summary"] in card and "Preprocessing" in card
    # An MLP's card lists its own settings, not the other families', and says each thing once.
    assert "- `hidden`:" in card and "- `cnn`:" not in card and "- `transfer`:" not in card
    assert "test-time views: test-time views" not in card
    assert "- data: the built-in synthetic letters (" in card
    assert (out / "confusion.png").exists()
    assert "- ONNX (`model.onnx`): uint8 images [B, 3, 16, 16]" in card  # every form's input
    assert "- TorchScript (`model.torchscript.pt`)" in card and "pyfunc" in card


def test_predict_names_a_bad_file_and_predicts_the_rest(exported, tmp_path, capsys):
    _, ws, out = exported
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((30, 30, 3), 60 * i, dtype=np.uint8)).save(folder / f"ok{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    # Links the folder walk does not follow are named, not passed over without a word.
    (folder / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    code = main(["predict", str(out / "model.onnx"), str(folder), "--json", "--home",
                 str(ws.home)])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1
    assert sorted(r["file"].rsplit("/", 1)[1] for r in rows) == ["ok0.png", "ok1.png"]
    assert all(r["class"] in "ABCDEFGHI" and 0 < r["probability"] <= 1 for r in rows)
    assert "broken.jpg" in captured.err
    assert "more: a link to a folder, which is not followed" in captured.err
    assert "gone.png: no such file" in captured.err


def test_predict_refuses_a_missing_path_or_a_folder_without_images_in_one_line(exported,
                                                                              tmp_path, capsys):
    _, ws, out = exported
    model = str(out / "model.torchscript.pt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert main(["predict", model, str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'empty'}: a folder without image files")
    assert "\n" not in err
    assert main(["predict", model, str(tmp_path / "typo.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'typo.png'}: no such file or folder; give image files or folders "
        "that hold them")


def test_predict_takes_the_study_yaml_and_uses_its_export(exported, tmp_path, capsys,
                                                           monkeypatch):
    cfg, ws, out = exported
    study = out.parent / "study.yaml"
    image = tmp_path / "one.png"
    Image.fromarray(np.full((30, 30, 3), 90, dtype=np.uint8)).save(image)
    (ws.home / "exports" / cfg.study / "model.torchscript.pt").unlink(missing_ok=True)
    assert main(["predict", str(study), str(image), "--home", str(ws.home)]) == 2
    err = capsys.readouterr().err
    assert f"study {cfg.study} has no export at {ws.home / 'exports' / cfg.study}" in err
    assert f"run `asl-sweep export {study}` first" in err
    # By its name: recorded, not exported (it was "no such model file or folder" alone).
    assert main(["predict", cfg.study, str(image), "--home", str(ws.home)]) == 2
    assert capsys.readouterr().err.endswith(
        f"no such model file or folder; study {cfg.study} is recorded in {ws.home} but has "
        f"no export there: run `asl-sweep export {cfg.study}` first\n")
    assert main(["export", str(study), "--home", str(ws.home), "--format", "torchscript"]) == 0
    capsys.readouterr()
    assert main(["predict", str(study), str(image), "--home", str(ws.home), "--json"]) == 0
    by_study = json.loads(capsys.readouterr().out)
    assert main(["predict", str(out / "model.torchscript.pt"), str(image), "--json"]) == 0
    assert by_study == json.loads(capsys.readouterr().out)
    # The export folder itself: its TorchScript model (it was "a folder without an MLmodel
    # file")
    assert main(["predict", str(ws.home / "exports" / cfg.study), str(image), "--json"]) == 0
    assert by_study == json.loads(capsys.readouterr().out)
    # The study's name alone, as every command that names a study takes it (it was "no such
    # model file or folder (the study's export is ...: give that)").
    monkeypatch.chdir(tmp_path)
    assert main(["predict", cfg.study, str(image), "--home", str(ws.home), "--json"]) == 0
    assert by_study == json.loads(capsys.readouterr().out)
    # A study run as --set study=NEW is found by the same --set (its export copied here, as
    # its own export would be).
    shutil.copytree(ws.home / "exports" / cfg.study, ws.home / "exports" / "renamed")
    assert main(["predict", str(study), str(image), "--home", str(ws.home), "--json",
                 "--set", "study=renamed"]) == 0
    assert by_study == json.loads(capsys.readouterr().out)
    assert main(["predict", str(study), str(image), "--home", str(ws.home),
                 "--set", "study=nothere"]) == 2
    assert f"run `asl-sweep export {study} --set study=nothere` first" in capsys.readouterr().err
    assert main(["predict", str(out / "model.torchscript.pt"), str(image),
                 "--set", "study=renamed"]) == 2
    assert "is not a study YAML; --set names the study" in capsys.readouterr().err
    # Exported as ONNX alone (`export --format onnx`): that model, by the study's name, its
    # YAML or its folder (each was "no such model file or folder" or "no export").
    (ws.home / "exports" / cfg.study / "model.torchscript.pt").unlink()
    assert main(["export", str(study), "--home", str(ws.home), "--format", "onnx"]) == 0
    capsys.readouterr()
    for source in (cfg.study, str(study), str(ws.home / "exports" / cfg.study)):
        assert main(["predict", source, str(image), "--home", str(ws.home), "--json"]) == 0
        onnx = json.loads(capsys.readouterr().out)
        assert onnx["class"] == by_study["class"], source


def test_a_transfer_model_exports_to_onnx_and_matches_torch(tmp_path):
    import onnxruntime

    from asl_sweep.models.backbones import build_transfer
    from asl_sweep.models.layers import InputSpec
    from asl_sweep.models.registry import Deployable
    from asl_sweep.settings.config import TrainConfig

    torch.manual_seed(0)
    cfg = TrainConfig(model="transfer", hidden=[8],
                      transfer={"backbone": "mobilenet_v2", "weights": "none"})
    model = Deployable(build_transfer(cfg, InputSpec(32, 3, (0.5,) * 3, (0.25,) * 3)), 32,
                       resize=False).eval()  # as export_onnx builds it
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    path = tmp_path / "t.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["images"], dynamo=False,
                      opset_version=17)  # upsampling 32 -> 224 inside must export
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(None, {"images": x.numpy()})[0]
    with torch.inference_mode():
        assert np.allclose(onnx_probs, model(x).numpy(), atol=1e-4)


def test_a_cnn_exports_in_every_format_and_each_form_agrees(tmp_path):
    """With every test-time view (tta: all): each form averages the same six views."""
    cfg, ws, out = run_and_export(tmp_path, (
        "study: tinycnn\n"
        "data: {synthetic: {per_class: 24}, image_size: 16}\n"
        "base: {model: cnn, cnn: {channels: [8, 16]}, hidden: [], epochs: 2, device: cpu}\n"
        "tta: all\n"
        "stages:\n"
        "  - {name: s, trials: 1, confirm: null, space: {lr: [0.003]}}\n"))
    home = ws.home
    test = open_data(cfg, ws).test(16)
    chosen = load_exported(cfg, ws)
    assert chosen.file.views == "all" and chosen.lineage()["test_time_views"] == "all"
    assert read_final(cfg, ws)["tta"]["views"] == "all"
    chosen.file.save(out / "best.pt")
    forms = [str(out / "best.pt"), str(out / "model.torchscript.pt"), str(out / "model.onnx"),
             f"models:/{registered_name(cfg)}/1"]
    probs = [open_model(form, home)(test.x) for form in forms]
    for other in probs[1:]:
        assert np.allclose(probs[0], other, atol=1e-4)
    # The final score (each view computed once, the set their mean) is the model file's.
    assert np.allclose(chosen.scored.probabilities, probs[0], atol=1e-4)
    chosen.file.views = "none"  # the same weights without the views answer otherwise
    plain = torch.softmax(chosen.file.build()(test.x.float() / 255), 1).detach().numpy()
    assert not np.allclose(probs[0], plain, atol=1e-3)
    assert "test-time views: all (the mean over 6 views" in (out / "MODEL_CARD.md").read_text()
    # The registered program itself (pt2, loaded by MLflow without asl-sweep) averages them.
    import subprocess
    import sys

    from asl_sweep.tracking.tracker import Tracker

    uri = forms[-1]
    files = Tracker(ws).download_model(uri, tmp_path / "model")
    proc = subprocess.run([sys.executable, "-c", PLAIN_CLIENT, ws.tracking_uri, uri,
                           str(files / "requirements.txt")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    same = np.random.default_rng(0).integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    served = np.asarray(json.loads(proc.stdout.strip().splitlines()[-1])["same"])
    assert np.allclose(served, open_model(str(out / "best.pt"), home)(torch.from_numpy(same)),
                       atol=1e-5)


PLAIN_CLIENT = """
import sys
sys.modules["asl_sweep"] = None  # this process must not need asl-sweep to use the model
import json, numpy as np, mlflow, mlflow.pyfunc
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
rng = np.random.default_rng(0)
same = rng.integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
other = rng.integers(0, 256, (2, 3, 40, 50), dtype=np.uint8)
try:
    model.predict(same)
    refused = ""
except Exception as e:
    refused = str(e)
out = {"same": np.asarray(model.predict(same.astype(np.float32))).tolist(),
       "unit": np.asarray(model.predict(same.astype(np.float32) / 255)).tolist(),
       "other": np.asarray(model.predict(other.astype(np.float32))).shape,
       "refused": refused, "requirements": open(sys.argv[3]).read()}
print(json.dumps(out))
"""


def test_the_registered_model_serves_any_size_without_asl_sweep(exported, tmp_path):
    import subprocess
    import sys

    from asl_sweep.tracking.tracker import Tracker

    cfg, ws, _ = exported
    uri = f"models:/{registered_name(cfg)}/1"
    files = Tracker(ws).download_model(uri, tmp_path)
    proc = subprocess.run([sys.executable, "-c", PLAIN_CLIENT, ws.tracking_uri, uri,
                           str(files / "requirements.txt")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["other"] == [2, 9]  # any height and width, resized inside
    # uint8 is refused, naming the dtype it wants (MLflow's message also shows the start of
    # the array, abbreviated by numpy).
    assert out["refused"].endswith("dtype of input uint8 does not match expected dtype float32")
    requirements = sorted(line.split("==")[0] for line in out["requirements"].split())
    assert requirements == ["mlflow", "numpy", "torch"]  # what loading it needs, no more
    rng = np.random.default_rng(0)
    same = rng.integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    mine = open_model(uri, ws.home)(torch.from_numpy(same))
    assert np.allclose(np.asarray(out["same"]), mine, atol=1e-5)  # 0-255 floats
    assert np.allclose(np.asarray(out["unit"]), mine, atol=1e-5)  # 0-1 floats


def test_mlflow_models_serve_answers_integers_floats_and_other_sizes(exported, tmp_path):
    """The registered model behind `asl-sweep serve` (MLflow's own scoring server) on
    loopback, asked over REST as a user would: JSON integers (0-255), floats (0-1) and
    another size each give what `asl-sweep predict` gives; nothing is silently cast to a
    black image."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    cfg, ws, _ = exported
    uri = f"models:/{registered_name(cfg)}/1"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # `asl-sweep serve`, as the docs give it, from a shell whose PATH lacks the venv's bin:
    # `mlflow models serve --env-manager local` alone failed there ("uvicorn: not found").
    bare = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if Path(p).resolve() != Path(sys.executable).parent.resolve())
    server = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "serve", uri, "--home",
                               str(ws.home), "--port", str(port)],
                              env={**os.environ, "PATH": bare}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def ask(images) -> np.ndarray:
        body = json.dumps({"inputs": images}).encode()
        request = urllib.request.Request(f"{base}/invocations", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return np.asarray(json.loads(answer.read())["predictions"])

    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, server.stderr.read()
                time.sleep(0.5)
        rng = np.random.default_rng(1)
        images = rng.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
        mine = open_model(uri, ws.home)(torch.from_numpy(images))
        assert np.allclose(ask(images.tolist()), mine, atol=1e-5)
        assert np.allclose(ask((images / 255.0).tolist()), mine, atol=1e-5)
        other = rng.integers(0, 256, (1, 3, 30, 20), dtype=np.uint8)
        assert np.allclose(ask(other.tolist()), open_model(uri, ws.home)(torch.from_numpy(other)),
                           atol=1e-5)
        # A black image is not what a 0-1 image turns into: the answers differ.
        assert not np.allclose(ask((images / 255.0).tolist()),
                               ask(np.zeros_like(images).tolist()), atol=1e-4)
    finally:
        server.terminate()
        server.wait(30)


def test_export_says_what_it_wrote_and_mlflow_says_nothing(exported, tmp_path, capfd):
    """MLflow printed 'Successfully registered model ...' and "Created version '1' ..." past
    every logging level; asl-sweep's own lines say what was registered."""
    _, ws, out = exported
    capfd.readouterr()
    assert main(["export", str(out.parent / "study.yaml"), "--home", str(ws.home),
                 "--format", "mlflow", "--out", str(tmp_path / "again")]) == 0
    said = capfd.readouterr()
    assert "models:/asl-sweep-tiny/" in said.out
    assert "Successfully registered" not in said.out + said.err
    assert "Created version" not in said.out + said.err


@pytest.mark.parametrize("command", ["export", "report"])
def test_an_out_folder_with_a_file_in_the_way_is_one_line_before_anything_is_written(
        exported, tmp_path, capsys, command):
    cfg, ws, out = exported
    study = out.parent / "study.yaml"
    (tmp_path / "taken").write_text("a file")
    taken = tmp_path / "taken"
    # (below the file, the line named the folder asked for and not the file that blocks it)
    for where, blocker in ((taken, "this folder"), (taken / "sub" / "deeper",
                                                    f"it ({taken} is a file)")):
        assert main([command, str(study), "--home", str(ws.home), "--out", str(where)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: {where}: a file is in the way of {blocker}: name a folder, "
                       "or a path not yet taken, and rerun the same command")
    assert (tmp_path / "taken").read_text() == "a file"


def test_a_sigterm_during_export_stops_it_between_two_forms(exported, tmp_path):
    """A scheduler's SIGTERM (or Ctrl-C) was held until every form was written, the MLflow
    registration included: now the export stops before the next form, exit 130, and the
    forms it wrote are whole."""
    _, ws, out = exported
    target = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "export",
                             str(out.parent / "study.yaml"), "--home", str(ws.home),
                             "--out", str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (target / "model.torchscript.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == ("interrupted: nothing recorded was lost; rerun the "
                                            "same command")
    assert not (target / "MODEL_CARD.md").exists()  # written after every form: never reached
    assert open_model(str(target / "model.torchscript.pt"), ws.home).classes == list("ABCDEFGHI")


FILE_LIMIT = """
import resource, signal, sys
from asl_sweep.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


def test_a_disk_that_fills_during_export_leaves_no_cut_model_and_says_which_file(exported,
                                                                                 tmp_path):
    """A real write limit (RLIMIT_FSIZE, as a full disk) short of the TorchScript file (and
    above the model file inside it): torch's own file writer aborted the process (exit 134, a
    C++ trace) and left a cut model.torchscript.pt where predict would find it. Now: one line
    naming it, exit 2, and no model file."""
    _, ws, out = exported
    short = (out / "model.torchscript.pt").stat().st_size * 3 // 4
    target = tmp_path / "full"
    command = ["export", str(out.parent / "study.yaml"), "--home", str(ws.home),
               "--format", "torchscript", "--out", str(target)]
    done = subprocess.run([sys.executable, "-c", FILE_LIMIT, str(short), *command],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == (f"error: {target / 'model.torchscript.pt'}: could not be "
                                   "written (File too large); nothing recorded was lost: free "
                                   "space or make the folder writable, then rerun the same "
                                   "command")
    assert not (target / "model.torchscript.pt").exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no temp file left


def test_a_temporary_folder_without_room_for_mlflows_copy_is_one_line(exported, tmp_path):
    """MLflow writes the registered model in the temporary folder first; on a small one
    (a real tmpfs as TMPDIR) torch's writer inside MLflow aborted the process (exit 134, a
    C++ trace) or MLflow's copy of the model file was a traceback, leaving the export's run
    RUNNING. Now the room is checked first: one line naming the folder, no run made."""
    small = tmp_path / "tmp"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    cfg, ws, out = exported
    client = MlflowClient(ws.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.study).experiment_id
    before = len(client.search_runs([experiment]))
    try:
        done = subprocess.run([sys.executable, "-m", "asl_sweep.cli", "export",
                               str(out.parent / "study.yaml"), "--home", str(ws.home),
                               "--format", "mlflow"], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "TMPDIR": str(small)})
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: {re.escape(str(small))}/tmp\w+: [\d.]+ MB free, MLflow's copy "
                        r"of the model needs about [\d.]+ MB there; nothing recorded was lost: "
                        r"free space \(or point TMPDIR at a folder with room\), then rerun the "
                        r"same command", line), line
    assert len(client.search_runs([experiment])) == before  # no export run left RUNNING


def test_a_home_others_may_only_read_exports_what_needs_no_record_and_says_so(exported,
                                                                              tmp_path, capsys):
    """A shared results folder mounted read-only (a real read-only bind mount): export
    without --out said 'make the folder writable' and not that --out writes elsewhere; with
    --out the ONNX file was written and then its fingerprint could not be recorded (predict
    refuses such a file), the registration never tried, no model card, and the line did not
    say which files were there. Now the TorchScript file and the card are written and the
    line says which forms the store would have recorded."""
    _, ws, out = exported
    study = out.parent / "study.yaml"
    if subprocess.run(["mount", "--bind", str(ws.home), str(ws.home)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot make a read-only bind mount here (needs root)")
    target = tmp_path / "elsewhere"
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ws.home)], check=True)
        elsewhere = subprocess.run([sys.executable, "-m", "asl_sweep.cli", "export",
                                    str(study), "--home", str(ws.home), "--out", str(target)],
                                   capture_output=True, text=True, timeout=300)
        capsys.readouterr()
        home_only = main(["export", str(study), "--home", str(ws.home)])  # fails before writing
    finally:
        subprocess.run(["umount", "-l", str(ws.home)], capture_output=True)
    assert home_only == 2
    assert capsys.readouterr().err.strip().endswith(
        "then rerun the same command; or write them to another folder with --out DIR")
    assert elsewhere.returncode == 2, elsewhere.stderr[-2000:]
    line = elsewhere.stderr.strip()
    assert line.startswith("error: the MLflow store (mlflow.db, or --tracking) could not be "
                           "written (attempt to write a readonly database)"), line
    assert line.endswith(f"(not written: onnx, mlflow, which the store records; written: "
                         f"torchscript, model_card, in {target})"), line
    assert sorted(p.name for p in target.iterdir()) == [
        "MODEL_CARD.md", "classes.json", "confusion.png", "model.torchscript.pt"]
    assert open_model(str(target / "model.torchscript.pt"), ws.home).classes == list("ABCDEFGHI")
    card = (target / "MODEL_CARD.md").read_text()  # the inputs of the forms written, only
    assert "TorchScript (`model.torchscript.pt`)" in card and "ONNX" not in card
