"""`asl-sweep compare A B`: two studies' outcomes side by side, stage by stage (what each
adopted, on which evidence) and their final test scores with their intervals. Two studies
are compared on test only where they scored the same test split (the same data settings)."""

from __future__ import annotations

from asl_sweep.results.leaderboard import table
from asl_sweep.results.readback import read_final, read_stages
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search import shown_settings, signed
from asl_sweep.settings.spec import StudyConfig


def _stage_cell(view) -> str:
    if view is None:
        return "-"
    if view.stopped:
        return "stopped the study (target missed)"
    if view.result is None:
        return "unfinished" if view.trials else "not run"
    r = view.result
    change = shown_settings(r.params) or "no change"
    return f"{r.status}: {change} ({view.stage.metric} {r.value:.3f})"


def compare_lines(a: tuple[StudyConfig, Workspace], b: tuple[StudyConfig, Workspace]
                  ) -> list[str]:
    (cfg_a, ws_a), (cfg_b, ws_b) = a, b
    views_a = {v.stage.name: v for v in read_stages(cfg_a, ws_a)}
    views_b = {v.stage.name: v for v in read_stages(cfg_b, ws_b)}
    names = list(views_a) + [n for n in views_b if n not in views_a]
    rows = [[n, _stage_cell(views_a.get(n)), _stage_cell(views_b.get(n))] for n in names]
    final_a, final_b = read_final(cfg_a, ws_a), read_final(cfg_b, ws_b)
    rows.append(["final test", final_a["summary"] if final_a else "not scored",
                 final_b["summary"] if final_b else "not scored"])
    lines = [f"compare {cfg_a.study} ({ws_a.home}) with {cfg_b.study} ({ws_b.home})",
             "stages: each study's decision and its validation value (the repeats' mean); "
             "final test: each study's own test split, scored once",
             table(["stage", cfg_a.study, cfg_b.study], rows)]
    if final_a and final_b:
        gap = (final_b["mean"] - final_a["mean"]) * 100
        overlap = final_a["ci"][0] <= final_b["ci"][1] and final_b["ci"][0] <= final_a["ci"][1]
        # The split is drawn over the files, not their pixels: a size alone changes nothing.
        split_a, split_b = (c.data.model_dump(exclude={"image_size"}) for c in (cfg_a, cfg_b))
        sizes = cfg_a.data.image_size, cfg_b.data.image_size
        lines.append(f"test accuracy {cfg_b.study} - {cfg_a.study}: {signed(gap)} pt; the 95% "
                     f"intervals {'overlap' if overlap else 'do not overlap'}"
                     + ("; the data settings differ, so the test splits do too: read the two "
                        "scores apart, not as a paired difference" if split_a != split_b else
                        f"; the same test split, each study at its own size ({sizes[0]} and "
                        f"{sizes[1]} px)" if sizes[0] != sizes[1] else ""))
    return lines
