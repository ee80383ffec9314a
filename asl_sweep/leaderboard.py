"""Plain-text views of a study read back from Optuna storage: leaderboard and status."""

from __future__ import annotations

from asl_sweep.config import StudyConfig
from asl_sweep.readback import StageView, read_stages
from asl_sweep.workspace import Workspace


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def leaderboard_rows(view: StageView, top: int = 5) -> list[list[str]]:
    rows = []
    for t in view.ranked()[:top]:
        m = t.user_attrs.get("metrics", {})
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        seed = " (seed)" if t.user_attrs.get("seed_trial") else ""
        rows.append([str(t.number) + seed, f"{m.get('train_acc', float('nan')):.3f}",
                     f"{m.get('val_acc', float('nan')):.3f}", params])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def print_leaderboard(cfg: StudyConfig, ws: Workspace, top: int = 5) -> None:
    for view in read_stages(cfg, ws):
        print(f"\n== {cfg.study} / {view.stage.name}: top trials by {view.stage.metric}")
        rows = leaderboard_rows(view, top)
        print(table(["trial", "train_acc", "val_acc", "params"], rows) if rows else "(none)")
        if view.winner:
            print(f"winner: trial {view.winner.trial} ({view.winner.status}) -> carried "
                  f"{view.winner.params}")


def print_status(cfg: StudyConfig, ws: Workspace) -> None:
    print(f"study {cfg.study}  (optuna: {ws.storage})")
    for i, view in enumerate(read_stages(cfg, ws)):
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(view.by_state().items()))
        best = view.best()
        if view.winner:
            state = f"finished: winner trial {view.winner.trial} ({view.winner.status})"
        elif view.trials:
            state = "in progress"
        else:
            state = "not started"
        print(f"\n[{i + 1}] {view.stage.name}: {state}")
        print(f"    goal: {view.stage.goal}")
        print(f"    trials: {states or 'none'} of {view.stage.trials}")
        if best is not None:
            print(f"    best so far: trial {best.number}, {view.stage.metric} {best.value:.4f}")
        if view.carried:
            print(f"    started from: {view.carried}")
        if view.winner:
            print(f"    carries: {view.winner.params}")
