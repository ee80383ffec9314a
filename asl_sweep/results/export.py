"""The study's model, ready to use: TorchScript, ONNX and a registered MLflow model, each with
its preprocessing inside (uint8 or float images, resize, normalization) and asl-sweep's
marker, plus a model card. The model is the carried configuration's best repeat by
validation; the card reports that configuration's score on the untouched test split."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from optuna.trial import FrozenTrial
from torch import nn

from asl_sweep.models.registry import Deployable
from asl_sweep.results.predict import MARKER, MODEL_FILE, ONNX_FILE, TORCHSCRIPT_FILE, marker
from asl_sweep.results.readback import finished_stage, read_final, read_stages
from asl_sweep.runtime import signals
from asl_sweep.runtime.errors import (
    ExportError,
    StoreError,
    UserError,
    WriteError,
    environment_fault,
)
from asl_sweep.runtime.files import (
    atomic_write_bytes,
    atomic_write_text,
    make_folder,
    need_room,
    torch_bytes,
)
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search import (
    TEST_RULE,
    Scored,
    StageView,
    TrialKey,
    breakdown,
    confusion,
    earlier_views,
    exported_kind,
    final_candidates,
    load_refits,
    open_data,
    outcome_of,
    refit_candidate,
    score_final,
    summarize,
    views_lines,
)
from asl_sweep.settings.spec import StudyConfig
from asl_sweep.settings.studyfile import dump_resolved
from asl_sweep.tracking.plots import plot_confusion
from asl_sweep.tracking.tracker import Tracker
from asl_sweep.training.checkpoint import ModelFile

FORMATS = ("torchscript", "onnx", "mlflow")
_RECORDED = ("onnx", "mlflow")  # the forms the MLflow store records (a fingerprint, a version)


@dataclass
class Exported:
    cfg: StudyConfig
    view: StageView
    trial: FrozenTrial
    file: ModelFile
    model: nn.Module
    test: dict[str, Any]  # the configuration's test score over its repeats
    scored: Scored  # this trial's own test predictions

    @property
    def classes(self) -> list[str]:
        return list(self.file.classes)

    @property
    def image_size(self) -> int:
        return self.file.spec.image_size

    @property
    def final_model(self) -> str:
        """Which candidate this is: refit, ensemble or best_repeat (search.exported_kind)."""
        kind = exported_kind(self.test, self.cfg.final_model)
        assert kind is not None  # load_exported refuses a refit that is not on record
        return kind

    @property
    def refit(self) -> bool:
        return self.final_model == "refit"

    @property
    def described(self) -> str:
        if self.refit:
            members = self.test["refit"]["members"]
            unit = self.cfg.data.unit
            return (f"the refit of trials {', '.join(str(n) for n in members)} (each repeat's "
                    f"settings and seed trained again on every non-test {unit}, the last "
                    "epoch kept; their probabilities averaged)" if len(members) > 1 else
                    f"the refit of trial {members[0]} (its settings and seed trained again on "
                    f"every non-test {unit}, the last epoch kept)")
        if self.file.members:
            return (f"the ensemble of trials {', '.join(str(n) for n in self.test['trials'])} "
                    "(the configuration's repeats, their probabilities averaged)")
        return f"trial {self.trial.number} (the configuration's best repeat by validation)"

    @property
    def title(self) -> str:
        if self.refit:
            return f"refit of {len(self.test['refit']['members'])} repeats"
        return (f"ensemble of {len(self.file.members)} repeats" if self.file.members
                else f"trial {self.trial.number}")

    def decided_by(self) -> dict[str, str]:
        """Which stage decided each setting of the exported configuration."""
        outcome = outcome_of(self.trial)
        return outcome.decided_by if outcome is not None else {}

    def lineage(self) -> dict[str, str]:
        tags = {"study": self.cfg.study, "stage": self.view.stage.name,
                "trial": str(self.trial.number), "source_run": self.trial.user_attrs.get(
                    TrialKey.RUN, ""), "classes": json.dumps(self.classes),
                "val_acc": f"{self.file.metrics['val_acc']:.6f}",
                "test_acc_mean": f"{self.test['mean']:.6f}",
                "test_acc_std": f"{self.test['std']:.6f}",
                "test_acc": self.test["summary"], "test_rule": TEST_RULE,
                "final_model": self.final_model,
                "model_test_acc": f"{self.scored.accuracy:.6f}",
                "test_time_views": self.file.views}
        tags.update({f"decided_by.{k}": v
                     for k, v in self.decided_by().items()})
        return tags


def load_exported(cfg: StudyConfig, ws: Workspace, stage: str | None = None) -> Exported:
    view = finished_stage(cfg, read_stages(cfg, ws), stage)
    tracker, data = Tracker(ws), open_data(cfg, ws)
    trials = view.repeats()
    # the views the run chose for these repeats, not chosen again
    chosen = earlier_views(read_final(cfg, ws), trials, cfg.tta)
    scored, views = score_final(data, tracker, trials, cfg.tta, chosen=chosen)
    groups = data.test().groups
    test = summarize(scored, groups, "test") | {"tta": views}
    test["breakdown"] = breakdown(scored, groups, list(data.classes))  # per person and class
    chosen = view.export_trial()
    best, ensemble, entries = final_candidates(scored, chosen.number, groups)
    test.update(entries)
    mine = ensemble if cfg.final_model == "ensemble" and ensemble is not None else best
    if cfg.final_model == "refit":
        mine = _refit(cfg, ws, data, tracker, test, groups)
    return Exported(cfg, view, chosen, mine.model_file, mine.model_file.build(), test, mine)


def _refit(cfg: StudyConfig, ws: Workspace, data, tracker: Tracker, test: dict,
           groups: list[str] | None) -> Scored:
    """`final_model: refit`: the refit models the run trained (on record with its final
    score), scored with the repeats' views; their entry goes into `test`."""
    final = read_final(cfg, ws) or {}
    if "refit" not in final or final["refit"]["members"] != test["trials"]:
        raise UserError(f"study {cfg.study}: final_model is refit, but no refit of its final "
                        "repeats is on record (the setting came after its run): rerun "
                        f"`asl-sweep run` with the same study and arguments to train them, "
                        "then export")
    runs, members = final["refit"]["runs"], final["refit"]["members"]
    model, entry = refit_candidate(data, load_refits(tracker, runs, members),
                                   runs, test["tta"]["views"], groups)
    test["refit"] = entry
    return model


