"""The README's first command, as a newcomer runs it, against the quick demo it replaced:

    .venv/bin/python -m benchmarks.first_command [--repeats N]

Each arm is `asl-sweep run STUDY` in a fresh home, as its own process (imports, store
creation, --workers auto, the final test score: everything the user waits for), timed from
the start of the command to its exit. Records the wall time, the stage's decision, the
final test score with its interval and the number of test people it is over."""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"before (MLP, benchmarks/studies/quick_mlp.yaml)": "benchmarks/studies/quick_mlp.yaml",
        "now (CNN, sweeps/quick.yaml)": "sweeps/quick.yaml"}


def run_once(study: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "asl_sweep.cli", "run", study, "--home",
                               str(Path(tmp) / "mlruns")], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        wall = time.perf_counter() - started
    out = proc.stdout
    decision = re.search(r"^stage \S+: (.+?); carries", out, re.MULTILINE).group(1)
    final = re.search(r"final test accuracy of .*?: (.+)$", out, re.MULTILINE).group(1)
    people = re.search(r"bootstrap over (\d+) people", final)
    return {"wall_s": round(wall, 1), "decision": decision.split(" (95%")[0],
            "test": final, "test_mean": float(final.split()[0]),
            "test_people": int(people.group(1)) if people else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for arm, study in ARMS.items():
        runs = [run_once(study) for _ in range(args.repeats)]
        walls = [r["wall_s"] for r in runs]
        rows.append({"arm": arm, "wall_s_median": statistics.median(walls),
                     "wall_s_runs": walls, "test": runs[-1]["test"],
                     "test_people": runs[-1]["test_people"],
                     "decision": runs[-1]["decision"]})
        print(rows[-1], flush=True)
    print(write_result("first_command", {
        "what": "the README's first command (asl-sweep run sweeps/quick.yaml, --workers auto) "
                "from the start of the process to its exit, in a fresh home; the same "
                "settings each run, so the test score repeats exactly",
        "arms": rows}))


if __name__ == "__main__":
    main()
