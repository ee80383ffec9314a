"""The winner, ready to use: TorchScript, ONNX and an MLflow registered model, each with
its preprocessing inside (uint8 or float images, resize, normalization) and a model card.
`predict` runs any of them on image files."""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from asl_sweep.checkpoint import ModelFile
from asl_sweep.config import StudyConfig
from asl_sweep.data import IMAGE_SUFFIXES, decode_image, load_image_set, prepare_split
from asl_sweep.errors import ConfigError, DataError, ExportError
from asl_sweep.files import atomic_write_text
from asl_sweep.plots import plot_confusion
from asl_sweep.readback import read_stages
from asl_sweep.selection import StageResult
from asl_sweep.studyfile import dump_resolved
from asl_sweep.tracking import Tracker
from asl_sweep.workspace import Workspace

FORMATS = ("torchscript", "onnx", "mlflow")


class Deployable(nn.Module):
    """images [B, 3, H, W], uint8 in 0..255 or float in 0..1 -> class probabilities."""

    def __init__(self, model: nn.Module, image_size: int):
        super().__init__()
        self.model = model
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return torch.softmax(self.model(x), dim=1)


@dataclass
class Winner:
    cfg: StudyConfig
    stage: str
    result: StageResult
    model: nn.Module
    file: ModelFile  # the checkpoint: settings, input spec, classes, metrics
    decided_by: dict[str, str]

    @property
    def classes(self) -> list[str]:
        return list(self.file.classes)

    @property
    def image_size(self) -> int:
        return self.file.spec.image_size

    def lineage(self) -> dict[str, str]:
        tags = {"study": self.cfg.study, "stage": self.stage, "trial": str(self.result.trial),
                "source_run": self.result.run_id, "classes": json.dumps(self.classes),
                "val_acc": f"{self.result.metrics['val_acc']:.6f}"}
        tags.update({f"decided_by.{k}": v for k, v in self.decided_by.items()})
        return tags


def load_winner(cfg: StudyConfig, ws: Workspace, stage: str | None = None) -> Winner:
    views = read_stages(cfg, ws)
    if stage is not None:
        views = [v for v in views if v.stage.name == stage]
        if not views:
            raise ConfigError(f"--stage {stage}: no such stage in {cfg.study} "
                              f"(stages: {', '.join(s.name for s in cfg.stages)})")
    finished = [v for v in views if v.winner is not None]
    if not finished:
        raise ConfigError(f"study {cfg.study}: no finished stage to export yet; run it first")
    view = finished[-1]
    winner = next(t for t in view.trials if t.number == view.winner.trial)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Tracker(ws).download(view.winner.run_id, "checkpoints/best.pt", Path(tmp))
        file = ModelFile.load(checkpoint)
    return Winner(cfg, view.stage.name, view.winner, file.build(), file,
                  winner.user_attrs.get("decided_by", {}))


def export(cfg: StudyConfig, ws: Workspace, formats: list[str], out: Path | None = None,
           stage: str | None = None, log=print) -> dict[str, Any]:
    winner = load_winner(cfg, ws, stage)
    out = (out or ws.home / "exports" / cfg.study).resolve()
    out.mkdir(parents=True, exist_ok=True)
    deployable = Deployable(winner.model, winner.image_size).eval()
    example = torch.zeros(2, 3, winner.image_size, winner.image_size, dtype=torch.uint8)
    (out / "classes.json").write_text(json.dumps(winner.classes))
    written: dict[str, Any] = {}
    failed: dict[str, str] = {}
    with warnings.catch_warnings():
        # torch.jit is marked deprecated, and tracing warns that the resize branch is fixed
        # at export time; both are expected here: the graph takes image_size inputs.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        exporters = {"torchscript": lambda: export_torchscript(deployable, winner, example, out),
                     "onnx": lambda: export_onnx(deployable, winner, example, out),
                     "mlflow": lambda: register_mlflow(deployable, winner, example, ws)}
        for kind in formats:
            try:
                written[kind] = exporters[kind]()
            except Exception as e:  # one format failing must not cost the others
                failed[kind] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    written["model_card"] = write_model_card(winner, ws, out, written)
    for kind, where in written.items():
        log(f"{kind}: {where}")
    if failed:
        raise ExportError("; ".join(f"{kind} export failed: {why}" for kind, why in failed.items()))
    return written


