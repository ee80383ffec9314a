import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from asl_sweep.cli import main
from asl_sweep.results.readback import read_stages
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.settings.studyfile import load_study

PRUNABLE = {"base": {"epochs": 6}, "keep_checkpoints": "all", "stages": [{
    "name": "search", "trials": 8, "sampler": "random", "pruner": "median", "confirm": None,
    "space": {"lr": {"low": 1e-6, "high": 3e-2, "log": True}}}]}


def _runs(ws: Workspace, study: str, kind: str):
    client = MlflowClient(ws.tracking_uri)
    exp = client.get_experiment_by_name(study)
    return client, client.search_runs([exp.experiment_id], f"tags.kind = '{kind}'")


@pytest.mark.slow
def test_run_records_every_trial_in_mlflow_and_optuna(write_study, tmp_path, capsys):
    path = write_study(PRUNABLE)
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "top trials by val_acc" in out and "asl-sweep ui" in out
    ws = Workspace.at(home)
    client, studies = _runs(ws, "tiny", "study")
    _, stages = _runs(ws, "tiny", "stage")
    _, trials = _runs(ws, "tiny", "trial")
    assert len(studies) == 1 and len(stages) == 1 and len(trials) == 9  # with the incumbent
    assert stages[0].data.tags["mlflow.parentRunId"] == studies[0].info.run_id
    stage_files = {a.path for a in client.list_artifacts(stages[0].info.run_id)}
    assert "curves.png" in stage_files  # the carried trial's curves, on the stage run
    states = {}
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == stages[0].info.run_id
        state = run.data.tags["state"]
        states[state] = states.get(state, 0) + 1
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        if state == "COMPLETE":
            assert steps == list(range(1, 7))
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"config.yaml", "checkpoints"} <= artifacts
            assert run.data.params["lr"] and run.info.status == "FINISHED"
        else:
            assert state == "PRUNED" and 1 <= len(steps) < 6
    assert states.get("PRUNED", 0) >= 1, states
    study = optuna.load_study(study_name="tiny.search", storage=ws.storage)
    optuna_states = sorted(t.state.name for t in study.trials)
    assert optuna_states.count("PRUNED") == states["PRUNED"]
    assert optuna_states.count("COMPLETE") == states["COMPLETE"]


@pytest.mark.slow
def test_rerun_of_a_finished_study_changes_nothing(write_study, tmp_path, monkeypatch, capsys):
    path = write_study()
    home = str(tmp_path / "mlruns")
    assert main(["run", str(path), "--home", home, "--trials", "2"]) == 0
    cfg = load_study(path, trials=2)
    (before,) = read_stages(cfg, Workspace.at(home))
    # A finished stage is final: a rerun, even with a larger budget, keeps it and its winner.
    assert main(["run", str(path), "--home", home, "--trials", "3"]) == 0
    (after,) = read_stages(cfg, Workspace.at(home))
    assert len(after.trials) == 3 and after.result == before.result
    # By its name, where its YAML is not (a worker's machine): the same study, resumed.
    monkeypatch.chdir(home)
    capsys.readouterr()
    assert main(["run", "tiny", "--home", home]) == 0
    assert "study tiny: read with the settings its last run recorded" in capsys.readouterr().err
    (again,) = read_stages(cfg, Workspace.at(home))
    assert len(again.trials) == 3 and again.result == before.result


