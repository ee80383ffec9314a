"""Time to quality, two arms of one study in one run on the same machine: wall time and
final test accuracy of each.

--arms race (default): the confirmation before racing (top 2 over 3 fixed repeats, one trial
at a time, every trial trained) beside the shipped defaults (racing confirmation with its
futility rule, trainings found again, --workers auto).
--arms hyperband: sweeps/report.yaml as shipped (median pruning, no early stopping) beside
the same study with Hyperband pruning in every searched stage and early stopping.
--arms versus: the shipped defaults beside the same with the --versus overrides (both with
--workers auto), to try one change to the defaults against them in one run.

    .venv/bin/python -m benchmarks.time_to_quality [--data PATH] [--study sweeps/report.yaml]
        [--cpu-sized] [--stages N] [--set K=V ...] [--arms race|hyperband|versus]
        [--versus K=V ...] [--people]

--people: the built-in signers with new_people's person split (120 signers, 30 of them
test people) in place of --data, for cnn.yaml (issue 35: `--study sweeps/cnn.yaml
--before-top 1 --people`, about 70 minutes for both arms on 2 cores).

--cpu-sized caps report.yaml's augmented copies at 4 (the student's goal-4 seed trial asks
for 20, about 5 minutes a trial at 64 px on 2 cores, and once adopted every later MLP trial
pays it), so both arms finish in about an hour on a 2-core machine. Both arms get the same
overrides; the results record them. --stages N runs the study's first N stages only
(report.yaml's five MLP goals: --stages 5; its CNN stage trains on the adopted augmented
copies, 3 minutes a trial on 2 cores)."""

from __future__ import annotations

import argparse
from pathlib import Path

from asl_sweep.settings.studyfile import load_study
from benchmarks.common import ASL, shown, write_result
from benchmarks.end_to_end import run
from benchmarks.new_people import PEOPLE


def faster(study: str) -> list[str]:
    cfg = load_study(study)
    sets = [f"stages.{i}.pruner=hyperband" for i, s in enumerate(cfg.stages)
            if s.target is None]
    return [*sets, "base.early_stop={patience: 3}"]


def arm_row(arm: str, result: dict) -> dict:
    """One arm as a row: wall, test, and per stage its status and how many trials were
    pruned (the front page of BENCHMARKS.md shows this table)."""
    return {"arm": arm, "wall_s": result["wall_s"], "test": result["final_test"],
            "stages": "; ".join(f"{s['stage']} {s['status']}, "
                                f"{s['trials'].get('PRUNED', 0)} pruned"
                                for s in result["stages"])}


def pair(names: tuple[str, str], first: dict, second: dict) -> dict:
    """Two arms of one run side by side: each one's wall and test, the wall ratio of the
    second to the first and the difference of their test means."""
    a, b = names
    return {f"{a}_wall_s": first["wall_s"], f"{a}_test": first["final_test"],
            f"{b}_wall_s": second["wall_s"], f"{b}_test": second["final_test"],
            "wall_ratio": round(second["wall_s"] / first["wall_s"], 2),
            "test_difference": round(second["final_test_mean"] - first["final_test_mean"], 4)}


def record(result: dict, name: str) -> None:
    """Print a comparison's figures (not the arms' whole results) and write it."""
    print({k: v for k, v in result.items() if not isinstance(v, dict)})
    print(f"written to {write_result(name, result)}")


def before(study: str, top: int) -> list[str]:
    """The confirmation before racing (issue 21): the top candidates over 3 fixed repeats,
    the search trial counted as repeat 0, in every confirmed stage (report.yaml had the
    default top 2; cnn.yaml shipped top 1), and every trial trained afresh."""
    cfg = load_study(study)
    return [*(f"stages.{i}.confirm={{top: {top}, repeats: 3}}" for i, s in enumerate(cfg.stages)
              if s.confirm is not None and s.target is None),
            # the pruner the stage had then: median where it prunes today (issue 35's
            # incumbent pruner is part of the new arm)
            *(f"stages.{i}.pruner=median" for i, s in enumerate(cfg.stages)
              if s.pruner != "none" and s.target is None),
            "reuse_trainings=false"]  # every trial trained, as before trainings were found again


# report.yaml's augmentation stage with at most 4 augmented copies (its seed trial too).
CPU_SIZED = [
    "stages.3.space={augment.rotation: {low: 0.0, high: 30.0}, augment.flip: [true, false], "
    "augment.blur_kernel: [0, 3], augment.copies: [1, 2, 4], "
    "lr: {low: 1e-4, high: 3e-2, log: true}}",
    "stages.3.seed_trials=[{augment.rotation: 25.0, augment.blur_kernel: 3, "
    "augment.copies: 4, lr: 0.001, reported: 0.351}]"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ASL)
    parser.add_argument("--study", default="sweeps/report.yaml")
    parser.add_argument("--cpu-sized", action="store_true",
                        help="at most 4 augmented copies in report.yaml (see above)")
    parser.add_argument("--people", action="store_true",
                        help="the built-in signers, split by person as new_people splits them")
    parser.add_argument("--stages", type=int, help="run only the first N stages")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--before-top", type=int, default=2,
                        help="confirm.top of the arm before racing (report.yaml: 2, cnn.yaml: 1)")
    parser.add_argument("--arms", choices=["race", "hyperband", "versus"], default="race",
                        help="race: fixed repeats one at a time vs racing with --workers auto; "
                             "hyperband: median pruning vs Hyperband + early stopping; "
                             "versus: the shipped defaults vs the same with --versus")
    parser.add_argument("--versus", action="append", default=[],
                        help="K=V overrides of the second arm of --arms versus")
    args = parser.parse_args()
    common = [*(CPU_SIZED if args.cpu_sized else []), *(PEOPLE if args.people else []),
              *args.overrides]
    data = None if args.people else args.data
    if args.arms == "race":
        # The rule before racing, one trial at a time, beside the shipped defaults (racing
        # confirmation) with --workers auto.
        old = run(args.study, data, [*common, *before(args.study, args.before_top)], None,
                  None,
                  stages=args.stages)
        new = run(args.study, data, common, None, None, stages=args.stages,
                  workers="auto")
        result = {"study": args.study, "data": shown(data), "stages": args.stages,
                  **pair(("before", "now"), old, new),
                  "before_overrides": old["overrides"], "before": old, "now": new}
        record(result, f"time_to_quality_race_{Path(args.study).stem}"
                       f"{'_people' if args.people else ''}")
        return
    if args.arms == "versus":
        if not args.versus:
            parser.error("--arms versus needs at least one --versus K=V")
        shipped = run(args.study, data, common, None, None, stages=args.stages,
                      workers="auto")
        changed = run(args.study, data, [*common, *args.versus], None, None,
                      stages=args.stages, workers="auto")
        result = {"rows": [arm_row("shipped", shipped),
                           arm_row(" ".join(args.versus), changed)],
                  "study": args.study, "data": shown(data), "stages": args.stages,
                  "versus": args.versus, **pair(("shipped", "versus"), shipped, changed),
                  "shipped": shipped, "changed": changed}
        record(result, f"time_to_quality_versus_{Path(args.study).stem}")
        return
    today = run(args.study, data, common, None, None, stages=args.stages)
    quick = run(args.study, data, [*common, *faster(args.study)], None, None,
                stages=args.stages)
    result = {"study": args.study, "data": shown(data),
              **pair(("today", "hyperband_early_stop"), today, quick),
              "today_std": today["final_test_std"], "faster_overrides": quick["overrides"],
              "today": today, "hyperband_early_stop": quick}
    record(result, "time_to_quality")


if __name__ == "__main__":
    main()
