"""The MLflow UI, in a real headless browser, shows the study -> stage -> trial runs."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from asl_sweep.cli import main
from asl_sweep.workspace import Workspace

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=12000"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(apt-get install chromium; .ci/run does this)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _page_text(url: str, profile: Path, screenshot: Path | None = None) -> str:
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}"]
    if screenshot is not None:
        subprocess.run([*args, "--window-size=1400,900", f"--screenshot={screenshot}", url],
                       capture_output=True, timeout=90)
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True,
                         timeout=90).stdout
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.fixture
def artifacts(tmp_path_factory) -> Path:
    """Screenshots a person can look at after the run: $ASL_SWEEP_TEST_ARTIFACTS, or pytest's
    kept temporary folder (never the repository)."""
    folder = Path(os.environ.get("ASL_SWEEP_TEST_ARTIFACTS")
                  or tmp_path_factory.getbasetemp() / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_mlflow_ui_lists_the_study_stage_and_trial_runs(write_study, tmp_path, artifacts):
    path = write_study({"stages": [{"name": "search", "trials": 2, "sampler": "random",
                                    "space": {"lr": [1e-3, 3e-3]}}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    client = MlflowClient(Workspace.at(home).tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = {r.data.tags["kind"]: r for r in client.search_runs([experiment.experiment_id])}

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "ui", "--home", str(home),
                               "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        assert f"MLflow UI: {base}" in server.stdout.readline()
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(base, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        shot = artifacts / "mlflow-ui-experiment.png"
        exp_url = f"{base}/#/experiments/{experiment.experiment_id}/runs"
        text = _page_text(exp_url, tmp_path / "chrome", shot)
        assert "tiny" in text and "matching runs" in text
        assert shot.stat().st_size > 10_000
        for kind in ("stage", "trial"):
            run = runs[kind]
            run_url = f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
            assert run.info.run_name in _page_text(run_url, tmp_path / "chrome")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
