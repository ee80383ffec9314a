"""The study as MLflow shows it: one method per event of the search, called by the flow
(study.py, trial.py); the only module of search/ that talks to MLflow (through
tracking.Tracker). Optuna holds the truth; this mirrors it as study -> stage -> trial runs,
each with its parameters, per-epoch metrics, checkpoint, decision and tags."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from asl_sweep.search.selection import StageResult
from asl_sweep.settings.config import CURVE_METRICS, METRICS, TrainConfig
from asl_sweep.settings.spec import StageConfig, StudyConfig
from asl_sweep.settings.studyfile import dump_resolved
from asl_sweep.tracking.tracker import Tracker
from asl_sweep.tracking.views import trials_view
from asl_sweep.training.train import EpochStats, TrainResult

CHECKPOINTS = "checkpoints"  # the folder of a run's best checkpoint (best.pt)


SOFTWARE = ("asl-sweep", "torch", "torchvision", "optuna", "mlflow", "numpy")


def software_versions() -> dict[str, str]:
    """What this process runs on, as tags of the study's run: a study is reproduced with the
    versions that ran it (`<package>_version`, and Python's)."""
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in SOFTWARE:
        module = sys.modules.get(name.replace("-", "_"))  # torch's own says its build (+cu130)
        try:
            found[f"{name.replace('-', '_')}_version"] = (
                getattr(module, "__version__", None) or version(name))
        except PackageNotFoundError:
            continue
    return found | {"python_version": platform.python_version()}


def _summary(result: TrainResult) -> dict[str, float]:
    """A training's summary metrics: its best epoch's, and its size."""
    best = asdict(result.best)
    return {f"best_{k}": best[k] for k in METRICS} | {"best_epoch": result.best.epoch,
                                                       "num_params": result.num_params}


@dataclass
class TrialRun:
    """A trial's MLflow run while it trains: its id, name and per-epoch log."""

    run_id: str
    name: str
    epochs: Any  # tracking.tracker.EpochLog

    def epoch(self, stats: EpochStats) -> None:
        self.epochs.add(stats.epoch, asdict(stats))


class Mirror:
    """The study as MLflow shows it, mirrored by one process."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.experiment_id = ""
        self.study_run = ""

    # --- the study -----------------------------------------------------------------------
    def open_experiment(self, cfg: StudyConfig) -> None:
        self.experiment_id = self.tracker.experiment(cfg.study, cfg.description, trials_view(
            [s.metric for s in cfg.stages], [k for s in cfg.stages for k in s.space]),
            cfg.stages[0].metric)

    def study_opened(self, cfg: StudyConfig, known_run: str | None) -> str:
        """The study's run: `known_run` reopened where the store still holds it (one read
        for every worker that joins), else the study's run found by its tags or a new one
        (returned)."""
        run = self.tracker.reopened(known_run) if known_run is not None else None
        if run is None:
            run = self.tracker.client.get_run(
                self.tracker.open_run(self.experiment_id, cfg.study, kind="study"))
        self.study_run = run.info.run_id
        if not run.data.params:
            self.tracker.log_params(self.study_run, {
                "data": cfg.data.model_dump(mode="json"),
                "stages": ",".join(s.name for s in cfg.stages)})
            self.tracker.set_tags(self.study_run, **software_versions())
        return self.study_run

    def study_ended(self, status: str) -> None:
        self.tracker.end(self.study_run, status)

    def final_scored(self, final: dict[str, Any], rule: str, test_dataset: Mapping) -> None:
        """The final test score on the study's run: tables, metrics and tags."""
        b, run = final["breakdown"], self.study_run
        self.tracker.log_table(run, b["by_person"], "test/by_person.json")
        self.tracker.log_table(run, b["by_class"], "test/by_class.json")
        self.tracker.log_table(run, [{"true": c, **dict(zip(b["classes"], row, strict=True))}
                                     for c, row in zip(b["classes"], b["confusion"],
                                                       strict=True)], "test/confusion.json")
        ensemble = {"test_acc_ensemble": final["ensemble"]["mean"]} if "ensemble" in final else {}
        views = final.get("tta", {})
        without = ({"test_acc_without_views": views["without"]["mean"]} if "without" in views
                   else {})
        self.tracker.log_metrics(run, {"test_acc_mean": final["mean"],
                                       "test_acc_std": final["std"],
                                       "test_acc_ci_low": final["ci"][0],
                                       "test_acc_ci_high": final["ci"][1]} | ensemble | without)
        self.tracker.set_tags(run, test_acc=final["summary"], test_rule=rule,
                              test_time_views=views.get("views", "none"))
        self.tracker.log_datasets(run, [test_dataset])

    # --- a stage -------------------------------------------------------------------------
    def stage_opened(self, index: int, stage: StageConfig, carried: dict[str, Any]) -> str:
        run = self.tracker.new_run(self.experiment_id, f"{index + 1}-{stage.name}",
                                   parent=self.study_run, kind="stage", stage=stage.name,
                                   goal=stage.goal, index=index,
                                   **{"mlflow.note.content": stage.goal})
        self.tracker.log_params(run, {"carried": carried, "metric": stage.metric,
                                      "trials": stage.trials, "target": stage.target})
        return run

    def stage_reopened(self, stage_run: str) -> None:
        self.tracker.reopened(stage_run)

    def stage_stopped(self, stage_run: str, status: str, **tags: str) -> None:
        """A stage that did not decide (killed, failed, its gate missed): never left RUNNING."""
        self.tracker.end(stage_run, status, **tags)

    def stage_decided(self, stage_run: str, stage: StageConfig, result: StageResult,
                      marks: dict[str, str], spent: list[str]) -> None:
        """The decision on the stage's run (what it adopted, the winner's metrics and learning
        curves), a `decision` tag on the runs in `marks`, and the checkpoints of the runs in
        `spent` deleted (nobody will read them)."""
        run = stage_run
        self.tracker.log_params(run, {"adopted": result.params or "nothing (kept incumbent)"})
        self.tracker.log_metrics(run, {f"winner_{k}": v for k, v in result.metrics.items()
                                       if k in METRICS} | {"winner_value": result.value})
        self._curves(run, result, stage.name)
        for run_id, word in marks.items():
            self.tracker.set_tags(run_id, decision=word)
        for run_id in spent:
            self.tracker.delete_artifacts(run_id, CHECKPOINTS)
        # The decision whole on the stage run's page (its description, under the goal): the
        # runs table shows the `decision` tag cut to its column's width.
        note = (f"{stage.goal}\n\n" if stage.goal else "") + f"Decision: {result.decision}"
        self.tracker.end(run, outcome=result.status, winner_trial=result.trial,
                         winner_run=result.run_id, decision=result.decision,
                         **{"mlflow.note.content": note})

    def _curves(self, stage_run: str, result: StageResult, stage: str) -> None:
        """The carried trial's learning curves, as a PNG on the stage's run."""
        if not result.run_id:
            return
        from asl_sweep.tracking.plots import plot_curves  # matplotlib: when a stage ends

        history = {k: self.tracker.metric_history(result.run_id, k) for k in CURVE_METRICS}
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_curves([m.step for m in history["val_acc"]],
                              {k: [m.value for m in v] for k, v in history.items()},
                              Path(tmp) / "curves.png", f"{stage}: trial {result.trial}")
            self.tracker.log_artifacts(stage_run, [png])

    # --- a trial -------------------------------------------------------------------------
    def trial_opened(self, name: str, stage_run: str, cfg: TrainConfig, tags: dict[str, Any],
                     decided: dict[str, str], datasets: list, metric: str,
                     named: Callable[[str], None]) -> TrialRun:
        """A trial's run, open; `named(run_id)` is called as soon as the run exists (before
        its parameters are logged: a worker killed after it leaves a run the others can
        close). `metric` (the stage's) is the first it logs, so MLflow's compare page charts
        it by default."""
        run_id = self.tracker.new_run(
            self.experiment_id, name, parent=stage_run, kind="trial", state="RUNNING", **tags,
            **{f"decided_by.{k}": v for k, v in decided.items()})
        named(run_id)
        self.tracker.log_params(run_id, cfg.applicable())
        self.tracker.log_datasets(run_id, datasets)
        return TrialRun(run_id, name, self.tracker.epoch_log(run_id, lead=metric))

    @contextlib.contextmanager
    def training(self, run: TrialRun) -> Iterator[None]:
        """While a trial trains: this process's system metrics on its run, and its epochs
        flushed at the end whatever happened."""
        try:
            with self.tracker.system_metrics(run.epochs):
                yield
        finally:
            run.epochs.flush()

    def resume_points(self, run: TrialRun) -> Callable[[Path, Path], None]:
        """What keeps a trial's resume points on its run (behind a tracking server)."""
        return lambda best, last: self.tracker.log_artifacts(run.run_id, [best, last], "resume")

    def has_checkpoint(self, run_id: str) -> bool:
        """Whether a finished training's best checkpoint is still on its run."""
        return self.tracker.has_artifact(run_id, f"{CHECKPOINTS}/best.pt")

    def checkpoint_restored(self, run_id: str, result: TrainResult) -> None:
        """A lost checkpoint trained again, put back on the run that had it."""
        if result.checkpoint is not None and result.checkpoint.exists():
            self.tracker.keep_file(run_id, result.checkpoint, CHECKPOINTS)

    def fetch_resume_points(self, run_id: str, into: Path) -> bool:
        return self.tracker.fetch_folder(run_id, "resume", into)

    def trial_finished(self, run: TrialRun, cfg: TrainConfig, result: TrainResult,
                       run_dir: Path, title: str, spent_resume: list[str | None]) -> None:
        """A finished training: resolved config, best checkpoint; the resume points of
        `spent_resume` runs deleted; the run FINISHED with its summary metrics."""
        self._training_files(run.run_id, cfg, result, run_dir, title)
        for spent in spent_resume:
            if spent is not None:
                self.tracker.delete_artifacts(spent, "resume")
        self.tracker.end(run.run_id, "FINISHED", metrics=_summary(result), state="COMPLETE")

    def fold_values(self, run: TrialRun, metric: str, values: list[float]) -> None:
        """A trial validated on several person folds: each fold's value, and their mean."""
        self.tracker.log_metrics(run.run_id, {f"{metric}_fold{f}": v for f, v in enumerate(values)}
                                 | {f"{metric}_folds_mean": sum(values) / len(values)})

    def trial_pruned(self, run: TrialRun, why: str = "") -> None:
        # MLflow has no "pruned": the pruner stopped it, so KILLED, and its name says so.
        self.tracker.rename(run.run_id, f"{run.name}-pruned")
        self.tracker.end(run.run_id, "KILLED", state="PRUNED",
                         **({"pruned": why[:500]} if why else {}))

    def trial_failed(self, run: TrialRun, error: str) -> None:
        """The trial's own failure: the search goes on."""
        self.tracker.end(run.run_id, "FAILED", state="FAIL", error=error[:500])

    def trial_stopped(self, run_id: str, status: str, error: str = "", trace: str = "") -> None:
        """Stopped by something not its own (a signal, a fault, a bug): queued again."""
        if trace:
            self.tracker.log_text(run_id, trace, "error/traceback.txt")
        self.tracker.end(run_id, status, state="FAIL", **({"error": error[:500]} if error else {}))

    def lost_trial_closed(self, run_id: str, why: str | None) -> bool:
        """A trial whose worker died without a word: its run FAILED, not left RUNNING.
        Whether it was still open."""
        if self.tracker.status(run_id) != "RUNNING":
            return False
        self.tracker.end(run_id, "FAILED", state="FAIL",
                         error=f"{why}; its run closed by a later run" if why
                         else "worker lost (killed or crashed)")
        return True

    def unnamed_runs_closed(self, study: str, trial: int) -> int:
        """A trial whose worker died between opening its run and naming it on the trial:
        its run (found by the trial's tags) FAILED, not left RUNNING. How many were open."""
        runs = self.tracker.running_runs(self.experiment_id, kind="trial", optuna_study=study,
                                         optuna_trial=str(trial))
        for run_id in runs:
            self.tracker.end(run_id, "FAILED", state="FAIL",
                             error="worker lost (killed or crashed) as its run opened")
        return len(runs)

    def training_logged(self, run_id: str, cfg: TrainConfig, result: TrainResult,
                          run_dir: Path, title: str, curves: bool = False) -> None:
        """A finished training's summary metrics, resolved config and best checkpoint."""
        self.tracker.log_metrics(run_id, _summary(result))
        self._training_files(run_id, cfg, result, run_dir, title, curves)

    def _training_files(self, run_id: str, cfg: TrainConfig, result: TrainResult,
                        run_dir: Path, title: str, curves: bool = False) -> None:
        """A finished training's resolved config and best checkpoint. Its per-epoch curves
        are in MLflow already (the UI charts them); a PNG of them is drawn for a single
        `train` and for each stage's carried trial, not for every trial."""
        history = result.history
        self.tracker.log_text(run_id, dump_resolved(cfg), "config.yaml")
        if curves:
            from asl_sweep.tracking.plots import plot_curves  # matplotlib where a PNG is drawn

            png = plot_curves([h.epoch for h in history],
                              {k: [getattr(h, k) for h in history] for k in CURVE_METRICS},
                              run_dir / "curves.png", title)
            self.tracker.log_artifacts(run_id, [png])
        if result.checkpoint is not None and result.checkpoint.exists():
            self.tracker.keep_file(run_id, result.checkpoint, CHECKPOINTS)

    # --- the final models trained on every non-test person (final_model: refit) --------
    def refit_run(self, of_trial: int) -> str | None:
        """The finished refit of repeat `of_trial` with its checkpoint on its run (a rerun
        reads it back, not trains it again); None where there is none. A refit left RUNNING
        by a stopped run is closed here: it is trained again."""
        tags = {"kind": "refit", "refit_of": str(of_trial)}
        for stale in self.tracker.running_runs(self.experiment_id, **tags):
            self.tracker.end(stale, "KILLED", state="FAIL",
                             error="stopped before it finished; trained again by a later run")
        run_id = self.tracker.find_run(self.experiment_id, **tags, state="COMPLETE")
        return run_id if run_id is not None and self.has_checkpoint(run_id) else None

    def refit_opened(self, of_trial: int, cfg: TrainConfig, images: int, fold: int,
                     whose: str, threads: int) -> TrialRun:
        """A refit's run, under the study's: its settings (and the CPU `threads` it trains
        on), and only training metrics per epoch (its validation people are in its
        training). `whose`: people, or images where the data names none."""
        name = f"refit-of-trial-{of_trial}"
        run_id = self.tracker.new_run(
            self.experiment_id, name, parent=self.study_run, kind="refit",
            refit_of=str(of_trial), state="RUNNING", **{"mlflow.note.content": (
                f"trial {of_trial}'s settings and seed trained again on the training and "
                f"validation {whose} of fold {fold} (every non-test "
                f"{'person' if whose == 'people' else 'image'}), last epoch kept: "
                "a member of the exported model (final_model: refit)")})
        self.tracker.log_params(run_id, cfg.applicable() | {"train_images": images,
                                                            "threads": threads})
        return TrialRun(run_id, name, self.tracker.epoch_log(run_id))

    def refit_finished(self, run: TrialRun, cfg: TrainConfig, result: TrainResult,
                       run_dir: Path) -> None:
        self._training_files(run.run_id, cfg, result, run_dir, run.name)
        last = result.history[-1]
        self.tracker.end(run.run_id, "FINISHED", metrics={
            "final_train_acc": last.train_acc, "final_train_loss": last.train_loss,
            "num_params": result.num_params}, state="COMPLETE")

    def refit_scored(self, entry: dict[str, Any]) -> None:
        """The refit's test figures on the study's run, beside the repeats' and ensemble's."""
        self.tracker.log_metrics(self.study_run, {"test_acc_refit": entry["mean"],
                                                  "test_acc_refit_members_mean":
                                                      entry["members_mean"]})

    # --- `asl-sweep train` ---------------------------------------------------------------
    def single_training(self, cfg: TrainConfig) -> TrialRun:
        run_id = self.tracker.new_run(self.experiment_id, "train", parent=self.study_run,
                                      kind="train")
        self.tracker.log_params(run_id, cfg.applicable())
        return TrialRun(run_id, "train", self.tracker.epoch_log(run_id))

    def run_ended(self, run_id: str, status: str) -> None:
        self.tracker.end(run_id, status)
