"""Class and probability per image, from any exported form: a TorchScript file, an ONNX file,
an asl-sweep model file (best.pt), an MLflow model folder or a models:/ URI.

Nothing here runs code a file carries. The model is rebuilt from asl-sweep's own registry and
the typed settings of an asl-sweep model file, loading tensors only (weights_only): a
TorchScript export and an MLflow model are read through the model file inside them, never
through torch.jit.load or mlflow.pyfunc, which would run whatever the file carries. An ONNX
file runs in onnxruntime only when its bytes are the ones a study recorded when it exported
them (a marker inside a file proves nothing: anyone can write one). Anything else is refused
in one line naming it."""

from __future__ import annotations

import json
import logging
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from asl_sweep.data.images import (
    HEIF_SUFFIXES,
    IMAGE_SUFFIXES,
    decode_image,
    is_data,
    not_an_image,
)
from asl_sweep.models.registry import Deployable
from asl_sweep.runtime import signals
from asl_sweep.runtime.errors import (
    DataError,
    ModelFileError,
    StoreError,
    UserError,
    as_text,
    not_here,
)
from asl_sweep.runtime.files import sha256_of
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.settings.studyfile import is_study_file, load_study
from asl_sweep.training.checkpoint import ModelFile

log = logging.getLogger(__name__)

MARKER = "asl_sweep"  # TorchScript extra file asl_sweep.json, ONNX and MLmodel metadata key
MODEL_FILE = "asl_sweep_model.pt"  # the weights-only model file inside TorchScript and MLflow
TORCHSCRIPT_FILE = "model.torchscript.pt"  # what `export` writes into its folder
ONNX_FILE = "model.onnx"  # and with --format onnx
EXPORT_FORMAT, EXPORT_VERSION = "asl-sweep/export", 1
REFUSED = ("refused: asl-sweep loads only models it exported itself, and loading this one "
           "could run code it carries")


def marker(classes: list[str], image_size: int, **extra) -> dict:
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "classes": list(classes),
            "image_size": int(image_size), **extra}


def _checked_marker(source: str, raw: str | dict | None) -> dict:
    try:
        found = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        found = None
    if not isinstance(found, dict) or found.get("format") != EXPORT_FORMAT:
        raise ModelFileError(f"{source}: {REFUSED}")
    if found.get("version") != EXPORT_VERSION:
        raise ModelFileError(f"{source}: exported by another asl-sweep version "
                             f"({found.get('version')}); export it again")
    return found


@dataclass
class Predictor:
    kind: str
    classes: list[str]
    image_size: int
    run: Callable[[torch.Tensor], np.ndarray]  # uint8 [B, 3, S, S] -> probabilities

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(self.run(images))


def open_model(source: str, home: Path | str = "mlruns", tracking: str | None = None,
               overrides: list[str] | None = None) -> Predictor:
    """The model `source` names; `overrides`: the --set a study YAML ran with (its name)."""
    if source.startswith(("models:/", "runs:/")):
        with tempfile.TemporaryDirectory() as tmp:
            folder = _download(source, Workspace.at(home, tracking_uri=tracking), Path(tmp))
            return _from_mlflow_folder(source, folder)
    if (line := not_here(source)) is not None:
        raise ModelFileError(line)
    path = Path(source)
    if not path.exists():
        export = _named_export(source, home)
        if export is None:
            raise ModelFileError(f"{source}: no such model file or folder{_meant(source)}"
                                 + _not_exported(source, home))
        log.info(f"study {source}: its export, {export}")
        return open_model(str(export), home, tracking)
    if is_study_file(path):
        return open_model(str(study_export(path, Path(home), overrides)), home, tracking)
    if path.is_dir():
        if (model := exported_model(path)) and not (path / "MLmodel").is_file():
            # an `export` folder: its model, as for the study that wrote it
            return open_model(str(model), home, tracking)
        if not (path / "MLmodel").is_file():
            held = sorted(p for p in path.iterdir() if exported_model(p))
            if held:  # <home>/exports: the folder of every study's export
                raise ModelFileError(f"{source}: holds the exports of {len(held)} "
                                     f"{'study' if len(held) == 1 else 'studies'} "
                                     f"({', '.join(p.name for p in held[:5])}"
                                     f"{', ...' if len(held) > 5 else ''}); give one of "
                                     f"them, e.g. {held[0]}")
            raise ModelFileError(f"{source}: a folder without an MLmodel file; give a model "
                                 "file (.torchscript.pt, .onnx, best.pt) or an MLflow model")
        return _from_mlflow_folder(source, path)
    if path.suffix == ".onnx":
        return _from_onnx(path, Path(home))
    if _is_torchscript(path):
        return _from_torchscript(path)
    if _is_image(path):  # the arguments swapped, or the model left out
        raise ModelFileError(f"{source}: an image, not a model: give the model first "
                             "(model.torchscript.pt, model.onnx, models:/NAME/VERSION or the "
                             "study YAML), then the images")
    beside = path.parent / TORCHSCRIPT_FILE
    if path.suffix.lower() not in (".pt", ".pth") and beside.is_file():
        # MODEL_CARD.md or classes.json of an export folder
        raise ModelFileError(f"{source}: not a model; the model beside it is {beside} (or "
                             f"give the folder, {path.parent})")
    return _from_model_file(source, ModelFile.load(path))


