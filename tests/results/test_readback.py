"""Reading a finished study back needs neither torch nor mlflow."""

import json
import subprocess
import sys

import pytest

from asl_sweep.cli import main

STATUS_ALONE = """
import json, sys
from asl_sweep.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "mlflow"})
print(json.dumps({"code": code, "heavy": heavy}))
"""


@pytest.mark.slow
def test_status_of_a_finished_study_imports_no_torch(write_study, tmp_path):
    path = write_study()
    home = str(tmp_path / "mlruns")
    assert main(["run", str(path), "--home", home, "--trials", "2"]) == 0
    proc = subprocess.run([sys.executable, "-c", STATUS_ALONE, "status", str(path), "--home",
                           home], capture_output=True, text=True, timeout=60)
    assert "[1] search: finished" in proc.stdout, proc.stderr
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 0, "heavy": []}