def export_torchscript(deployable: Deployable, winner: Winner, example: torch.Tensor,
                       out: Path) -> Path:
    inner = torch.jit.trace(deployable.model, example.float() / 255)
    scripted = torch.jit.script(Deployable(inner, winner.image_size))
    path = out / "model.torchscript.pt"
    torch.jit.save(scripted, str(path), _extra_files={"classes.json": json.dumps(winner.classes)})
    return path


def export_onnx(deployable: Deployable, winner: Winner, example: torch.Tensor,
                out: Path) -> Path:
    """ONNX inputs are typed: this graph takes uint8 images (0..255), as files decode."""
    import onnx

    path = out / "model.onnx"
    torch.onnx.export(deployable, (example,), str(path), input_names=["images"],
                      output_names=["probabilities"], dynamo=False, opset_version=17,
                      dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}})
    graph = onnx.load(str(path))
    for key, value in {"classes": json.dumps(winner.classes), **winner.lineage()}.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))
    return path


def registered_name(cfg: StudyConfig) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "-", f"asl-sweep-{cfg.study}")


def register_mlflow(deployable: Deployable, winner: Winner, example: torch.Tensor,
                    ws: Workspace) -> str:
    """A new registered-model version, saved with torch.export (pt2): no pickle to load."""
    tracker = Tracker(ws)
    experiment_id = tracker.experiment(winner.cfg.study)
    study_run = tracker.find_run(experiment_id, kind="study")
    run_id = tracker.new_run(experiment_id, f"export-{winner.stage}-{winner.result.trial}",
                             parent=study_run, kind="export", **winner.lineage())
    probabilities = deployable(example).detach().numpy()
    name = registered_name(winner.cfg)
    train_config = winner.file.config.model_dump(mode="json")
    version, uri = tracker.log_pytorch_model(
        run_id, deployable, name, example.numpy(), probabilities,
        metadata={"classes": winner.classes, "image_size": winner.image_size},
        files={"study.yaml": dump_resolved(winner.cfg),
               "train_config.json": json.dumps(train_config, indent=2)})
    tracker.tag_model_version(name, version, {**winner.lineage(),
                                              "train_config": json.dumps(train_config)})
    tracker.end(run_id)
    return f"models:/{name}/{version} ({uri})"


def evaluate_split(predict_probs, cfg: StudyConfig, ws: Workspace, image_size: int):
    """Predictions of `predict_probs(uint8 batch) -> probs` on the study's validation split."""
    split = prepare_split(load_image_set(cfg.data, ws.cache, log=lambda _: None), cfg.data,
                          torch.device("cpu"))
    if split.image_size != image_size:
        raise ConfigError(f"data.image_size {split.image_size} differs from the model's "
                          f"{image_size}")
    predictions = np.concatenate([np.asarray(predict_probs(split.x_val[i:i + 256])).argmax(1)
                                  for i in range(0, len(split.y_val), 256)])
    return predictions, split.y_val.numpy(), split.classes


