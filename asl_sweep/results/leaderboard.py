"""Plain-text views of a study read back from its Optuna store: the leaderboard printed after
`run`, and `status`. Each number says which split and which rule produced it."""

from __future__ import annotations

from pathlib import Path

from asl_sweep.results.readback import final_in_progress, read_final, read_stages
from asl_sweep.runtime.errors import StoreError
from asl_sweep.runtime.workspace import Workspace, shown
from asl_sweep.search import (
    Role,
    StageView,
    final_model_lines,
    gone_here,
    outcome_of,
    role_of,
    shown_settings,
    views_lines,
)
from asl_sweep.settings.spec import StudyConfig
from asl_sweep.settings.studyfile import study_named

LABELS = {Role.INCUMBENT: " (incumbent)", Role.SEED: " (seed)", Role.SEARCH: "",
          Role.CONFIRM: " (repeat)"}


def leaderboard_columns(view: StageView) -> list[str]:
    """The metrics a stage's leaderboard shows: the accuracies on fold 0, and the value the
    trials are ranked by where that is another metric or the mean over several folds."""
    stage, columns = view.stage, ["train_acc", "val_acc"]
    if not view.ranked_apart:
        return columns
    return [*columns, stage.shown_metric + (f" ({view.folds} folds)" if view.folds > 1 else "")]


def leaderboard_rows(view: StageView, top: int = 5) -> list[list[str]]:
    rows = []
    ranked_by = leaderboard_columns(view)[2:]  # shown as the trial's value
    for t in view.ranked()[:top]:
        outcome = outcome_of(t)
        m = outcome.metrics if outcome is not None else {}
        params = shown_settings(t.params) or "(as it came)"
        rows.append([str(t.number) + LABELS[role_of(t)],
                     f"{m.get('train_acc', float('nan')):.3f}",
                     f"{m.get('val_acc', float('nan')):.3f}",
                     *(f"{t.value:.3f}" for _ in ranked_by), params])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def final_line(cfg: StudyConfig, ws: Workspace) -> str | None:
    final = read_final(cfg, ws)
    # Who is scoring it now: asked only where a score or its refits are still to come.
    missing = not final or (cfg.final_model == "refit" and "refit" not in final)
    scorer = final_in_progress(cfg, ws) if missing else None
    refits = (" (final_model: refit: each final repeat is trained again on every non-test "
              "person first, one more training per repeat; MLflow runs tagged kind=refit)"
              if cfg.final_model == "refit" else "")
    if not final:
        return f"final test score: in progress, by {scorer}{refits}" if scorer else None
    lines = [*final_model_lines(final, cfg.final_model, cfg.data.unit),
             *(views_lines(final["tta"]) if "tta" in final else [])]
    if scorer:
        lines.append(f"refits: in progress, by {scorer}{refits}")
    return "\n".join([f"final test accuracy of {final['stage']}'s configuration: "
                      f"{final['summary']}", f"  rule: {final['rule']}",
                      *(f"  {line}" for line in lines)])


def print_leaderboard(cfg: StudyConfig, ws: Workspace, top: int = 5,
                      decisions: bool = True) -> None:
    """The top trials of each stage; with `decisions`, each stage's decision and the final
    test score too (`run` printed those as they happened, so it leaves them out)."""
    for view in read_stages(cfg, ws):
        where = ("validation fold 0" if view.folds == 1 else
                 f"{view.stage.metric}: the mean over {view.folds} person folds, "
                 "the accuracies fold 0's")
        print(f"\n== {cfg.study} / {view.stage.name}: top trials by "
              f"{view.stage.metric_heading} "
              f"(best epoch, {where}; not a test score)")
        rows = leaderboard_rows(view, top)
        print(table(["trial", *leaderboard_columns(view), "params"], rows) if rows
              else "(none)")
        if view.result and decisions:
            print(f"decision: {view.result.decision}")
    line = final_line(cfg, ws)
    if line and decisions:
        print(f"\n{line}")


def print_studies(ws: Workspace) -> None:
    """`status` without a study: the studies recorded in the home's Optuna store, each with
    the study file its name points to, where there is one (studyfile.study_named: NAME.yaml
    here or in sweeps/). `status NAME` reads one back with the settings its last run
    recorded (cli._recorded), its YAML path with the --set it ran with."""
    from asl_sweep.search import optuna_storage, recorded_studies

    if not ws.has_storage:
        raise StoreError(f"nothing recorded yet at {shown(ws.storage)}; run a study first "
                         "(asl-sweep run sweeps/quick.yaml), or pass --home (or --storage) "
                         "with the studies' store")
    names = recorded_studies(optuna_storage(ws.storage))
    if not names:
        print(f"no study recorded yet at {shown(ws.storage)}")
        return
    print(f"studies recorded at {shown(ws.storage)}; `asl-sweep status NAME` shows one (as its "
          "last run read it; or its YAML, with the --set it ran with):")
    width = max(len(n) for n in names)
    for name in names:
        print(f"  {name.ljust(width)}  {study_named(Path(name)) or ''}".rstrip())


def print_status(cfg: StudyConfig, ws: Workspace) -> None:
    print(f"study {cfg.study}  (optuna: {shown(ws.storage)})")
    for i, view in enumerate(read_stages(cfg, ws)):
        states = ", ".join(f"{n} {s}" for s, n in sorted(view.by_state(gone_here).items()))
        best = view.best()
        if view.result:
            state = f"finished: {view.result.status}"
        elif view.stopped:
            state = f"stopped the study: {view.stopped}"
        elif view.trials:
            state = "in progress"
        else:
            state = "not started"
        print(f"\n[{i + 1}] {view.stage.name}: {state}")
        if view.stage.goal:  # optional: a stage without one says nothing here
            print(f"    goal: {view.stage.goal}")
        print(f"    trials: {states or 'none'} (budget {view.budget}, plus the incumbent "
              "and confirmation repeats)")
        if best is not None:
            print(f"    best so far: trial {best.number}{LABELS[role_of(best)]}, "
                  f"{view.stage.shown_metric} {best.value:.4f} ("
                  f"{'training' if view.stage.metric.startswith('train') else 'validation'}, "
                  "best epoch"
                  + (f"; the mean over {view.folds} person folds)" if view.folds > 1
                     else ")"))
        if view.carried:
            print(f"    started from: {shown_settings(view.carried)}")
        if view.result:
            print(f"    decision: {view.result.decision}")
            print(f"    carries: {shown_settings(view.result.params) or 'no change'}")
    line = final_line(cfg, ws)
    if line:
        print(f"\n{line}")
    print(f"\ndisk: {disk_line(cfg, ws)}")


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def disk_line(cfg: StudyConfig, ws: Workspace) -> str:
    """What the study takes in its home: its MLflow artifacts (checkpoints, curves, models;
    none when a tracking server holds them) and its trials in flight; the image cache is
    shared by every study of the home."""
    artifacts = ws.artifacts / cfg.study
    where = (f"artifacts behind {shown(ws.tracking_uri)} (not measured here)" if ws.tracking_server
             else f"artifacts {_mb(_size(artifacts))}")
    return (f"{where}, trials in flight {_mb(_size(ws.runs / cfg.study))}, image cache "
            f"{_mb(_size(ws.cache))} (shared by the home's studies); keep_checkpoints: "
            f"{cfg.keep_checkpoints}")


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"
