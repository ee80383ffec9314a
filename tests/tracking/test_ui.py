"""The MLflow UI, in a real headless browser, as `asl-sweep ui` serves it: the address it
prints opens on the study's trial runs with their datasets (not on MLflow's GenAI view)."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from asl_sweep.cli import main
from asl_sweep.runtime.workspace import Workspace
from tests.tracking.browser import CHROMIUM, Browser, free_port

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(apt-get install chromium; .ci/run does this)")
# The "+" that opens a parent run's children in MLflow's runs table (its icon's path).
COLLAPSED = "button[data-component-id*='runnamecellrenderer']:has(path[d^='M7.25 7.25V4.5'])"


@pytest.fixture
def artifacts(tmp_path_factory) -> Path:
    """Screenshots a person can look at after the run: $ASL_SWEEP_TEST_ARTIFACTS, or pytest's
    kept temporary folder (never the repository)."""
    folder = Path(os.environ.get("ASL_SWEEP_TEST_ARTIFACTS")
                  or tmp_path_factory.getbasetemp() / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_address_ui_prints_shows_the_trial_runs_and_their_datasets(write_study, tmp_path,
                                                                        artifacts):
    path = write_study({"description": "a tiny study for the browser",
                        "stages": [{"name": "search", "goal": "two rates", "trials": 2,
                                    "sampler": "random", "confirm": None,
                                    "space": {"lr": [1e-3, 3e-3]}}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    client = MlflowClient(Workspace.at(home).tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    stage = next(r for r in runs if r.data.tags["kind"] == "stage")
    assert stage.info.run_name == "1-search" and stage.data.tags["mlflow.note.content"] == "two rates"
    assert experiment.tags["mlflow.note.content"] == "a tiny study for the browser"

    port = free_port()
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "ui", "--home", str(home),
                               "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=(tmp_path / "ui.err").open("w"), text=True,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        lines = [server.stdout.readline()]
        while not lines[-1].startswith("MLflow UI:") and server.poll() is None:
            lines.append(server.stdout.readline())
        ready = time.monotonic() - started
        assert lines[-1].startswith(f"MLflow UI: {base}"), lines
        lines = lines[-1:] + [server.stdout.readline()]
        urllib.request.urlopen(base, timeout=5)  # it answers as soon as it says so
        assert lines[1].startswith("  tiny, every trial: ")
        address = lines[1].split(": ", 1)[1].strip()
        assert address.startswith(f"{base}/#/experiments/{experiment.experiment_id}/runs"
                                  "?workflowType=machine_learning&searchFilter=")
        with Browser() as browser:
            browser.open(address, "1-search")
            for _ in range(40):  # open each collapsed level (its "+"), as a person would
                if "search-2" in browser.text():
                    break
                browser.click_all(COLLAPSED)
                time.sleep(0.5)
            text = browser.wait_for("search-2", 10)
            shot = browser.screenshot(artifacts / "mlflow-ui-trials.png")
            print(f"ui answered after {ready:.1f}s; screenshot: {shot}")
            assert "search-1" in text and "search-2" in text  # the trial runs
            assert "synthetic-letters:train" in text  # the Dataset column is filled
            assert "Run Name" in text and "Dataset" in text  # the runs table, not GenAI traces
            trial = next(r for r in runs if r.info.run_name == "search-1")
            browser.open(f"{base}/#/experiments/{experiment.experiment_id}/runs/"
                         f"{trial.info.run_id}", "search-1")
        assert shot.stat().st_size > 10_000
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    # The server's library deprecation notes stay out of the terminal.
    assert "DeprecationWarning" not in (tmp_path / "ui.err").read_text()