def export(cfg: StudyConfig, ws: Workspace, formats: list[str], out: Path | None = None,
           stage: str | None = None, log=print) -> dict[str, Any]:
    out = make_folder((out or ws.exports / cfg.study).resolve())  # before the scoring
    exported = load_exported(cfg, ws, stage)
    deployable = Deployable(exported.model, exported.image_size).eval()
    example = torch.zeros(2, 3, exported.image_size, exported.image_size, dtype=torch.uint8)
    atomic_write_text(out / "classes.json", json.dumps(exported.classes))
    written: dict[str, Any] = {}
    failed: dict[str, str] = {}
    store_fault: StoreError | None = None
    with warnings.catch_warnings():
        # torch.jit is marked deprecated, and tracing warns that the resize branch is fixed
        # at export time; both are expected here: the graph takes image_size inputs.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        exporters = {"torchscript": lambda: export_torchscript(deployable, exported, example, out),
                     "onnx": lambda: export_onnx(deployable, exported, example, out, ws),
                     "mlflow": lambda: register_mlflow(deployable, exported, example, ws)}
        for kind in formats:
            signals.check()  # Ctrl-C / SIGTERM: stop between two forms (each written whole)
            if store_fault is not None and kind in _RECORDED:
                continue  # the store that failed the form before: not waited for again
            try:
                written[kind] = exporters[kind]()
            except Exception as e:  # (MLflow's own exceptions too)
                fault = environment_fault(e, "the MLflow store (mlflow.db, or --tracking)")
                if isinstance(fault, WriteError):
                    raise fault from None  # a full disk: the next forms too
                if isinstance(fault, StoreError):
                    # (a home others may only read, a store away): the files that need no
                    # record are still written, then this line
                    store_fault = fault
                    continue
                if not isinstance(e, (UserError, OSError, RuntimeError, ImportError)):
                    raise  # a bug in asl-sweep: its traceback
                # One format failing (a missing package, an operator the exporter lacks)
                # must not cost the others.
                failed[kind] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    signals.check()
    written["model_card"] = write_model_card(exported, out, written)
    for kind, where in written.items():
        log(f"{kind}: {where}")
    if store_fault is not None:
        missing = [k for k in formats if k in _RECORDED and k not in written]
        raise StoreError(f"{store_fault} (not written: {', '.join(missing)}, which the store "
                         f"records; written: {', '.join(written)}, in {out})")
    if failed:
        raise ExportError("; ".join(f"{kind} export failed: {why}" for kind, why in failed.items()))
    return written


