"""The study report, read back from what is stored (Optuna trials, MLflow runs and
checkpoints): Markdown plus a self-contained HTML page, with PNG plots beside them."""

from __future__ import annotations

import base64
import html
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from asl_sweep.checkpoint import ModelFile
from asl_sweep.config import METRICS, StudyConfig
from asl_sweep.data import load_image_set, prepare_split
from asl_sweep.errors import ConfigError
from asl_sweep.files import atomic_write_text
from asl_sweep.plots import plot_confusion, plot_curves
from asl_sweep.readback import StageView, read_stages
from asl_sweep.store import load_stage_study, optuna_storage
from asl_sweep.tracking import Tracker
from asl_sweep.workspace import Workspace

GAP_OVERFIT, FIT_LOW = 0.15, 0.8


# ---------------------------------------------------------------- a tiny document model
@dataclass
class Doc:
    """Headings, paragraphs, tables and images, rendered to Markdown and to HTML."""

    folder: Path
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def img(self, path: Path | None, alt: str) -> None:
        if path is not None and path.exists():
            self.blocks.append(("img", (path, alt)))

    def images(self) -> list[Path]:
        return [data[0] for kind, data in self.blocks if kind == "img"]

    def markdown(self) -> str:
        out = []
        for kind, data in self.blocks:
            if kind == "h":
                out.append("#" * data[0] + " " + data[1])
            elif kind == "p":
                out.append(data)
            elif kind == "table":
                header, rows = data
                out.append("\n".join(["| " + " | ".join(header) + " |",
                                      "|" + "---|" * len(header),
                                      *("| " + " | ".join(r) + " |" for r in rows)]))
            else:
                path, alt = data
                out.append(f"![{alt}]({path.relative_to(self.folder)})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
               "</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;"
               "padding:0 1em}table{border-collapse:collapse;font-size:90%}td,th{border:1px "
               "solid #ccc;padding:3px 8px;text-align:left}img{max-width:100%}</style></head>"
               "<body>"]
        for kind, data in self.blocks:
            if kind == "h":
                out.append(f"<h{data[0]}>{html.escape(data[1])}</h{data[0]}>")
            elif kind == "p":
                out.append(f"<p>{html.escape(data)}</p>")
            elif kind == "table":
                header, rows = data
                out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header)
                           + "</tr>" + "".join("<tr>" + "".join(
                               f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                           + "</table>")
            else:
                path, alt = data
                encoded = base64.b64encode(path.read_bytes()).decode()
                out.append(f"<p><img alt='{html.escape(alt)}' "
                           f"src='data:image/png;base64,{encoded}'></p>")
        return "\n".join(out) + "</body></html>\n"


# ---------------------------------------------------------------- helpers
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _acc(t: FrozenTrial, key: str) -> str:
    value = t.user_attrs.get("metrics", {}).get(key)
    return f"{value:.3f}" if value is not None else "-"


def diagnosis(train_acc: float, val_acc: float) -> str:
    gap = train_acc - val_acc
    if train_acc < FIT_LOW:
        return (f"train accuracy {train_acc:.1%} is low: the model underfits; more capacity, "
                "more epochs or a higher learning rate should help before more regularization.")
    if gap > GAP_OVERFIT:
        return (f"train {train_acc:.1%} vs validation {val_acc:.1%} (gap {gap:.1%}): it "
                "overfits; more regularization (dropout, weight decay, augmentation) or more "
                "data should help.")
    return (f"train {train_acc:.1%} vs validation {val_acc:.1%} (gap {gap:.1%}): fit and "
            "generalization are balanced; more capacity may now pay off.")


def _optuna_plot(kind: str, study: optuna.Study, path: Path) -> Path | None:
    from optuna.visualization import matplotlib as ovm

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plot = ovm.plot_optimization_history if kind == "history" else ovm.plot_param_importances
            ax = plot(study)
        fig = ax.figure
        fig.set_size_inches(7, 4)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        import matplotlib.pyplot as plt

        plt.close(fig)
        return path
    except Exception:  # too few trials, or nothing varied: the report says so instead
        return None


# ---------------------------------------------------------------- the report
def write_report(cfg: StudyConfig, ws: Workspace, out: Path | None = None,
                 log=print) -> Path:
    folder = (out or ws.reports / cfg.study).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(ws)
    storage = optuna_storage(ws.storage)
    views = read_stages(cfg, ws)
    if not any(v.trials for v in views):
        raise ConfigError(f"study {cfg.study}: nothing recorded yet in {ws.storage}; "
                          "run it first (asl-sweep run)")
    doc = Doc(folder)
    doc.h(1, f"asl-sweep report: {cfg.study}")
    if cfg.description:
        doc.p(cfg.description)
    source = str(cfg.data.root) if cfg.data.root else "built-in synthetic letters A-I"
    doc.p(f"Data: {source}, {cfg.data.image_size}px, validation fraction "
          f"{cfg.data.val_fraction}, split seed {cfg.data.seed}"
          + (f", grouped by {cfg.data.group_pattern!r}" if cfg.data.group_pattern else "")
          + f". Generated {datetime.now():%Y-%m-%d %H:%M}.")

    summary_at = len(doc.blocks)
    summary_rows = []
    for index, view in enumerate(views, start=1):
        summary_rows.append(_stage_section(doc, index, view, cfg, storage, tracker, folder))
    doc.blocks[summary_at:summary_at] = [("h", (2, "Summary across stages"))]
    doc.blocks.insert(summary_at + 1, ("table", (
        ["stage", "goal", "trials", "winner", "metric", "train acc", "val acc", "carried"],
        summary_rows)))
    _final_section(doc, views, cfg, ws, tracker, folder)

    md_path = folder / "report.md"
    atomic_write_text(md_path, doc.markdown())
    atomic_write_text(folder / "report.html", doc.html(f"asl-sweep report: {cfg.study}"))
    experiment = tracker.client.get_experiment_by_name(cfg.study)
    if experiment is not None:
        study_run = tracker.find_run(experiment.experiment_id, kind="study")
        if study_run:
            tracker.log_artifacts(study_run, [md_path, folder / "report.html", *doc.images()],
                                  "report")
    log(f"report: {md_path} and {folder / 'report.html'}")
    return md_path


def _stage_section(doc: Doc, index: int, view: StageView, cfg: StudyConfig, storage,
                   tracker: Tracker, folder: Path) -> list[str]:
    stage = view.stage
    doc.h(2, f"Stage {index}: {stage.name}")
    doc.p(f"Goal: {stage.goal or '-'}. Metric: {stage.metric} ({stage.direction})"
          + (f", target {stage.target}" if stage.target is not None else "")
          + f"; budget {stage.trials} trials, {stage.sampler} sampler.")
    doc.p("Started from: " + (", ".join(f"{k}={_fmt(v)}" for k, v in view.carried.items())
                              or "the base settings") + ".")
    if not view.trials:
        doc.p("Not run yet.")
        return [stage.name, stage.goal, "0", "-", "-", "-", "-", "-"]
    rows = []
    for t in sorted(view.trials, key=lambda t: t.number):
        seed = " (human)" if t.user_attrs.get("seed_trial") else ""
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        rows.append([f"{t.number}{seed}", t.state.name, params, _acc(t, "train_acc"),
                     _acc(t, "val_acc")])
    doc.table(["trial", "state", "parameters", "train acc", "val acc"], rows)

    winner = view.winner
    by_number = {t.number: t for t in view.trials}
    baselines = [t for t in view.trials
                 if t.user_attrs.get("seed_trial") and t.state == TrialState.COMPLETE]
    if winner is not None:
        w = by_number[winner.trial]
        line = (f"Search winner: trial {winner.trial} ({winner.status}), {stage.metric} "
                f"{winner.value:.4f}, train acc {_acc(w, 'train_acc')}, val acc "
                f"{_acc(w, 'val_acc')}.")
        for b in baselines:
            line += (f" Human baseline (trial {b.number}): {stage.metric} {b.value:.4f}, "
                     f"train acc {_acc(b, 'train_acc')}, val acc {_acc(b, 'val_acc')}.")
        doc.p(line)
        doc.p("Carried forward: " + ", ".join(f"{k}={_fmt(v)}" for k, v in winner.params.items())
              + ".")
        doc.p("Diagnosis: " + diagnosis(winner.metrics["train_acc"], winner.metrics["val_acc"]))
        if winner.run_id:
            history = {k: tracker.metric_history(winner.run_id, k) for k in METRICS}
            epochs = [m.step for m in history["val_acc"]]
            curves = plot_curves(epochs, {k: [m.value for m in v] for k, v in history.items()},
                                 folder / f"{index:02d}-{stage.name}-curves.png",
                                 f"{stage.name}: winner (trial {winner.trial})")
            doc.img(curves, f"{stage.name} winner learning curves")
    else:
        doc.p("No winner yet: the stage is unfinished.")
    study = load_stage_study(cfg, stage, storage)
    doc.img(_optuna_plot("history", study, folder / f"{index:02d}-{stage.name}-history.png"),
            f"{stage.name} optimization history")
    importance = _optuna_plot("importance", study,
                              folder / f"{index:02d}-{stage.name}-importance.png")
    if importance is None:
        doc.p("Parameter importance: not enough finished trials with varied parameters.")
    doc.img(importance, f"{stage.name} parameter importance")

    states = view.by_state()
    trials = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    if winner is None:
        return [stage.name, stage.goal, trials, "-", "-", "-", "-", "-"]
    return [stage.name, stage.goal, trials, str(winner.trial), f"{winner.value:.4f}",
            f"{winner.metrics['train_acc']:.3f}", f"{winner.metrics['val_acc']:.3f}",
            ", ".join(f"{k}={_fmt(v)}" for k, v in winner.params.items())]


def _final_section(doc: Doc, views: list[StageView], cfg: StudyConfig, ws: Workspace,
                   tracker: Tracker, folder: Path) -> None:
    finished = [v for v in views if v.winner is not None and v.winner.run_id]
    doc.h(2, "Final model")
    if not finished:
        doc.p("No stage has finished yet.")
        return
    last = finished[-1]
    w = last.winner
    doc.p(f"The winner of stage {last.stage.name} (trial {w.trial}): validation accuracy "
          f"{w.metrics['val_acc']:.1%}, train accuracy {w.metrics['train_acc']:.1%}, "
          f"best epoch {w.metrics['epoch']}.")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            checkpoint = tracker.download(w.run_id, "checkpoints/best.pt", Path(tmp))
        except Exception as e:
            doc.p(f"(no checkpoint to evaluate: {e})")
            return
        model = ModelFile.load(checkpoint).build()
    data = prepare_split(load_image_set(cfg.data, ws.cache, log=lambda _: None), cfg.data,
                         torch.device("cpu"))
    with torch.inference_mode():
        predictions = torch.cat([model(data.x_val[i:i + 256].float() / 255).argmax(1)
                                 for i in range(0, len(data.y_val), 256)])
    n = len(data.classes)
    matrix = torch.zeros(n, n, dtype=torch.int64)
    matrix.index_put_((data.y_val, predictions), torch.ones_like(predictions), accumulate=True)
    accuracy = (predictions == data.y_val).float().mean().item()
    doc.p(f"Recomputed on the validation split from the stored checkpoint: {accuracy:.1%} "
          f"({len(data.y_val)} images).")
    doc.img(plot_confusion(matrix.tolist(), data.classes, folder / "confusion.png"),
            "confusion matrix")
    per_class = [[c, f"{matrix[i, i].item() / max(1, matrix[i].sum().item()):.1%}"]
                 for i, c in enumerate(data.classes)]
    doc.table(["class", "validation accuracy"], per_class)
