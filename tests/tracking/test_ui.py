"""The MLflow UI, in a real headless browser, as `asl-sweep ui` serves it: the addresses it
prints open on the study's trial runs, flat, with the columns to compare them by, pruned
trials marked, and a val_acc chart with a line per trial (not on MLflow's GenAI view, even
for a page opened from a link)."""

import json
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

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
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


@needs_chromium
def test_the_addresses_ui_prints_open_on_views_a_person_can_use(write_study, tmp_path,
                                                                 artifacts):
    path = write_study({"description": "a tiny study for the browser", "base": {"epochs": 6},
                        # 12 trials and the incumbent: MLflow's charts drew only the first 10
                        "stages": [{"name": "search", "goal": "rates and widths", "trials": 12,
                                    "sampler": "random", "pruner": "median", "confirm": None,
                                    "space": {"lr": {"low": 1e-6, "high": 3e-2, "log": True},
                                              "hidden": [[32], [16, 16]]}}]})
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    client = MlflowClient(Workspace.at(home).tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    stage = next(r for r in runs if r.data.tags["kind"] == "stage")
    # The goal, and the decision whole (the runs table cuts the `decision` tag to its column)
    decision = stage.data.tags["decision"]
    assert stage.info.run_name == "1-search" and stage.data.tags["mlflow.note.content"] == (
        f"rates and widths\n\nDecision: {decision}")
    assert experiment.tags["mlflow.note.content"] == "a tiny study for the browser"
    trials = [r for r in runs if r.data.tags["kind"] == "trial"]
    pruned = [r for r in trials if r.data.tags["state"] == "PRUNED"]
    assert pruned and all(r.info.status == "KILLED" and r.info.run_name.endswith("-pruned")
                          for r in pruned)  # not a green "Finished"
    assert {r.data.params["hidden"] for r in trials} == {"32", "16-16"}  # a list, whole

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
        lines = lines[-1:] + [server.stdout.readline() for _ in range(3)]
        urllib.request.urlopen(base, timeout=5)  # it answers as soon as it says so
        said = dict(line.strip().split(": ", 1) for line in lines[1:])
        every, charts = said["tiny, every trial"], said["tiny, charts"]
        assert every.startswith(f"{base}/#/experiments/{experiment.experiment_id}/runs?"
                                "workflowType=machine_learning&viewStateShareKey=")
        with Browser(2400, 1000) as browser:
            # The trial runs, flat (no "+" to open), best first, their columns chosen.
            text = browser.open(every, "search-0-incumbent")
            browser.click_all("button[aria-label='Close']")  # MLflow's assistant panel
            time.sleep(1.0)
            text = browser.wait_for("decision", 10)
            shot = browser.screenshot(artifacts / "mlflow-ui-trials.png")
            print(f"ui answered after {ready:.1f}s; screenshots in {artifacts}")
            assert "Run Name" in text and "Traces" not in text.split("Run Name")[1][:200]
            assert browser.click_all(COLLAPSED) == 0  # nothing folded under a stage row
            for column in ("best_val_acc", "decision", "role", "state", "hidden", "lr"):
                assert column in text, column
            for run in trials:
                assert run.info.run_name in text
            assert "PRUNED" in text and "incumbent" in text and "carried (" in text
            # The charts: val_acc by epoch, one line per trial.
            browser.open(charts, "Model metrics")
            wanted, drawn = {r.info.run_name for r in trials}, []
            for _ in range(30):  # each plot's traces, as plotly keeps them on its element
                drawn = browser.js(
                    "Array.from(document.querySelectorAll('.js-plotly-plot')).map(p => "
                    "Array.from(Array.isArray(p.data) ? p.data : []).map(t => String(t.name)))"
                    ) or []
                if wanted in [set(names) for names in drawn]:
                    break
                time.sleep(0.5)
            browser.screenshot(artifacts / "mlflow-ui-charts.png")
            # The line chart of val_acc: a line per trial (and plotly's marker on its end).
            assert wanted in [set(names) for names in drawn], drawn
            # The first address: the experiment list, not MLflow's GenAI welcome page.
            text = browser.open(lines[0].split()[2], "tiny")
            assert "Welcome to MLflow" not in text
            trial = next(r for r in trials if r.data.tags["state"] == "COMPLETE")
            browser.open(f"{base}/#/experiments/{experiment.experiment_id}/runs/"
                         f"{trial.info.run_id}", trial.info.run_name)
            # The compare page charts a run's first logged metric by default: the stage's,
            # not a process sample, for a finished and a pruned trial alike.
            both = json.dumps([trial.info.run_id, pruned[0].info.run_id])
            text = browser.open(f"{base}/#/compare-runs?runs={both}&experiments="
                                f"{json.dumps([experiment.experiment_id])}", "Metrics:")
            for _ in range(20):  # the chosen metric fills its box a moment later
                chosen = text.split("Metrics:", 1)[1].split()[0]
                if chosen != "Clear":
                    break
                time.sleep(0.5)
                text = browser.text()
            assert chosen == "val_acc", text[:800]
        # A run page or the registry opened from a link in a browser that never chose a view
        # (MLflow keeps the choice in the browser, default GenAI): the model-training view.
        with Browser(1600, 1000) as fresh:
            text = fresh.open(f"{base}/#/experiments/{experiment.experiment_id}/runs/"
                              f"{trial.info.run_id}", trial.info.run_name)
            assert "Judges" not in text and "Sessions" not in text, text[:400]
            text = fresh.open(f"{base}/#/models", "Registered Models")
            assert "Prompts" not in text, text[:400]
            # The stage's run page: its decision whole, under its goal.
            fresh.open(f"{base}/#/experiments/{experiment.experiment_id}/runs/"
                       f"{stage.info.run_id}", decision[-40:])
        assert shot.stat().st_size > 10_000
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    # The server's library deprecation notes stay out of the terminal, and so does MLflow's
    # note on flags asl-sweep's ui does not have ("Security middleware ... use --host
    # 0.0.0.0 and configure --allowed-hosts", issue 33).
    said = (tmp_path / "ui.err").read_text()
    assert "DeprecationWarning" not in said
    assert "Security middleware" not in said and "--allowed-hosts" not in said, said



def test_ctrl_c_in_the_terminal_stops_ui_and_its_server_without_a_traceback(tmp_path):
    """The terminal's Ctrl-C reaches every process of its group: the MLflow server printed
    its own KeyboardInterrupt and CancelledError tracebacks. It reaches asl-sweep only now,
    which stops the server with SIGTERM."""
    home = tmp_path / "mlruns"
    home.mkdir()
    MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_experiments()  # a store to show
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "ui", "--home", str(home),
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().startswith("MLflow UI: "), proc.stderr.read()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and "Traceback" not in err and "Error" not in err, err
    with pytest.raises(OSError):  # the server is gone with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_a_damaged_store_is_one_line_before_the_server_starts(tmp_path, capsys):
    """The server opened the store itself and printed MLflow's traceback (SQLAlchemy's, for
    a damaged file; 'Detected out-of-date database schema' for another MLflow's), then
    'stopped at start'."""
    home = tmp_path / "mlruns"
    home.mkdir()
    (home / "mlflow.db").write_bytes(bytes(range(256)) * 20)
    assert main(["ui", "--home", str(home), "--port", "1"]) == 2  # before the port, too
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the MLflow store (mlflow.db, or --tracking) cannot be read "
                          "(file is not a database)") and len(err.splitlines()) == 1, err
