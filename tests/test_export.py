import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from asl_sweep.cli import main
from asl_sweep.export import Predictor, evaluate_split, registered_name
from asl_sweep.readback import read_stages
from asl_sweep.studyfile import load_study
from asl_sweep.workspace import Workspace


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny finished study, exported in every format."""
    root = tmp_path_factory.mktemp("export")
    study = root / "study.yaml"
    study.write_text(
        "study: tiny\n"
        "data: {synthetic: {per_class: 10}, image_size: 16, val_fraction: 0.3}\n"
        "base: {hidden: [32], epochs: 3, batch_size: 16, device: cpu}\n"
        "stages:\n"
        "  - {name: search, trials: 2, sampler: random,\n"
        "     space: {lr: {low: 1e-3, high: 1e-2, log: true}}}\n")
    home = root / "mlruns"
    assert main(["run", str(study), "--home", str(home)]) == 0
    out = root / "exported"
    assert main(["export", str(study), "--home", str(home), "--format", "all",
                 "--out", str(out)]) == 0
    cfg = load_study(study)
    ws = Workspace.at(home)
    return cfg, ws, out


@pytest.mark.parametrize("form", ["torchscript", "onnx", "mlflow"])
def test_each_exported_form_reproduces_the_validation_accuracy(exported, form):
    cfg, ws, out = exported
    (view,) = read_stages(cfg, ws)
    source = {"torchscript": str(out / "model.torchscript.pt"),
              "onnx": str(out / "model.onnx"),
              "mlflow": f"models:/{registered_name(cfg)}/1"}[form]
    predictor = Predictor(source, ws.home)
    assert predictor.classes == list("ABCDEFGHI") and predictor.image_size == 16
    predictions, truth, _ = evaluate_split(predictor, cfg, ws, 16)
    assert (predictions == truth).mean() == view.winner.metrics["val_acc"]


def test_torchscript_takes_uint8_and_float_alike(exported):
    _, _, out = exported
    module = torch.jit.load(str(out / "model.torchscript.pt"))
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    assert torch.allclose(module(x), module(x.float() / 255), atol=1e-6)
    bigger = torch.nn.functional.interpolate(x.float() / 255, size=(40, 40))
    assert module(bigger).shape == (3, 9)  # any size: resized inside


def test_registered_model_version_carries_lineage(exported):
    cfg, ws, out = exported
    client = MlflowClient(ws.tracking_uri)
    version = client.get_model_version(registered_name(cfg), "1")
    assert version.tags["study"] == "tiny" and version.tags["stage"] == "search"
    assert json.loads(version.tags["classes"]) == list("ABCDEFGHI")
    assert version.tags["decided_by.lr"] == "search" and "train_config" in version.tags
    card = (out / "MODEL_CARD.md").read_text()
    assert "validation accuracy" in card and (out / "confusion.png").exists()


def test_predict_names_a_bad_file_and_predicts_the_rest(exported, tmp_path, capsys):
    _, _, out = exported
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((30, 30, 3), 60 * i, dtype=np.uint8)).save(folder / f"ok{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    code = main(["predict", str(out / "model.onnx"), str(folder), "--json"])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1
    assert sorted(r["file"].rsplit("/", 1)[1] for r in rows) == ["ok0.png", "ok1.png"]
    assert all(r["class"] in "ABCDEFGHI" and 0 < r["probability"] <= 1 for r in rows)
    assert "broken.jpg" in captured.err


def test_a_transfer_model_exports_to_onnx_and_matches_torch(tmp_path):
    import onnxruntime

    from asl_sweep.backbones import build_transfer
    from asl_sweep.config import TrainConfig
    from asl_sweep.export import Deployable
    from asl_sweep.layers import InputSpec

    torch.manual_seed(0)
    cfg = TrainConfig(model="transfer", hidden=[8],
                      transfer={"backbone": "mobilenet_v2", "weights": "none"})
    model = Deployable(build_transfer(cfg, InputSpec(32, 3, (0.5,) * 3, (0.25,) * 3)), 32).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    path = tmp_path / "t.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["images"], dynamo=False,
                      opset_version=17)  # upsampling 32 -> 224 inside must export
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(None, {"images": x.numpy()})[0]
    with torch.inference_mode():
        assert np.allclose(onnx_probs, model(x).numpy(), atol=1e-4)