def _marker(exported: Exported) -> dict:
    return marker(exported.classes, exported.image_size, study=exported.cfg.study,
                  stage=exported.view.stage.name, trial=exported.trial.number)


def export_torchscript(deployable: Deployable, exported: Exported, example: torch.Tensor,
                       out: Path) -> Path:
    """TorchScript for other programs, with asl-sweep's weights-only model file inside: that
    file, never the scripted code, is what `asl-sweep predict` loads."""
    inner = torch.jit.trace(deployable.model, example.float() / 255)
    scripted = torch.jit.script(Deployable(inner, exported.image_size))
    path = out / TORCHSCRIPT_FILE
    # Written in memory, then to the file whole (a temp file renamed): torch's own file
    # writer aborts the process where the disk fills, leaving a cut model file behind.
    scripted_bytes = io.BytesIO()
    torch.jit.save(scripted, scripted_bytes, _extra_files={
        f"{MARKER}.json": json.dumps(_marker(exported) | {"model_file": MODEL_FILE}),
        "classes.json": json.dumps(exported.classes),
        MODEL_FILE: bytes(torch_bytes(exported.file.to_dict()))})
    atomic_write_bytes(path, scripted_bytes.getbuffer())
    return path


def export_onnx(deployable: Deployable, exported: Exported, example: torch.Tensor,
                out: Path, ws: Workspace) -> Path:
    """ONNX inputs are typed: this graph takes uint8 images (0..255), as files decode."""
    import onnx

    path = out / ONNX_FILE
    fixed_size = Deployable(deployable.model, exported.image_size, resize=False).eval()
    exported_bytes = io.BytesIO()  # in memory, then the file whole, as for TorchScript
    torch.onnx.export(fixed_size, (example,), exported_bytes, input_names=["images"],
                      output_names=["probabilities"], dynamo=False, opset_version=17,
                      dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}})
    graph = onnx.load_from_string(exported_bytes.getvalue())
    for key, value in {MARKER: json.dumps(_marker(exported)),
                       "classes": json.dumps(exported.classes), **exported.lineage()}.items():
        graph.metadata_props.add(key=key, value=value)
    data = graph.SerializeToString()
    # ONNX runs in onnxruntime, not from asl-sweep's registry: `predict` runs an ONNX file
    # only when its bytes are the ones recorded here, on the study's MLflow run; recorded
    # first, so that a store that cannot record them leaves no file predict would refuse.
    tracker = Tracker(ws)
    study_run = tracker.find_run(tracker.experiment(exported.cfg.study), kind="study")
    if study_run:
        tracker.set_tags(study_run, **{f"exported_onnx.{hashlib.sha256(data).hexdigest()}":
                                       str(path)})
    atomic_write_bytes(path, data)
    return path