@pytest.mark.slow
def test_train_command_tracks_one_run(write_study, tmp_path, capsys):
    path = write_study()
    home = tmp_path / "mlruns"
    assert main(["train", str(path), "--home", str(home), "--set", "base.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "best epoch" in out
    _, runs = _runs(Workspace.at(home), "tiny", "train")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    # It says where it is recorded (it said nothing of it).
    assert f"recorded: MLflow run {runs[0].info.run_id} of experiment tiny" in out
    assert f"asl-sweep ui --home {home}" in out
    # Its checkpoint is on the run; no working folder is left to count as a trial in flight.
    assert not (home / "runs" / "tiny" / "train" / runs[0].info.run_id).exists()
    assert main(["status", str(path), "--home", str(home)]) == 0
    assert "trials in flight 0.0 MB" in capsys.readouterr().out


@pytest.mark.slow
def test_status_lists_stages(write_study, tmp_path, capsys, monkeypatch):
    path = write_study()
    home = str(tmp_path / "mlruns")
    main(["run", str(path), "--home", home, "--trials", "2"])
    capsys.readouterr()
    assert main(["status", str(path), "--home", home]) == 0
    out = capsys.readouterr().out
    assert "[1] search: finished" in out and "3 complete" in out  # the incumbent and 2
    # By its name alone, where its YAML is not (another folder): the settings its run
    # recorded, --trials 2 among them (was: "tiny: no such study file"); a path that is no
    # file is still one.
    monkeypatch.chdir(tmp_path / "mlruns")
    assert main(["status", "tiny", "--home", home]) == 0
    named = capsys.readouterr()
    assert named.out == out
    assert named.err == "study tiny: read with the settings its last run recorded (no file " \
                        "tiny here)\n"
    assert main(["status", "elsewhere/tiny", "--home", home]) == 2
    assert "elsewhere/tiny: no such study file" in capsys.readouterr().err
    # A name neither a file nor recorded: the recorded ones, the nearest first (it was
    # "tniy: no such study file", with the home's studies one `status` away).
    assert main(["status", "tniy", "--home", home]) == 2
    assert capsys.readouterr().err == (
        "error: tniy: no such study file, nor a study of that name recorded in "
        f"{Workspace.at(home).storage}: did you mean tiny? (recorded: tiny); give a study "
        "YAML's path or a recorded study's name\n")
    monkeypatch.chdir(tmp_path)
    assert "    goal: tiny search" in out
    from tests.conftest import TINY_STUDY

    unnamed = {k: v for k, v in TINY_STUDY["stages"][0].items() if k != "goal"}
    assert main(["status", str(write_study({"stages": [unnamed]}, name="no-goal.yaml")),
                 "--home", home]) == 0
    assert "goal:" not in capsys.readouterr().out  # no goal: no empty "goal:" line
    # Without a study (was: "the following arguments are required: study"): the studies
    # the home records, not its stages' own Optuna studies
    assert main(["status", "--home", home]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("studies recorded at sqlite:///") and listed[1:] == ["  tiny"]
    assert main(["status", "--home", str(tmp_path / "empty")]) == 2
    assert "nothing recorded yet at" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("args, message, code", [
    (["--set", "base.epochs=zero"], "base.epochs: Input should be a valid integer", 2),
    (["--set", "base.lrr=1"], "base.lrr: Extra inputs are not permitted", 2),
    (["--data", "/nonexistent/photos"], "data.root: /nonexistent/photos is not a folder", 2),
    (["--per-device", "0"], "argument --per-device: 0: at least 1 worker a GPU", 2),
    # (a stage queues its budget first: 100000000 queued for days, a Ctrl-C held meanwhile)
    (["--trials", "20000"], "--trials 20000: at most 10000 (a stage queues its budget", 2),
    (["--set", "stages.0.trials=20000"], "stages.0.trials: Input should be less than or "
     "equal to 10000", 2),
    # (an empty --home was Path(""): the study ran into the current folder)
    (["--home", ""], "argument --home: '': give the folder for the study's records", 2),
    (["--data", ""], "argument --data: '': an empty path (it would be the current folder)", 2),
    (["--storage", "foo://x"], "error: --storage foo://x: not a database URL; give "
     "sqlite:///PATH/optuna.db", 2),
    (["--storage", "optuna.db"], "error: --storage optuna.db: not a database URL", 2),
    (["--storage", "mysql://u@127.0.0.1:1/db"], "error: --storage mysql://u@127.0.0.1:1/db: its "
     "database driver is not installed (MySQLdb); install it", 2),
    (["--tracking", "foo://x"], "error: --tracking foo://x: not a database URL", 2),
    # (in memory: Optuna's and MLflow's tracebacks, each connection an empty database)
    (["--storage", "sqlite://"], "error: --storage sqlite://: a database in memory", 2),
    (["--tracking", "trk"], "error: --tracking trk: a folder is MLflow's old plain-folder "
     "store", 2),
    # (let through, then SQLAlchemy's traceback from the first worker)
    (["--tracking", "databricks"], "error: --tracking databricks: Databricks' hosted MLflow "
     "is not one asl-sweep runs on", 2),
    (["--home", "afile/sub"], "error: --home afile/sub: afile is a file, not a folder", 2),
    # (a folder named in Latin-1, a zip made on Windows: UnicodeEncodeError tracebacks)
    (["--home", os.fsdecode(b"hom\xe9")], "error: --home hom\\xe9: its path is not UTF-8 "
     "text", 2),
    (["--data", os.fsdecode(b"fot\xe9")], "data.root: fot\\xe9 is not UTF-8 text", 2),
])
def test_user_errors_are_one_message_not_a_traceback(write_study, tmp_path, args, message, code):
    path = write_study()
    (tmp_path / "afile").write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "asl_sweep.cli", "run", str(path),
                           "--home", str(tmp_path / "mlruns"), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == code
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "side by side" not in proc.stderr  # refused before anything starts


CHECK_ONLY = """
import json, sys, time
started = time.perf_counter()
from asl_sweep.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "optuna", "mlflow"})
print(json.dumps({"code": code, "heavy": heavy, "seconds": time.perf_counter() - started}))
"""


def test_a_config_error_comes_before_anything_heavy_loads(write_study):
    path = write_study({"base": {"lr": -1}})
    proc = subprocess.run([sys.executable, "-c", CHECK_ONLY, "run", str(path)],
                          capture_output=True, text=True, timeout=60)
    import json

    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["code"] == 2 and outcome["heavy"] == [], outcome
    assert "base.lr: Input should be greater than 0" in proc.stderr
    assert outcome["seconds"] < 2.0  # about 0.2 s on 2 cores; it was 8 s


def test_printed_commands_run_where_path_lacks_the_venv(monkeypatch, tmp_path):
    """The hints `run` prints name a command that runs as typed: after the README's install
    .venv/bin is not on PATH, so `asl-sweep` alone is "command not found"."""
    import subprocess
    import sys
    from pathlib import Path

    from asl_sweep.cli import runnable

    own = Path(sys.executable).parent / "asl-sweep"
    if not own.exists():
        pytest.skip("asl-sweep is not installed beside this interpreter")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    shown = runnable("asl-sweep")
    assert Path(shown).resolve() == own.resolve()
    done = subprocess.run([shown, "--help"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and "usage: asl-sweep" in done.stdout
    monkeypatch.setenv("PATH", f"{own.parent}:/usr/bin:/bin")
    assert runnable("asl-sweep") == "asl-sweep"  # where PATH finds this one: its name


def test_serve_names_a_model_it_cannot_serve_in_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing-here"), "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing-here" in err and "asl-sweep export" in err
    assert main(["serve", "models:/asl-sweep-x/1", "--home", str(tmp_path / "empty")]) == 2
    assert "no MLflow store here" in capsys.readouterr().err
    # A store with no such model, version or run: looked up before the server starts (the
    # server printed MLflow's traceback, then "stopped at start").
    home = Workspace.at(tmp_path / "home").prepare().home
    MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_experiments()  # the store, empty
    capsys.readouterr()
    for model, says in [("models:/asl-sweep-x/1", "no registered model asl-sweep-x in "),
                        ("runs:/0123abc/model", "no run 0123abc in ")]:
        assert main(["serve", model, "--home", str(home)]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"error: {model}: {says}")
        assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.out
    # The study YAML every other command takes, or a folder that is no MLflow model: one line
    # before MLflow's server starts (it printed its own traceback first).
    study = tmp_path / "my study.yaml"
    study.write_text("study: my-study\nstages: [{name: s, space: {lr: [0.01]}}]\n")
    assert main(["serve", str(study), "--home", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {study}: a study, not a model: serve its registered model, "
        f"models:/asl-sweep-my-study/VERSION (`asl-sweep export {study}` registers one and "
        "prints its version)")
    assert main(["serve", str(tmp_path), "--home", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"error: {tmp_path}: not an MLflow model folder (no MLmodel "
                                    "file in it); give models:/asl-sweep-STUDY/N, which "
                                    "`asl-sweep export` registers")
    assert "Traceback" not in captured.out


def test_store_proxy_names_a_storage_it_cannot_front_before_it_serves(tmp_path, capsys):
    """`store-proxy --storage` is checked as run's is: a path or an unknown scheme was
    SQLAlchemy's traceback, a store in memory was served, and an MLflow store was written
    Optuna's tables into, then called "made by another Optuna version (5.1.0; this is Optuna
    5.1.0)". Each is one line, exit 2, and nothing is served or written."""
    import sqlite3

    mlflow_db = tmp_path / "mlflow.db"
    with sqlite3.connect(mlflow_db) as db:  # MLflow's tables, as its store has them
        db.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY)")
        db.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY)")
    give = "give sqlite:///PATH/optuna.db, postgresql://USER@HOST/DB (the database the proxy"
    for storage, says in [
            (str(tmp_path / "optuna.db"), "not a database URL; " + give),
            ("foo://host/db", give), ("sqlite:///:memory:", "a database in memory"),
            ("grpc://127.0.0.1:13000", "a storage proxy, where the proxy fronts a database"),
            (f"sqlite:///{mlflow_db}", "an MLflow store (it holds that library's tables)")]:
        assert main(["store-proxy", "--storage", storage, "--port", "1"]) == 2, storage
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.splitlines()) == 1, captured
        assert captured.err.startswith(f"error: --storage {storage}: ") and says in captured.err
    with sqlite3.connect(mlflow_db) as db:
        assert {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = "
                                             "'table'")} == {
            "experiments", "runs"}


def test_output_read_by_a_reader_that_leaves_early_stops_without_a_traceback(write_study,
                                                                              tmp_path):
    """`asl-sweep status ... | head -1`: the reader closes the pipe, the next print fails;
    a Unix tool stops quietly (141, as for SIGPIPE), it does not print a traceback."""
    path = write_study({"base": {"epochs": 1}, "stages": [{"name": "search", "trials": 1,
                                                           "confirm": None,
                                                           "space": {"lr": [3e-3]}}]})
    home = str(tmp_path / "mlruns")
    assert main(["run", str(path), "--home", home]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "status", str(path),
                             "--home", home], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and err == ""
    # `status > file` on a full disk (/dev/full): one line naming standard output (it said
    # "a file: could not be written")
    if Path("/dev/full").exists():
        with open("/dev/full", "w") as full:
            done = subprocess.run([sys.executable, "-m", "asl_sweep.cli", "status", str(path),
                                   "--home", home], stdout=full, stderr=subprocess.PIPE,
                                  text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.startswith(
            "error: standard output: could not be written (No space left on device)"), \
            done.stderr


@pytest.mark.parametrize("args, message", [
    (["--threads", "-3"], "argument --threads: -3: at least 1 thread"),  # was torch's RuntimeError
    (["--threads", "0"], "argument --threads: 0: at least 1 thread"),  # was taken as "unset"
    (["--gpu-share", "2"], "argument --gpu-share: 2: a share is above 0 and at most 1"),
    (["--gpu-share", "0"], "argument --gpu-share: 0: a share is above 0 and at most 1"),
    # a negative index was a numpy traceback from the sampler's seed
    (["--worker-index", "-5"], "argument --worker-index: -5: give a number from 0 to 9999"),
    (["--worker-index", "x"], "argument --worker-index: 'x': give a number from 0 to 9999"),
])
def test_a_workers_own_flags_are_checked_by_the_parser(write_study, tmp_path, capsys, args,
                                                       message):
    path = write_study()
    with pytest.raises(SystemExit) as stop:
        main(["worker", str(path), "--home", str(tmp_path / "mlruns"), *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--trials", "3"], ["--storage", "sqlite:///x.db"]])
def test_train_refuses_the_search_flags_it_would_not_use(write_study, tmp_path, capsys, flag,
                                                          monkeypatch):
    """`train` is one training with the base settings: no trial budget, no Optuna store (it
    took both and did nothing with them)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["train", str(write_study()), "--home", str(tmp_path / "mlruns"), *flag])
    assert stop.value.code == 2
    assert f"unrecognized arguments: {' '.join(flag)}" in capsys.readouterr().err


def test_version_is_the_installed_packages(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"asl-sweep {version('asl-sweep')}"


def test_a_worker_run_started_says_its_logged_lines_as_its_own():
    """A worker's warnings ('trial 2: not queued again yet ...', a store not answering) came
    unprefixed beside run's own, as if run had said them."""
    code = ("import logging, sys\n"
            "from asl_sweep.cli import configure_logging, _whose, build_parser\n"
            "configure_logging(_whose(build_parser().parse_args(sys.argv[1:])))\n"
            "logging.getLogger('asl_sweep.search.trial').warning('trial 2: 100% said')\n")
    worker = ["worker", "s.yaml", "--worker-index", "3", "--parent-pid", "1"]
    said = subprocess.run([sys.executable, "-c", code, *worker], capture_output=True,
                          text=True, timeout=60)
    assert said.stderr == "[worker 3] trial 2: 100% said\n", said.stderr
    alone = subprocess.run([sys.executable, "-c", code, *worker[:4]], capture_output=True,
                           text=True, timeout=60)  # a worker started by hand: its own terminal
    assert alone.stderr == "trial 2: 100% said\n", alone.stderr


@pytest.mark.parametrize("command, out", [("report", "r.md"), ("report", "site/index.html"),
                                          ("export", "model.onnx")])
def test_out_that_names_a_file_is_refused(write_study, tmp_path, capsys, command, out):
    """--out takes a folder: `--out r.md` made a folder r.md/ with report.md in it."""
    with pytest.raises(SystemExit) as stopped:
        main([command, str(write_study()), "--home", str(tmp_path / "h"), "--out",
              str(tmp_path / out)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / out}: names a file; --out takes the folder the files go in" in err
    assert not (tmp_path / out).exists()


@pytest.mark.parametrize("command", ["report", "export"])
def test_out_named_in_another_encoding_is_refused(write_study, tmp_path, capsys, command):
    """An --out folder named in Latin-1: export's path went to the MLflow store and came
    back as MLflow's UnicodeEncodeError traceback."""
    out = os.fsdecode(bytes(tmp_path) + b"/out\xe9")
    with pytest.raises(SystemExit) as stopped:
        main([command, str(write_study()), "--home", str(tmp_path / "h"), "--out", out])
    assert stopped.value.code == 2
    assert "out\\xe9: its path is not UTF-8 text" in capsys.readouterr().err


def test_a_mistyped_command_names_the_one_it_most_likely_meant(capsys):
    """`asl-sweep rn`: Python 3.11's argparse listed every command and left the spelling to
    the user; a word close to none still gets the list."""
    for typed, said in (("rn", "'rn' is not a command; did you mean run?"),
                        ("exprt", "'exprt' is not a command; did you mean export?"),
                        ("zzz", "argument command: invalid choice: 'zzz' (choose from 'run'")):
        with pytest.raises(SystemExit) as stopped:
            main([typed, "sweeps/quick.yaml"])
        assert stopped.value.code == 2
        assert f"asl-sweep: error: {said}" in capsys.readouterr().err


def test_export_takes_several_forms_with_commas(capsys):
    """`--format onnx,mlflow` was "invalid choice": one form or all."""
    from asl_sweep.cli import EXPORT_FORMATS, build_parser
    from asl_sweep.results.export import FORMATS

    assert EXPORT_FORMATS == FORMATS  # the parser's names (no torch) are the exporter's
    parse = build_parser().parse_args
    assert parse(["export", "s.yaml", "--format", "onnx,mlflow"]).format == ["onnx", "mlflow"]
    assert parse(["export", "s.yaml", "--format", "ONNX"]).format == ["onnx"]
    assert parse(["export", "s.yaml", "--format", "all"]).format == list(FORMATS)
    assert parse(["export", "s.yaml"]).format == list(FORMATS)
    with pytest.raises(SystemExit) as e:
        parse(["export", "s.yaml", "--format", "onnx,tflite"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        "'onnx,tflite': no form named tflite; give torchscript, onnx, mlflow or all, or "
        "several with commas (onnx,mlflow)")


def test_the_command_ends_without_the_last_garbage_collections(monkeypatch, tmp_path, capsys):
    """`asl-sweep` and `python -m asl_sweep.cli` (a run's workers) enter through
    cli.console, which freezes the collector once the command is done: Python's shutdown
    then no longer walks every object torch and mlflow made (2-3 s of CPU a process on 2
    cores, a worker's on the path of the final test; benchmarks/process_exit.py)."""
    import gc
    import tomllib

    from asl_sweep.cli import console

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert scripts["project"]["scripts"]["asl-sweep"] == "asl_sweep.cli:console"
    monkeypatch.setattr(sys, "argv", ["asl-sweep", "status", "--home", str(tmp_path)])
    assert gc.get_freeze_count() == 0
    try:
        assert console() == 2  # nothing recorded there: one line saying so
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # this test process collects as before
    assert "nothing recorded" in capsys.readouterr().err


def test_a_worker_with_a_parent_and_no_index_names_itself_by_its_pid():
    """Started with run's hidden --parent-pid and no --worker-index, a worker prefixed its
    lines `[worker None]`."""
    import argparse

    from asl_sweep.cli import _whose

    args = argparse.Namespace(command="worker", parent_pid=1, worker_index=None)
    assert _whose(args) == f"[worker {os.getpid()}] "
    assert _whose(argparse.Namespace(command="worker", parent_pid=1, worker_index=2)) == (
        "[worker 2] ")
    assert _whose(argparse.Namespace(command="worker", parent_pid=None, worker_index=2)) == ""
