"""The scheduler files under deploy/ parse, and the command lines they run are ones the CLI
accepts (with the study they name shipped)."""

import re
import shlex
import subprocess
from pathlib import Path

import yaml

from asl_sweep.cli import build_parser

ROOT = Path(__file__).parent.parent
VALUES = {"STUDY": "sweeps/report.yaml", "ASL_SWEEP_STORAGE": "postgresql://u@db/optuna",
          "ASL_SWEEP_TRACKING": "http://mlflow:5000", "STORAGE": "postgresql://u@db/optuna",
          "TRACKING": "http://mlflow:5000", "JOB_COMPLETION_INDEX": "3",
          "SLURM_ARRAY_TASK_ID": "3", "SLURM_CPUS_PER_TASK": "2", "HOME_DIR": "/tmp/h"}


def accepted(script: str, monkeypatch) -> list[str]:
    """Each `exec asl-sweep ...` line of a shell script, parsed by the real CLI parser (in
    the environment the script's scheduler gives it)."""
    for name in ("ASL_SWEEP_STORAGE", "ASL_SWEEP_TRACKING"):
        if f"${name}" not in script:  # the Secret's variables, read by asl-sweep itself
            monkeypatch.setenv(name, VALUES[name])
    commands = re.findall(r"exec (asl-sweep [^;\n]+)", script.replace("\\\n", " "))
    assert len(commands) == 2, commands  # the study's runner and a worker
    subcommands = []
    for command in commands:
        argv = shlex.split(re.sub(r"\$\{?(\w+)\}?", lambda m: VALUES[m.group(1)], command))[1:]
        args = build_parser().parse_args(argv)  # argparse exits on anything it refuses
        assert (ROOT / args.study).is_file() and args.tracking.startswith("http")
        subcommands.append(args.command)
    return subcommands


def test_the_kubernetes_indexed_job_parses_and_runs_what_the_cli_accepts(monkeypatch):
    (job,) = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "workers.yaml").read_text())
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
               if "valueFrom" in e}
    assert secrets == {"asl-sweep-stores"}
    # The Secret's URLs reach asl-sweep as the variables it reads, never on a command line.
    from_secret = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert from_secret == {"ASL_SWEEP_STORAGE", "ASL_SWEEP_TRACKING"}
    script = container["args"][0]
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0
    assert accepted(script, monkeypatch) == ["run", "worker"]
    assert "--storage" not in script and "--tracking" not in script


def test_the_slurm_array_script_parses_and_runs_what_the_cli_accepts(monkeypatch):
    path = ROOT / "deploy" / "slurm" / "workers.sh"
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    script = path.read_text()
    assert re.search(r"^#SBATCH --array=0-\d+", script, re.MULTILINE)
    assert accepted(script, monkeypatch) == ["run", "worker"]
    # The stores' URLs (a password in them) on no command line: `ps` and `sacct` show those.
    assert "--storage" not in script and "--tracking" not in script
    assert "export ASL_SWEEP_STORAGE=" in script and "export ASL_SWEEP_TRACKING=" in script