def registered_name(cfg: StudyConfig) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "-", f"asl-sweep-{cfg.study}")


def register_mlflow(deployable: Deployable, exported: Exported, example: torch.Tensor,
                    ws: Workspace) -> str:
    """A new registered-model version, saved with torch.export (pt2), carrying asl-sweep's
    weights-only model file, which is what `asl-sweep predict` reads."""
    tracker = Tracker(ws)
    experiment_id = tracker.experiment(exported.cfg.study)
    study_run = tracker.find_run(experiment_id, kind="study")
    # Typed float32, since serving casts JSON to the signature's dtype (uint8 would turn
    # 0.7 into 0): integers arrive as 0..255, floats as 0..1, and the model tells them apart.
    deployable = Deployable(deployable.model, deployable.image_size).eval()
    example = example.float()
    probabilities = deployable(example).detach().numpy()
    name = registered_name(exported.cfg)
    train_config = exported.file.config.model_dump(mode="json")
    with tempfile.TemporaryDirectory() as tmp:
        model_file = exported.file.save(Path(tmp) / MODEL_FILE)
        # MLflow writes the model in the temporary folder first: the pt2 program (about the
        # weights' size) and a copy of the model file. On a disk with less room torch's
        # writer aborted the process (exit 134) or MLflow's copy was a traceback.
        weights = sum(t.numel() * t.element_size() for t in deployable.state_dict().values())
        need_room(Path(tmp), model_file.stat().st_size + weights + 2**20,
                  "MLflow's copy of the model")
        run_id = tracker.new_run(experiment_id,
                                 f"export-{exported.view.stage.name}-{exported.trial.number}",
                                 parent=study_run, kind="export", **exported.lineage())
        try:
            version, uri = tracker.log_pytorch_model(
                run_id, deployable, name, example.numpy(), probabilities,
                metadata={"classes": exported.classes, "image_size": exported.image_size,
                          MARKER: _marker(exported) | {
                              "model_file": f"extra_files/{MODEL_FILE}"}},
                files={"study.yaml": dump_resolved(exported.cfg),
                       "train_config.json": json.dumps(train_config, indent=2)},
                extra_files=[model_file],
                # What loading it needs: torch (the pt2 program) and numpy; nothing of
                # asl-sweep.
                requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"])
        except BaseException:
            tracker.end(run_id, "FAILED")  # never left RUNNING
            raise
    tracker.tag_model_version(name, version, {**exported.lineage(),
                                              "train_config": json.dumps(train_config)})
    tracker.describe_model(name, version, model_description(exported))
    tracker.end(run_id)
    return f"models:/{name}/{version} ({uri})"


def model_description(exported: Exported) -> str:
    """What the registry shows first: the test score with its interval and rule, the data,
    the study, and which trial this is."""
    source = _source(exported.cfg.data)
    return (f"Test accuracy {exported.test['summary']} ({TEST_RULE}). "
            f"Data: {source}, {len(exported.classes)} classes "
            f"({', '.join(exported.classes)}), {exported.image_size} px. "
            f"Study {exported.cfg.study}: stage {exported.view.stage.name}'s configuration, "
            f"{exported.described}, test accuracy {exported.scored.accuracy:.3f}. Input: "
            "float32 RGB images [B, 3, H, W] of any size, 0-255 or 0-1 (an image with a "
            "value above 1 is read as 0-255); see the model card (MODEL_CARD.md from "
            "`asl-sweep export`).")


def _source(data) -> str:
    syn = data.synthetic
    return (str(data.root) if data.root else
            f"the built-in synthetic {syn.kind} ({syn.signers} signers)")


# What each form takes, as the model card says it (for the forms an export wrote).
_FORM_INPUTS = {
    "torchscript": "  - TorchScript (`model.torchscript.pt`) and `asl-sweep predict`: images "
    "[B, 3, H, W], RGB, any H and W; uint8 in 0-255, or float in 0-255 or 0-1 (per image: a "
    "value above 1 means 0-255)",
    "onnx": "  - ONNX (`model.onnx`): uint8 images [B, 3, SIZE, SIZE], RGB, 0-255, at that size "
    "only (no resize inside: ONNX has no antialiased resize)",
    "mlflow": "  - the registered MLflow model (pyfunc, `mlflow models serve`): float32 images "
    "[B, 3, H, W], RGB, any H and W, in 0-255 or 0-1 (per image: a value above 1 means "
    "0-255); JSON integers and floats both work; a uint8 array through pyfunc is refused "
    "with the dtype it wants (cast it with .astype('float32')); the pixels must be finite: "
    "an image with a NaN or infinite value gets NaN probabilities, not a class"}


def write_model_card(exported: Exported, out: Path, written: dict) -> Path:
    classes, test = exported.classes, exported.test
    plot_confusion(confusion(exported.scored, classes), classes, out / "confusion.png",
                   f"confusion matrix (test split, {exported.title})")
    data = exported.cfg.data
    m = exported.file.metrics
    config = exported.file.config
    spec = exported.file.spec
    unused = {"cnn", "transfer"} - {config.model}  # the other families' settings
    settings = "\n".join(f"- `{k}`: {v}" for k, v in config.model_dump(mode="json").items()
                         if k not in unused)
    size = exported.image_size
    lines = [
        f"# Model card: {exported.cfg.study} / {exported.view.stage.name} / {exported.title}",
        "",
        f"Classes ({len(classes)}): {', '.join(classes)}.",
        "",
        "## Preprocessing (inside the model)",
        "- input, by form written here (each takes exactly this):",
        *(line.replace("SIZE", str(size)) for kind, line in _FORM_INPUTS.items()
          if kind in written),
        f"- resize to {size}x{size}: bilinear, antialiased, align_corners=False "
        "(torch.nn.functional.interpolate), skipped when the input is already that size",
        f"- normalize per channel: mean {[round(v, 4) for v in spec.mean]}, std "
        f"{[round(v, 4) for v in spec.std]}"
        + (" (ImageNet's, the backbone's own)" if config.model == "transfer"
           else " (the training images')"),
        "- " + "; ".join(line.strip() for line in views_lines(exported.test["tta"])),
        "- output: class probabilities (softmax), in the order of the classes above",
        f"- `asl-sweep predict` decodes files with PIL, turned upright as their EXIF "
        f"orientation says, to {size}x{size} RGB (bilinear) first (as training did)",
        "",
        "## Data and split",
        f"- data: {_source(data)}",
        f"- split: test {data.test_fraction}, validation {data.val_fraction}, seed {data.seed}, "
        + ("person-disjoint" if data.root is None or data.group_pattern else "stratified by class"),
        "",
        "## Test accuracy (the number to quote)",
        f"- {test['summary']}",
        f"- rule: {TEST_RULE}",
        f"- this model, {exported.described}: {exported.scored.accuracy:.4f} on "
        f"{len(exported.scored.truth)} test images (final_model: {exported.cfg.final_model}, "
        "fixed before the test split was read)",
        "",
        "![confusion matrix on the test split](confusion.png)",
        "",
        "## Validation (chose this configuration, so biased upward)",
        f"- validation accuracy {m['val_acc']:.4f}, loss {m['val_loss']:.4f} at its best epoch "
        f"{m['epoch']}; training accuracy {m['train_acc']:.4f}",
        f"- stage decision: {exported.view.result.decision}",
        "",
        "## Settings",
        settings,
        "",
        "## Lineage",
        *(f"- {k}: {v}" for k, v in exported.lineage().items() if k != "classes"),
        "",
        "## Files",
        *(f"- {k}: {v}" for k, v in written.items()),
        "",
    ]
    path = out / "MODEL_CARD.md"
    atomic_write_text(path, "\n".join(lines))
    return path
