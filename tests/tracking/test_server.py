"""Several machines without a shared folder: a real `mlflow server --serve-artifacts` on
loopback holds every run and artifact; a worker's home is only its cache, and a third, empty
folder with the two store addresses reads the study back (status, report, evaluate, export)."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from asl_sweep.cli import main
from tests.conftest import run_until_training, running_trial, stopped_line
from tests.servers import free_port, mlflow_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One tracking server for this module's tests (each test's study has its own name)."""
    root = tmp_path_factory.mktemp("server")
    with mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts",
                       log=root / "server.err") as url:
        yield root, url


def test_a_study_runs_and_reads_back_through_a_tracking_server_alone(write_study, tmp_path,
                                                                      capsys, server):
    path = write_study({"stages": [{"name": "search", "trials": 2, "sampler": "random",
                                    "confirm": {"top": 1, "max_repeats": 2},
                                    "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}]})
    root, url = server
    # (a SQLite store in a folder not made yet: Optuna's was "unable to open database file")
    worker_home, storage = tmp_path / "worker", f"sqlite:///{tmp_path / 'new' / 'optuna.db'}"
    assert main(["run", str(path), "--home", str(worker_home), "--storage", storage,
                 "--tracking", url]) == 0
    out = capsys.readouterr().out
    assert "View run" not in out  # MLflow's two links per run stay out of the terminal
    assert f"open the MLflow UI:  {url}" in out
    # Every artifact went through the server: the worker's home keeps no MLflow files.
    assert not any((worker_home / "artifacts").rglob("*.*"))
    kept = list((root / "artifacts").rglob("best.pt"))
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


def test_a_trial_killed_on_one_machine_resumes_on_another_from_the_server(write_study,
                                                                           tmp_path, server):
    """Two homes that share nothing but the two stores (as two machines would): the worker of
    home A is killed with SIGKILL mid-trial, and a run from the empty home B finishes that
    trial from the resume point A left on the tracking server, with the budget exact."""
    path = write_study({"study": "resumed", "base": {"epochs": 100}, "stages": [{
        "name": "search", "trials": 2, "sampler": "random", "confirm": None,
        "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}]})
    _, url = server
    db = tmp_path / "optuna.db"

    def run(home: str) -> list[str]:
        return [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home",
                str(tmp_path / home), "--storage", f"sqlite:///{db}", "--tracking", url]

    first = subprocess.Popen(run("a"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # once a resume point (every 2 epochs) has reached the server, mid-trial
        victim = running_trial(db, "resumed.search", first, epochs=3)
        study = optuna.load_study(study_name="resumed.search", storage=f"sqlite:///{db}")
        run_id = study.trials[victim].user_attrs["mlflow_run_id"]
        deadline = time.monotonic() + 60
        while not MlflowClient(url).list_artifacts(run_id, "resume"):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(30)
    second = subprocess.run(run("b"), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    study = optuna.load_study(study_name="resumed.search", storage=f"sqlite:///{db}")
    (done,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim]
    assert f"trial {done.number}: resuming from the resume point of its last attempt" in (
        second.stdout)
    assert done.state.name == "COMPLETE" and min(done.intermediate_values) > 2
    assert sum(t.user_attrs.get("role") == "search" and t.state.name == "COMPLETE"
               for t in study.trials) == 2  # the budget, exact
    client = MlflowClient(url)
    for t in study.trials:  # the resume points are spent once the trial is done
        if t.user_attrs.get("mlflow_run_id"):
            assert not client.list_artifacts(t.user_attrs["mlflow_run_id"], "resume")


def test_a_tracking_server_that_stops_is_named_in_one_line_and_its_trial_runs_again(
        write_study, tmp_path):
    """The tracking server goes away mid-trial and stays away: one line naming it after the
    retry budget, no budget burnt; with the server back, a rerun finishes the study and
    leaves no run RUNNING."""
    path = write_study({"study": "outage", "base": {"epochs": 60}, "stages": [{
        "name": "search", "trials": 2, "sampler": "random", "confirm": None,
        "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}]})
    root, port, db = tmp_path / "server", free_port(), tmp_path / "optuna.db"
    root.mkdir()
    backend = f"sqlite:///{root / 'mlflow.db'}"
    with mlflow_server(backend, root / "artifacts", port=port) as url:
        cmd = [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home",
               str(tmp_path / "home"), "--storage", f"sqlite:///{db}", "--tracking", url]
        proc = run_until_training(cmd, db, "outage.search")
    _, err = proc.communicate(timeout=180)  # the server is gone
    last = stopped_line(proc, err)
    assert f"the MLflow tracking server at {url} has not answered for 3 s" in last, last
    with mlflow_server(backend, root / "artifacts", port=port) as url:
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    study = optuna.load_study(study_name="outage.search", storage=f"sqlite:///{db}")
    searched = [t for t in study.trials if t.state.name == "COMPLETE"
                and t.user_attrs.get("role") == "search"]
    assert len(searched) == 2  # the budget, exactly



def test_ctrl_c_while_waiting_for_a_tracking_server_stops_the_wait(write_study, tmp_path):
    """A server not (yet) there is waited for up to ASL_SWEEP_STORE_RETRY_S (120 s): a Ctrl-C
    in that wait was held until its end, two minutes for a mistyped --tracking."""
    path = write_study()
    cmd = [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home",
           str(tmp_path / "mlruns"), "--workers", "1", "--tracking",
           f"http://127.0.0.1:{free_port()}"]  # nothing listens there
    # MLflow's own HTTP retries off: each try fails at once, as asl-sweep's wait goes on.
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert "is not answering" in proc.stderr.readline()  # the wait has begun
        proc.send_signal(signal.SIGINT)
        asked = time.time()
        err = proc.stderr.read()
        proc.wait(timeout=60)
        took = time.time() - asked
    finally:
        proc.kill()
    assert proc.returncode == 2 and took < 20, (took, err)
    assert err.startswith("error: the MLflow tracking server at http://127.0.0.1:")
    assert "is not answering and a stop was asked for" in err and "rerun" in err


def _answering(code: int):
    """A real HTTP server on loopback that answers every request with `code` (a web server
    that is not MLflow, one that wants credentials, a proxy whose server is down)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(code)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html><body>not mlflow</body></html>")

        do_GET = do_POST = do_PATCH = do_DELETE = _answer

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("code, said", [
    (501, "the MLflow tracking server answered HTTP 501 for /api/2.0/mlflow/experiments/"
          "search: the address is not an MLflow server's (another web server on that port?)"),
    (401, "the MLflow tracking server answered HTTP 401 for /api/2.0/mlflow/experiments/"
          "search: give its credentials in MLFLOW_TRACKING_USERNAME"),
    (503, "has not answered for 2 s ("),
    (500, "has not answered for 2 s (")])
def test_a_tracking_address_that_answers_but_not_as_mlflow_is_one_line(write_study, tmp_path,
                                                                       capsys, monkeypatch,
                                                                       code, said):
    """--tracking at another web server's port, at a server that wants credentials, at a
    proxy whose MLflow server is down, or at a server failing every request (500): MLflow's
    traceback before; now one line, and the 503s and 500s are waited for as a server
    away."""
    monkeypatch.setenv("ASL_SWEEP_STORE_RETRY_S", "2")
    server = _answering(code)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["run", str(write_study()), "--home", str(tmp_path / "h"), "--workers",
                     "1", "--tracking", url]) == 2
    finally:
        server.shutdown()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) in (1, 2) and "Traceback" not in err, err  # 503: + "retrying"
    assert said in err.splitlines()[-1], err


def test_once_a_tracking_server_has_given_up_a_closing_write_fails_at_once(tmp_path,
                                                                         monkeypatch):
    """A run stopping for a tracking server that is gone still tries its closing writes
    (the server may be back): each waited MLflow's own retries and backoff, 3-4 s a
    write, after the budget was spent (7 s of a 21 s exit with a 10 s budget). Given up,
    a write is tried once, MLflow's retries off for it alone."""
    from asl_sweep.runtime.errors import StoreError
    from asl_sweep.runtime.workspace import Workspace
    from asl_sweep.tracking.tracker import Tracker

    monkeypatch.setenv("ASL_SWEEP_STORE_RETRY_S", "1")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)  # asl-sweep's 2
    root = tmp_path / "server"
    root.mkdir()
    with mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts") as url:
        tracker = Tracker(Workspace.at(tmp_path / "home", tracking_uri=url))
        run_id = tracker.new_run(tracker.experiment("gone"), "trial 0")
    with pytest.raises(StoreError, match="has not answered for 1 s"):
        tracker.status(run_id)
    started = time.monotonic()
    with pytest.raises(StoreError, match="has not answered for 1 s"):
        tracker.status(run_id)
    assert time.monotonic() - started < 1.0
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"  # its retries, as they were
