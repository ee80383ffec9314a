"""A whole shipped study, as a user runs it, and what it found:

    .venv/bin/python -m benchmarks.end_to_end sweeps/report.yaml [--data PATH] [--set K=V ...]
        [--trials N] [--epochs N] [--name NAME]

Records the wall time, each stage's decision and time (the share spent on confirmation
repeats too), each stage's configuration scored on the test split (so model families can be
compared: MLP, CNN, transfer), and the study's final test score."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from asl_sweep.results.readback import read_final, read_stages
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.evaluation import score_trials, summarize
from asl_sweep.search.selection import role_of
from asl_sweep.search.session import open_data
from asl_sweep.search.study import run_study
from asl_sweep.settings.studyfile import load_study
from asl_sweep.tracking.tracker import Tracker
from benchmarks.common import shown, write_result


def seconds(trials) -> float:
    return sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
               if t.datetime_complete and t.datetime_start)


def run(study: str, data: Path | None, overrides: list[str], trials: int | None,
        epochs: int | None, home: Path | None = None, stages: int | None = None,
        workers: str | None = None) -> dict:
    """Run the study (resuming it if `home` holds it), or its first `stages` stages, and
    read back what it found. With `workers`, through `asl-sweep run --workers` (the settings
    as loaded here, written to a study file), timed as a whole command."""
    cfg = load_study(study, overrides, data, trials, epochs)
    if stages:
        cfg = cfg.model_copy(update={"stages": cfg.stages[:stages]})
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.at(home or Path(tmp) / "mlruns")
        started = time.perf_counter()
        if workers is None:
            run_study(cfg, ws)
        else:
            path = Path(tmp) / "study.yaml"
            path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            subprocess.run([sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home",
                            str(ws.home), "--workers", workers], check=True,
                           stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        final = read_final(cfg, ws)
        test_data, tracker = open_data(cfg, ws), Tracker(ws)
        stages = []
        for view in read_stages(cfg, ws):
            r = view.result
            scored = score_trials(test_data, tracker, view.repeats(), "test")
            test = summarize(scored, test_data.test().groups, "test")
            confirm = [t for t in view.trials if role_of(t) == "confirm"]
            stages.append({
                "stage": view.stage.name, "model": scored[0].model_file.config.model,
                "trials": view.by_state(), "status": r.status, "decision": r.decision,
                "val": round(r.value, 4), "test_mean": round(test["mean"], 4),
                "test_std": round(test["std"], 4), "stage_s": round(seconds(view.trials), 1),
                "confirm_s": round(seconds(confirm), 1)})
            print(stages[-1], flush=True)
            stages[-1]["curves"] = curves(view)
    return {"study": study, "data": shown(data), "overrides": overrides, "trials": trials,
            "workers": workers or "1 (in this process)",
            "stages_run": [s.name for s in cfg.stages],
            "epochs": epochs, "wall_s": round(wall, 1),
            "confirmation_s": round(sum(s["confirm_s"] for s in stages), 1),
            "final_test": final["summary"], "final_test_mean": round(final["mean"], 4),
            "final_test_std": round(final["std"], 4), "people": people_figures(final),
            "final_models": {k: final[k] for k in ("best_repeat", "ensemble", "refit")
                             if k in final},
            "stages": stages}


def curves(view) -> dict:
    """The stage's learning curves as recorded (the stage metric at each epoch of every
    trial, its role and how it ended) and which trial the stage carried on: the data
    benchmarks/pruning_replay.py replays under each pruner."""
    r = view.result
    return {"metric": view.stage.metric, "direction": view.stage.direction,
            "pruner": view.stage.pruner, "target": view.stage.target,
            "carried": r.trial if r else None, "status": r.status if r else None,
            "trials": [{"number": t.number, "role": str(role_of(t)), "state": t.state.name,
                        "value": None if t.value is None else round(t.value, 5),
                        "curve": [[e, round(v, 5)] for e, v in
                                  sorted(t.intermediate_values.items())]}
                       for t in view.trials]}


def people_figures(final: dict) -> dict | None:
    """The final configuration's per-person test accuracy (mean over its repeats): mean,
    25th percentile, median and worst, and the worst five people."""
    rows = final.get("breakdown", {}).get("by_person", [])
    if not rows:
        return None
    acc = np.asarray([r["accuracy"] for r in rows])
    return {"people": len(rows), "mean": round(float(acc.mean()), 4),
            "q25": round(float(np.quantile(acc, 0.25)), 4),
            "median": round(float(np.median(acc)), 4), "worst": round(float(acc.min()), 4),
            "worst_five": [(r["person"], round(r["accuracy"], 3)) for r in rows[:5]]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study", nargs="?", default="sweeps/report.yaml")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--trials", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="end_to_end")
    parser.add_argument("--home", type=Path, help="keep the study here (default: a temporary "
                        "folder), e.g. to export its model afterwards")
    args = parser.parse_args()
    result = run(args.study, args.data, args.overrides, args.trials, args.epochs, args.home)
    print(f"written to {write_result(args.name, result)}; wall {result['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
