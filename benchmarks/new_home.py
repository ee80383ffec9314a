"""Opening a new home's MLflow store: built by MLflow (every schema migration) against
copied from the blank store (asl_sweep/tracking/blank.py):

    .venv/bin/python -m benchmarks.new_home [--repeats N]

Each try is its own process that opens a new home as every command does (Workspace, then
Tracker) and exits; the arms alternate, so a slow minute of the machine falls on both. The
`built` arm points $XDG_CACHE_HOME at a file, so no blank can be kept and MLflow builds the
store as it did before; the `copied` arm shares one cache, its blank made before the first
timed try. Records each arm's seconds in the process (Tracker alone) and the whole process."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result

OPEN = """
import sys, time
from pathlib import Path
from asl_sweep.runtime.workspace import Workspace
import asl_sweep.tracking.tracker as tracker
ws = Workspace.at(Path(sys.argv[1])).prepare()
started = time.perf_counter()
tracker.Tracker(ws)
print(time.perf_counter() - started)
"""


def open_once(home: Path, cache: Path) -> tuple[float, float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", OPEN, str(home)], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "XDG_CACHE_HOME": str(cache)}).stdout
    return float(out.split()[-1]), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "not-a-folder").write_text("no cache: MLflow builds every store")
        arms = {"built by MLflow (no blank)": root / "not-a-folder",
                "copied from the blank": root / "cache"}
        open_once(root / "warm", arms["copied from the blank"])  # the blank, made once
        times: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
        for n in range(args.repeats):
            for arm, cache in arms.items():
                times[arm].append(open_once(root / f"{len(times[arm])}-{n}-{arm[:5]}", cache))
    rows = []
    for arm, tries in times.items():
        rows.append({"arm": arm,
                     "tracker_s_median": round(statistics.median(t for t, _ in tries), 3),
                     "process_s_median": round(statistics.median(p for _, p in tries), 2),
                     "tracker_s_runs": [round(t, 3) for t, _ in tries],
                     "process_s_runs": [round(p, 2) for _, p in tries]})
        print(rows[-1], flush=True)
    built, copied = (r["process_s_median"] for r in rows)
    print(write_result("new_home", {
        "what": "a new home's MLflow store opened in its own process (Workspace, Tracker), "
                "built by MLflow or copied from the blank store; medians over the repeats, "
                "the arms alternating",
        "process_ratio": round(copied / built, 2),
        "arms": rows}))


if __name__ == "__main__":
    main()