def _home_of_name(source: str, home: Path | str) -> Workspace | None:
    """The home a bare study name (`predict quick photo.jpg`: as every command that names a
    study takes its name) is looked up in; None for a path, or a --home that is no home
    (the model's line comes first)."""
    if "/" in source or source.startswith("."):
        return None
    try:
        return Workspace.at(home)
    except UserError:
        return None


def _named_export(source: str, home: Path | str) -> Path | None:
    """The export folder of the study a bare name names, where `export` wrote one into the
    home."""
    ws = _home_of_name(source, home)
    if ws is None:
        return None
    export = ws.exports / source
    return export if exported_model(export) else None


def exported_model(folder: Path) -> Path | None:
    """The model an `export` folder holds: its TorchScript file, or its ONNX file where
    `export --format onnx` wrote only that; None where it holds neither."""
    return next((m for m in (folder / TORCHSCRIPT_FILE, folder / ONNX_FILE) if m.is_file()),
                None)


def _not_exported(source: str, home: Path | str) -> str:
    """Where a bare name is a study recorded in the home that `export` has not written: say
    so, and what writes it."""
    ws = _home_of_name(source, home)
    if ws is None or not ws.has_storage:
        return ""
    from asl_sweep.search import optuna_storage, recorded_studies

    if source not in recorded_studies(optuna_storage(ws.storage)):
        return ""
    return (f"; study {source} is recorded in {ws.home} but has no export there: run "
            f"`asl-sweep export {source}` first")


def _meant(source: str) -> str:
    """What a name that is no file or study most likely meant: a registered model's name,
    or a logged model's id as the MLflow UI shows it (m- and 32 hex digits), without its
    models:/ prefix."""
    if source.startswith("asl-sweep-"):
        return f" (a registered model is named models:/{source}/latest or models:/{source}/N)"
    if re.fullmatch(r"m-[0-9a-f]{32}", source):
        return f" (a logged model's id is named models:/{source})"
    return ""


def _is_image(path: Path) -> bool:
    """Whether PIL knows the file's header as an image's (it reads the header only)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def study_export(study: Path, home: Path, overrides: list[str] | None = None) -> Path:
    """The TorchScript file `asl-sweep export STUDY.yaml` wrote into `home`, for a user who
    names the study rather than a model (with the --set it ran with, `study=NEW` among them);
    one line saying what to do where there is none."""
    import shlex

    name = load_study(study, overrides).study
    folder = Workspace.at(home).exports / name
    path = exported_model(folder)
    if path is None:
        given = "".join(f" --set {shlex.quote(item)}" for item in overrides or [])
        raise ModelFileError(
            f"{study}: a study, not a model, and study {name} has no export at {folder}: run "
            f"`asl-sweep export {study}{given}` first (with the --home it ran with), or give "
            f"predict a model file (.torchscript.pt, .onnx) or models:/asl-sweep-{name}/VERSION")
    return path


def _download(uri: str, ws: Workspace, dst: Path) -> Path:
    if not ws.has_tracking_store:
        raise StoreError(f"{uri}: no MLflow store at {ws.home} to look it up in; pass --home "
                         "(or set ASL_SWEEP_HOME) to the study's folder, or --tracking")
    from asl_sweep.tracking.tracker import Tracker

    return Tracker(ws).download_model(uri, dst)


def _from_model_file(source: str, file: ModelFile) -> Predictor:
    model = Deployable(file.build(), file.spec.image_size).eval()
    return Predictor("model file", file.classes, file.spec.image_size,
                     lambda x: model(x).numpy())


def _from_mlflow_folder(source: str, folder: Path) -> Predictor:
    try:
        spec = yaml.safe_load((folder / "MLmodel").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise ModelFileError(f"{source}: its MLmodel file cannot be read") from None
    found = _checked_marker(source, ((spec or {}).get("metadata") or {}).get(MARKER)
                            if isinstance(spec, dict) else None)
    model_file = (folder / str(found.get("model_file", ""))).resolve()
    if not model_file.is_file() or not model_file.is_relative_to(folder.resolve()):
        raise ModelFileError(f"{source}: its asl-sweep model file is missing; {REFUSED}")
    predictor = _from_model_file(source, _load_inside(source, model_file))
    predictor.kind = "mlflow"
    return predictor


def _load_inside(source: str, path: Path) -> ModelFile:
    """The model file a TorchScript archive or an MLflow model carries, its errors named by
    what the user gave: `path` may be in a temporary folder gone by the time they read it."""
    try:
        return ModelFile.load(path)
    except ModelFileError as e:
        said = str(e).replace(f"{path}: ", "").replace(str(path), MODEL_FILE)
        raise type(e)(f"{source}: its {MODEL_FILE}: {said}") from None


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _from_torchscript(path: Path) -> Predictor:
    """The model file asl-sweep put inside the archive, rebuilt from the registry: the
    archive's scripted code is never loaded, so a forged module runs nothing."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        marked = [n for n in names if n.endswith(f"/extra/{MARKER}.json")]
        _checked_marker(str(path), archive.read(marked[0]).decode() if marked else None)
        inside = [n for n in names if n.endswith(f"/extra/{MODEL_FILE}")]
        if not inside:
            raise ModelFileError(f"{path}: no asl-sweep model file inside (an export from "
                                 "before asl-sweep kept one, or not asl-sweep's); export it "
                                 "again. predict never runs a TorchScript file's code")
        with tempfile.TemporaryDirectory() as tmp:
            model_file = Path(tmp) / MODEL_FILE
            model_file.write_bytes(archive.read(inside[0]))
            predictor = _from_model_file(str(path), _load_inside(str(path), model_file))
    predictor.kind = "torchscript"
    return predictor


