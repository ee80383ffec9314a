"""The end of an asl-sweep process: Python's full shutdown against `cli.console`, which
freezes the garbage collector once the command is done (gc.freeze), so the last collections
at shutdown do not walk every object torch, mlflow and the rest made at import:

    .venv/bin/python -m benchmarks.process_exit [--repeats N]

Each try is a fresh process running one command the way a user's shell runs it; the arms
differ only in how the process is entered: `python -c "...sys.exit(main())"` (the code
before: the console script called main) or `python -m asl_sweep.cli` (console). The
commands: `status` of a recorded study (reads the stores) and a one-trial, one-epoch `run`
of the quick demo with one worker (a whole study in one process). The arms alternate, so a
slow minute of the machine falls on both. Records wall and CPU seconds (user + system of
the process) per arm and command, medians over the repeats."""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "sweeps" / "quick.yaml"
ARMS = {"full shutdown (before)": ["-c", "import sys; from asl_sweep.cli import main; "
                                         "sys.exit(main())"],
        "gc.freeze at exit (now)": ["-m", "asl_sweep.cli"]}


def _timed(entry: list[str], args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one process running `asl-sweep ARGS`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, *entry, *args], check=True, capture_output=True,
                   env={k: v for k, v in os.environ.items() if k != "ASL_SWEEP_HOME"})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one_trial = [str(QUICK), "--trials", "1", "--epochs", "1", "--workers", "1"]
        _timed(ARMS["gc.freeze at exit (now)"], ["run", *one_trial, "--home",
                                                  str(root / "recorded")])  # also warms up
        commands = {"status": lambda _: ["status", str(QUICK), "--home",
                                         str(root / "recorded")],
                    "run, one trial, one worker": lambda n: ["run", *one_trial, "--home",
                                                             str(root / f"run-{n}")]}
        times = {(c, a): [] for c in commands for a in ARMS}
        for n in range(args.repeats):
            for command, argv in commands.items():
                for arm, entry in ARMS.items():
                    times[command, arm].append(_timed(entry, argv(f"{n}-{len(times)}-{arm[:4]}")))
    rows = []
    for (command, arm), tries in times.items():
        rows.append({"command": command, "arm": arm,
                     "wall_s_median": round(statistics.median(w for w, _ in tries), 2),
                     "cpu_s_median": round(statistics.median(c for _, c in tries), 2),
                     "wall_s_runs": [round(w, 2) for w, _ in tries],
                     "cpu_s_runs": [round(c, 2) for _, c in tries]})
        print(rows[-1], flush=True)
    paired = {command: round(statistics.median(
        now[0] - before[0] for before, now in zip(*(times[command, arm] for arm in ARMS),
                                                  strict=True)), 2) for command in commands}
    print("paired wall difference, now - before (median of the pairs):", paired)
    print(write_result("process_exit", {
        "what": "one asl-sweep command in a fresh process, entered through main (Python's "
                "full shutdown) or cli.console (gc.freeze once the command is done); medians "
                "over the repeats, the arms alternating",
        "paired_wall_s_now_minus_before": paired, "rows": rows}))


if __name__ == "__main__":
    main()
