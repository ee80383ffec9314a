"""Self-describing files, in the spirit of nanoGPT's and litgpt's checkpoints: a model file
holds the weights and everything needed to rebuild and use them (settings, input spec, class
names, the epoch and its metrics); a resume file holds what continues a run exactly. Both are
typed, versioned, tagged with the trial they belong to, and loaded with weights_only=True.
A file asl-sweep did not write, or wrote in another version, is refused in one line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from asl_sweep.models.layers import InputSpec
from asl_sweep.runtime.errors import ModelFileError
from asl_sweep.runtime.files import atomic_torch_save, load_tensors
from asl_sweep.settings.config import TrainConfig

MODEL_FORMAT = "asl-sweep/model"
RESUME_FORMAT = "asl-sweep/resume"
VERSION = 2


KINDS = {MODEL_FORMAT: "model", RESUME_FORMAT: "resume"}


def _checked(path: Path, kind: str, map_location: Any = "cpu") -> dict:
    stored = load_tensors(path, map_location=map_location)
    if not isinstance(stored, dict) or "format" not in stored:
        older = isinstance(stored, dict) and {"model", "config"} <= set(stored)
        raise ModelFileError(
            f"{path}: written by an older asl-sweep (no format version); rerun the study to "
            f"write it again" if older else f"{path}: not an asl-sweep {KINDS[kind]} file")
    if stored["format"] != kind:
        raise ModelFileError(f"{path}: an asl-sweep {KINDS.get(stored['format'], 'other')} "
                             f"file, not a {KINDS[kind]} file")
    if stored.get("version") != VERSION:
        raise ModelFileError(f"{path}: {KINDS[kind]} file version {stored.get('version')}, this "
                             f"asl-sweep reads version {VERSION}; rerun the study to write it "
                             "again")
    return stored


@dataclass
class ModelFile:
    """A trained model as asl-sweep keeps it: best.pt of every trial, the registered model's
    source, what report/export/evaluate/predict read."""

    state: dict[str, torch.Tensor]
    config: TrainConfig
    spec: InputSpec
    classes: list[str]
    epoch: int
    metrics: dict[str, float]
    identity: dict[str, str] = field(default_factory=dict)
    # An ensemble's file: every member's weights (the same architecture, e.g. the repeats of
    # one configuration), their probabilities averaged; `state` is the member it was chosen
    # beside. Empty: one model.
    members: list[dict[str, torch.Tensor]] = field(default_factory=list)
    # Test-time views (models/views.py): the set of views its probabilities are averaged
    # over, chosen on validation; "none": the model alone.
    views: str = "none"

    def to_dict(self) -> dict:
        stored = {"format": MODEL_FORMAT, "version": VERSION, "model": self.state,
                  "config": self.config.model_dump(mode="json"), "spec": asdict(self.spec),
                  "classes": list(self.classes), "epoch": self.epoch,
                  "metrics": dict(self.metrics), "identity": dict(self.identity)}
        if self.members:
            stored["members"] = list(self.members)
        if self.views != "none":
            stored["views"] = self.views
        return stored

    def save(self, path: Path, sync: bool = True) -> Path:
        atomic_torch_save(self.to_dict(), path, sync)
        return path

    @classmethod
    def load(cls, path: Path, map_location: Any = "cpu") -> ModelFile:
        stored = _checked(Path(path), MODEL_FORMAT, map_location)
        try:
            spec = stored["spec"]
            return cls(state=stored["model"], config=TrainConfig.model_validate(stored["config"]),
                       spec=InputSpec(int(spec["image_size"]), int(spec["num_classes"]),
                                      tuple(spec["mean"]), tuple(spec["std"])),
                       classes=list(stored["classes"]), epoch=int(stored["epoch"]),
                       metrics=dict(stored["metrics"]), identity=dict(stored["identity"]),
                       members=list(stored.get("members", [])),
                       views=_known_views(stored.get("views", "none"), path))
        except (KeyError, TypeError, ValidationError) as e:
            raise ModelFileError(f"{path}: damaged asl-sweep model file ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:120]})") from None

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model with these weights, in eval mode (no pretrained weights are looked up:
        the file holds them all); an ensemble where the file has members, averaged over its
        test-time views where it has them."""
        from asl_sweep.models.registry import Ensemble, build_model
        from asl_sweep.models.views import with_views

        def one(state: dict[str, torch.Tensor]) -> nn.Module:
            model = build_model(self.config, self.spec, pretrained=False)
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise ModelFileError(f"weights do not fit the model their settings describe "
                                     f"({str(e).splitlines()[0][:160]})") from None
            return model

        model = Ensemble([one(s) for s in self.members]) if self.members else one(self.state)
        return with_views(model, self.views, self.spec.image_size).to(device).eval()


def _known_views(views: object, path: Path) -> str:
    from asl_sweep.models.views import VIEW_SETS

    if views not in VIEW_SETS:
        raise ModelFileError(f"{path}: unknown test-time view set {views!r} (this asl-sweep "
                             f"knows {', '.join(VIEW_SETS)}); rerun the study to write it again")
    return str(views)


@dataclass
class ResumeState:
    """last.pt: model and optimizer state, epoch history and every random state, so a
    resumed run equals an uninterrupted one."""

    identity: dict[str, str]
    model: dict[str, torch.Tensor]
    optimizer: dict
    history: list[dict[str, float]]
    rng_torch: torch.Tensor
    rng_cuda: list[torch.Tensor]
    generator: torch.Tensor
    scaler: dict = field(default_factory=dict)

    def save(self, path: Path, sync: bool = True) -> Path:
        # The fields as they are: resume_state took its copies on the training thread. Saved
        # through dataclasses.asdict, every tensor was deep-copied again here, on the
        # checkpoint writer's thread, and with 2 or more CPU threads those copies left every
        # later epoch of the training about 1.5x slower (benchmarks/resume_writes.py).
        own = {f.name: getattr(self, f.name) for f in fields(self)}
        atomic_torch_save({"format": RESUME_FORMAT, "version": VERSION, **own}, path, sync)
        return path

    @classmethod
    def load(cls, path: Path, map_location: Any = "cpu") -> ResumeState:
        stored = _checked(Path(path), RESUME_FORMAT, map_location)
        try:
            return cls(**{k: stored[k] for k in cls.__dataclass_fields__ if k != "scaler"},
                       scaler=stored.get("scaler") or {})
        except KeyError as e:
            raise ModelFileError(f"{path}: damaged asl-sweep resume file (no {e})") from None


def peek_identity(path: Path) -> dict[str, str]:
    """The identity a resume or model file was written for ({} if it has none)."""
    stored = load_tensors(path)
    return dict(stored.get("identity") or {}) if isinstance(stored, dict) else {}
