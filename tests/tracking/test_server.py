"""Several machines without a shared folder: a real `mlflow server --serve-artifacts` on
loopback holds every run and artifact; a worker's home is only its cache, and a third, empty
folder with the two store addresses reads the study back (status, report, evaluate, export)."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image

from asl_sweep.cli import main
from tests.tracking.browser import free_port


def serve(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts", "--artifacts-destination",
         str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=(root / "server.err").open("w"),
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (
                (root / "server.err").read_text()[-2000:])
            time.sleep(0.3)


def test_a_study_runs_and_reads_back_through_a_tracking_server_alone(write_study, tmp_path,
                                                                      capsys):
    path = write_study({"stages": [{"name": "search", "trials": 2, "sampler": "random",
                                    "confirm": {"top": 1, "max_repeats": 2},
                                    "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}]})
    (tmp_path / "server").mkdir()
    server, url = serve(tmp_path / "server")
    try:
        worker_home, storage = tmp_path / "worker", f"sqlite:///{tmp_path / 'optuna.db'}"
        assert main(["run", str(path), "--home", str(worker_home), "--storage", storage,
                     "--tracking", url]) == 0
        out = capsys.readouterr().out
        assert "View run" not in out  # MLflow's two links per run stay out of the terminal
        assert f"open the MLflow UI:  {url}" in out
        # Every artifact went through the server: the worker's home keeps no MLflow files.
        assert not any((worker_home / "artifacts").rglob("*.*"))
        kept = list((tmp_path / "server" / "artifacts").rglob("best.pt"))
        assert kept, "no checkpoint reached the server's artifact store"
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("tiny")
        assert experiment.artifact_location.startswith("mlflow-artifacts:")
        # A third, empty folder with only the two addresses reads it all back.
        elsewhere = ["--home", str(tmp_path / "elsewhere"), "--storage", storage,
                     "--tracking", url]
        for command in (["status"], ["evaluate"], ["report"], ["export", "--format", "all"]):
            assert main([command[0], str(path), *elsewhere, *command[1:]]) == 0, command
        said = capsys.readouterr().out
        assert "final test accuracy" in said and "models:/asl-sweep-tiny/1" in said
        assert (tmp_path / "elsewhere" / "exports" / "tiny" / "model.onnx").exists()
        photo = tmp_path / "photo.png"
        Image.new("RGB", (40, 30), (200, 120, 90)).save(photo)
        assert main(["predict", "models:/asl-sweep-tiny/1", str(photo), "--json", "--home",
                     str(tmp_path / "elsewhere"), "--tracking", url]) == 0
        assert '"class"' in capsys.readouterr().out
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
