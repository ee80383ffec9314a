"""Test-time views (issue 32, item 4) on a finished study: the final configuration's repeats
scored on test with each `tta` setting, beside no views. `auto` is the rule a study uses
(chosen on validation); the forced sets are shown for what they would have done, never to
choose (the test split chooses nothing here: every row is the same stored checkpoints).

    .venv/bin/python -m benchmarks.new_people --arm now --home /tmp/np   # keep a study
    .venv/bin/python -m benchmarks.tta --home /tmp/np [--study sweeps/cnn.yaml] [--auto-with turn]

Per setting: the views adopted, their validation gain (interval over validation people),
the test mean over repeats, the ensemble's test accuracy and the per-person test figures
(mean, 25th percentile, median, worst). results/tta_<study>.json."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from asl_sweep.results.readback import finished_stage, read_stages
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search import evaluation
from asl_sweep.search.evaluation import breakdown, final_candidates, score_final, summarize
from asl_sweep.search.session import open_data
from asl_sweep.settings.studyfile import load_study
from asl_sweep.tracking.tracker import Tracker
from benchmarks.common import write_result
from benchmarks.end_to_end import people_figures
from benchmarks.new_people import PEOPLE

SETTINGS = ("off", "auto", "flip", "rotate", "scale", "all", "turn")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--study", default="sweeps/cnn.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--auto-with", action="append", default=[], metavar="SET",
                        help="a view set `auto` weighs here beside the shipped ones (a "
                        "candidate for evaluation.AUTO_SETS, judged by the rule in the notes)")
    args = parser.parse_args()
    evaluation.AUTO_SETS = (*evaluation.AUTO_SETS, *args.auto_with)
    cfg = load_study(Path(args.study), [*PEOPLE, *args.overrides])
    ws = Workspace.at(args.home)
    view = finished_stage(cfg, read_stages(cfg, ws), None)
    data, tracker = open_data(cfg, ws), Tracker(ws)
    groups = data.test().groups
    trials = view.repeats()
    rows = []
    for setting in SETTINGS:
        started = time.perf_counter()
        scored, views = score_final(data, tracker, trials, setting)
        final = summarize(scored, groups, "test")
        final["breakdown"] = breakdown(scored, groups, list(data.classes))
        entries = final_candidates(scored, view.export_trial().number, groups)[2]
        people = people_figures(final) or {}
        gains = "; ".join(f"{v} {100 * g['gain']:+.1f} pt ({100 * g['ci'][0]:+.1f} to "
                          f"{100 * g['ci'][1]:+.1f})" for v, g in views["gains"].items())
        rows.append({"tta": setting, "views adopted": views["views"],
                     "validation gain per person (95% CI)": gains or "-",
                     "test mean +- std (repeats)": f"{final['mean']:.3f} +- {final['std']:.3f}",
                     "test ensemble": f"{entries['ensemble']['mean']:.3f}"
                     if "ensemble" in entries else "-",
                     "person q25 / median / worst": f"{people.get('q25', 0):.3f} / "
                     f"{people.get('median', 0):.3f} / {people.get('worst', 0):.3f}",
                     "worst five": ", ".join(f"{p} {a:.2f}" for p, a in people.get(
                         "worst_five", [])),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(rows[-1])
    name = Path(args.study).stem
    print(f"written to {write_result(f'tta_{name}', {'study': args.study, 'rows': rows})}")


if __name__ == "__main__":
    main()