def write_model_card(winner: Winner, ws: Workspace, out: Path, written: dict) -> Path:
    model = Deployable(winner.model, winner.image_size).eval()
    with torch.inference_mode():
        predictions, truth, classes = evaluate_split(lambda x: model(x).numpy(), winner.cfg, ws,
                                                     winner.image_size)
    n = len(classes)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (truth, predictions), 1)
    plot_confusion(matrix.tolist(), classes, out / "confusion.png")
    data = winner.cfg.data
    m = winner.result.metrics
    config = winner.file.config.model_dump(mode="json")
    unused = {"transfer"} if config["model"] == "mlp" else set()
    settings = "\n".join(f"- `{k}`: {v}" for k, v in config.items() if k not in unused)
    lines = [
        f"# Model card: {winner.cfg.study} / {winner.stage} / trial {winner.result.trial}",
        "",
        f"Classes ({n}): {', '.join(classes)}. Input: images [B, 3, H, W], uint8 (0-255) "
        f"or float (0-1), resized inside to {winner.image_size}x{winner.image_size}; "
        "output: class probabilities.",
        "",
        "## Data and split",
        f"- data: {data.root or 'built-in synthetic letters'}; {data.image_size}px",
        f"- split: validation fraction {data.val_fraction}, seed {data.seed}, stratified"
        + (f", grouped by `{data.group_pattern}`" if data.group_pattern else ""),
        "",
        "## Metrics (best epoch on the validation split)",
        f"- validation accuracy {m['val_acc']:.4f}, loss {m['val_loss']:.4f}",
        f"- training accuracy {m['train_acc']:.4f}, loss {m['train_loss']:.4f}, epoch {m['epoch']}",
        f"- recomputed from the exported weights: {(predictions == truth).mean():.4f} "
        f"on {len(truth)} images",
        "",
        "![confusion matrix](confusion.png)",
        "",
        "## Settings",
        settings,
        "",
        "## Lineage",
        *(f"- {k}: {v}" for k, v in winner.lineage().items() if k != "classes"),
        "",
        "## Files",
        *(f"- {k}: {v}" for k, v in written.items()),
        "",
    ]
    path = out / "MODEL_CARD.md"
    atomic_write_text(path, "\n".join(lines))
    return path


# ---------------------------------------------------------------- predict
class Predictor:
    """Loads any exported form: a TorchScript file, an ONNX file or an MLflow model URI."""

    def __init__(self, source: str, home: Path | str = "mlruns"):
        self.source = source
        path = Path(source)
        if not source.startswith(("models:/", "runs:/")) and not path.exists():
            raise ConfigError(f"{source}: no such model file")
        if source.startswith(("models:/", "runs:/")) or (path.is_dir() and (path / "MLmodel").exists()):
            self.kind = "mlflow"
            model = Tracker(Workspace.at(home)).load_pyfunc(source)
            meta = model.metadata.metadata or {}
            self.classes, self.image_size = meta["classes"], int(meta["image_size"])
            self._run = lambda x: np.asarray(model.predict(x.numpy()))
        elif path.suffix == ".onnx":
            import onnx
            import onnxruntime

            self.kind = "onnx"
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            self.classes = json.loads(props["classes"])
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            shape = session.get_inputs()[0].shape
            self.image_size = int(shape[-1])
            self._run = lambda x: session.run(None, {"images": x.numpy()})[0]
        elif path.is_file():
            self.kind = "torchscript"
            extra = {"classes.json": ""}
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            self.classes = json.loads(extra["classes.json"])
            self.image_size = int(module.image_size)
            self._run = lambda x: module(x).detach().numpy()
        else:
            raise ConfigError(f"{source}: not a TorchScript/ONNX file or MLflow model URI")

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self._run(images)


def image_files(inputs: list[Path]) -> list[Path]:
    files = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            files.append(item)
    return files


def predict(source: str, inputs: list[Path],
            home: Path | str = "mlruns") -> tuple[list[dict], list[dict]]:
    """(predictions, failures): every readable image is predicted; bad ones are named."""
    predictor = Predictor(source, home)
    rows, failures = [], []
    for path in image_files(inputs):
        try:
            if not path.exists():
                raise DataError("no such file")
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError("not an image file (unknown extension)")
            pixels = decode_image(path, predictor.image_size)
        except Exception as e:
            failures.append({"file": str(path), "error": str(e) or type(e).__name__})
            continue
        x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).contiguous()
        probs = predictor(x)[0]
        best = int(probs.argmax())
        rows.append({"file": str(path), "class": predictor.classes[best],
                     "probability": round(float(probs[best]), 4)})
    return rows, failures