def _recorded_onnx(path: Path, home: Path) -> bool:
    """Whether a study in `home` recorded these exact bytes when it exported them."""
    ws = Workspace.at(home)
    if not ws.has_tracking_store:
        return False
    from asl_sweep.tracking.tracker import Tracker

    return Tracker(ws).has_study_tag(f"exported_onnx.{sha256_of(path)}")


def _from_onnx(path: Path, home: Path) -> Predictor:
    import onnx
    import onnxruntime

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: the file is not ONNX
        raise ModelFileError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    props = {p.key: p.value for p in graph.metadata_props}
    found = _checked_marker(str(path), props.get(MARKER))
    if not _recorded_onnx(path, home):
        raise ModelFileError(
            f"{path}: refused: not the bytes a study in {home} exported (or that study is "
            "elsewhere: pass --home). ONNX files are for onnxruntime and other programs; "
            "asl-sweep predict also reads model.torchscript.pt, best.pt or models:/")
    session = onnxruntime.InferenceSession(graph.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return Predictor("onnx", found["classes"], found["image_size"],
                     lambda x: session.run(None, {"images": x.numpy()})[0])


def image_files(inputs: list[Path]) -> list[Path]:
    """The files to predict: each given file, and every file inside each given folder. A
    path that is not there, or a folder without one image file, is the user's to fix: one
    line naming it, before any model is read."""
    files = []
    for item in inputs:
        if item.is_dir():
            # A link to a folder is listed (and named as not followed), not passed over.
            found = sorted(p for p in item.rglob("*")
                           if (p.is_file() or p.is_symlink()) and is_data(p, item))
            # (a folder of HEIC photos without pillow-heif: each says what it needs)
            if not any(p.suffix.lower() in IMAGE_SUFFIXES | HEIF_SUFFIXES for p in found):
                raise DataError(f"{item}: a folder without image files (any of "
                                f"{', '.join(sorted(IMAGE_SUFFIXES))}); give image files or "
                                "folders that hold them")
            files += found
        elif item.exists():
            files.append(item)
        elif str(item) == "-":
            raise DataError("-: predict does not read images from standard input; give image "
                            "files or folders that hold them")
        else:
            raise DataError(f"{item}: no such file or folder; give image files or folders "
                            "that hold them")
    return files


def predict(source: str, inputs: list[Path], home: Path | str = "mlruns",
            tracking: str | None = None, overrides: list[str] | None = None
            ) -> tuple[list[Path], Iterator[dict]]:
    """The files to predict, and their results one by one as each is predicted: a
    prediction ({file, class, probability}) or a failure ({file, error}) for a file that
    cannot be read. The paths and the model are checked here, before the first result."""
    files = image_files(inputs)
    predictor = open_model(source, home, tracking, overrides)
    return files, _each(predictor, files)


def _each(predictor: Predictor, files: list[Path]) -> Iterator[dict]:
    for path in files:
        name = as_text(path)  # a name in another encoding, shown (a traceback on print)
        signals.check()  # Ctrl-C: stop between two images
        try:
            if not path.exists():  # gone since it was listed, or a dangling link
                raise DataError("no such file")
            if path.is_dir():
                raise DataError("a link to a folder, which is not followed: give the folder "
                                "it points to")
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(not_an_image(path))
            pixels = decode_image(path, predictor.image_size)
        except (DataError, OSError, ValueError) as e:
            yield {"file": name, "error": str(e) or type(e).__name__}
            continue
        x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).contiguous()
        probs = predictor(x)[0]
        best = int(probs.argmax())
        yield {"file": name, "class": predictor.classes[best],
               "probability": round(float(probs[best]), 4)}
