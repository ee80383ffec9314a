"""The final phase of `asl-sweep run --workers 2`: once every stage is decided the workers
leave, and `run` alone scores the final configuration and trains its refits (final_model:
refit). It did so on one thread, its share while the workers trained beside it, with the
other core idle; it now takes back the threads it started with (search/pool.py,
_take_threads). Side by side on one finished search:

    .venv/bin/python -m benchmarks.final_threads [--rounds 2] [--epochs 40]

The study: the quick demo (sweeps/quick.yaml, 4 final repeats) at `--epochs`, searched and
scored once (final_model: ensemble) into a home. Each arm, on a fresh copy of that home,
runs `asl-sweep run --workers 2 --set final_model=refit`: the worker finds every stage
decided and leaves, and `run` trains the 4 refits and scores them. "one thread" is the code
before: the process starts with OMP_NUM_THREADS=1, so the threads it takes back are the one
it had; "every thread" is a user's run. Timed: the refits (their MLflow runs, first start to
last end) and the whole command. The arms alternate, round by round."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"one thread (before)": {"OMP_NUM_THREADS": "1"}, "every thread (now)": {}}


def _command(study: Path, home: Path, epochs: int, *more: str) -> list[str]:
    return [sys.executable, "-m", "asl_sweep.cli", "run", str(study), "--home", str(home),
            "--workers", "2", "--set", f"base.epochs={epochs}", *more]


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ASL_SWEEP_HOME")}
    return env | extra


def _refit_seconds(home: Path) -> tuple[float, list[str]]:
    """The refits' wall: the first refit run's start to the last one's end; their threads.
    Read with sqlite3: MLflow's client keeps one engine per store address, and every arm's
    store has the same address."""
    query = ("SELECT r.start_time, r.end_time, r.status, p.value FROM runs r "
             "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'kind' AND t.value = 'refit' "
             "JOIN params p ON p.run_uuid = r.run_uuid AND p.key = 'threads'")
    with contextlib.closing(sqlite3.connect(home / "mlflow.db")) as db:
        runs = db.execute(query).fetchall()
    assert runs and all(status == "FINISHED" for _, _, status, _ in runs), "no finished refits"
    seconds = (max(end for _, end, _, _ in runs) - min(start for start, _, _, _ in runs)) / 1e3
    return seconds, sorted({threads for _, _, _, threads in runs})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    study = ROOT / "sweeps" / "quick.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        # A home records where it lies (MLflow's artifact paths): each arm runs in it there,
        # put back from a copy kept beside it.
        home, kept = Path(tmp) / "home", Path(tmp) / "searched"
        started = time.perf_counter()
        subprocess.run(_command(study, home, args.epochs), env=_env({}), check=True,
                       stdout=subprocess.DEVNULL, cwd=ROOT)
        search_s = time.perf_counter() - started
        home.rename(kept)
        print(f"search and final score: {search_s:.1f} s")
        times: dict[str, dict[str, list]] = {a: {"refits_s": [], "command_s": [],
                                                 "threads": []} for a in ARMS}
        for round_ in range(args.rounds):
            for arm, extra in ARMS.items():
                shutil.copytree(kept, home)
                started = time.perf_counter()
                subprocess.run(_command(study, home, args.epochs, "--set", "final_model=refit"),
                               env=_env(extra), check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
                wall = time.perf_counter() - started
                refits, threads = _refit_seconds(home)
                times[arm]["refits_s"].append(round(refits, 2))
                times[arm]["command_s"].append(round(wall, 2))
                times[arm]["threads"] = threads
                print(f"round {round_ + 1}, {arm}: refits {refits:.1f} s, command {wall:.1f} s"
                      f" (refit threads {', '.join(threads)})")
                shutil.rmtree(home)
    rows = [{"arm": arm, "refit_threads": "/".join(t["threads"]),
             "refits_s_median": round(statistics.median(t["refits_s"]), 2),
             "refits_s": t["refits_s"],
             "command_s_median": round(statistics.median(t["command_s"]), 2),
             "command_s": t["command_s"]}
            for arm, t in times.items()]
    before, now = rows[0]["refits_s_median"], rows[1]["refits_s_median"]
    print("| arm | refit threads | refits (s, median) | each | the command (s, median) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['refit_threads']} | {r['refits_s_median']:.1f} | "
              f"{r['refits_s']} | {r['command_s_median']:.1f} |")
    print(f"refits: {now / before:.2f}x the time on one thread")
    path = write_result("final_threads", {
        "study": "sweeps/quick.yaml", "epochs": args.epochs, "rounds": args.rounds,
        "search_and_score_s": round(search_s, 1), "rows": rows,
        "refits_ratio": round(now / before, 3)})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
