"""Hostile inputs and faults, with real processes, real files and a real small filesystem:
one line and exit 2 for what the user can fix, nothing recorded lost, no budget burnt."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from asl_sweep.cli import main
from asl_sweep.results.readback import read_final
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.settings.studyfile import load_study

QUICK = {"stages": [{"name": "search", "trials": 3, "sampler": "random", "confirm": None,
                     "pruner": "none",
                     "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True},
                               "hidden": [[32], [16, 16], [24]]}}]}


def one_line_error(capsys, code, expected):
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err and "Traceback" not in err
    return err


def test_three_runs_at_once_on_a_fresh_home_share_the_study(write_study, tmp_path):
    path = write_study(QUICK)
    home = tmp_path / "mlruns"
    cmd = [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home", str(home)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    ws = Workspace.at(home)
    study = optuna.load_study(study_name="tiny.search", storage=ws.storage)
    searched = [t for t in study.trials
                if t.state.name == "COMPLETE" and t.user_attrs["role"] == "search"]
    assert len(searched) == 3  # the budget, exactly, across three processes
    settings = [tuple(sorted(t.params.items())) for t in searched]
    assert len(set(settings)) == 3  # each process sampled with its own seed
    # Both stores were created once and stay usable.
    client = MlflowClient(ws.tracking_uri)
    assert len(client.search_runs([client.get_experiment_by_name("tiny").experiment_id])) >= 5
    import sqlite3

    tables = {r[0] for r in sqlite3.connect(home / "mlflow.db").execute(
        "SELECT name FROM sqlite_master WHERE type='table'")}
    assert not any(name.startswith("_alembic_tmp") for name in tables), tables
    assert main(["status", str(path), "--home", str(home)]) == 0


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of a few MB (tmpfs), where this machine lets the test mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                        capture_output=True).returncode == 0
    if not ok:
        pytest.skip("cannot mount a tmpfs here (needs root); test_a_full_disk_injected covers it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_stops_the_run_in_one_line_and_burns_no_budget(write_study, small_disk,
                                                                  capsys):
    # A model whose checkpoint (about 12 MB) cannot fit on the 6 MB disk.
    path = write_study({**QUICK, "base": {"hidden": [4096], "epochs": 2}})
    home = small_disk / "mlruns"
    code = main(["run", str(path), "--home", str(home)])
    err = one_line_error(capsys, code, "could not be written (No space left on device)")
    assert "free space" in err and "rerun" in err
    study = optuna.load_study(study_name="tiny.search",
                              storage=Workspace.at(home).storage)
    stopped, *budget, queued = study.trials
    assert stopped.state.name == "FAIL" and stopped.user_attrs["failure"] == "stopped"
    assert queued.state.name == "WAITING"  # the same trial, to run again: no budget used
    assert queued.system_attrs["failed_trial"] == stopped.number
    assert budget and {t.state.name for t in budget} == {"WAITING"}  # the search, untouched
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    assert main(["run", str(path), "--home", str(home)]) == 0
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    searched = [t for t in study.trials if t.state.name == "COMPLETE"
                and t.user_attrs["role"] == "search"]
    assert len(searched) == 3


def test_a_full_database_behind_the_storage_proxy_is_one_line_and_burns_no_budget(
        write_study, small_disk, tmp_path):
    """The proxy's database fills its disk mid-trial: the worker stops with one line naming
    the Optuna store and what to do; with space freed, a rerun trains the stopped trial
    again and finishes the budget exactly."""
    from asl_sweep.search.store import optuna_storage
    from tests.conftest import running_trial, stopped_line
    from tests.servers import free_port, store_proxy

    path = write_study({**QUICK, "base": {"epochs": 60}})
    db, port = small_disk / "optuna.db", free_port()
    filler = small_disk / "filler"
    with store_proxy(f"sqlite:///{db}", port=port) as url:
        cmd = [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home",
               str(tmp_path / "mlruns"), "--storage", url]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        running_trial(db, "tiny.search", proc, epochs=2)
        with filler.open("wb") as f:  # the disk, full
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError:
                pass
        _, err = proc.communicate(timeout=120)
        filler.unlink()
        last = stopped_line(proc, err)
        assert "the Optuna store" in last and "database or disk is full" in last, last
        assert "free space" in last and "rerun the same command" in last
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        trials = optuna.load_study(study_name="tiny.search",
                                   storage=optuna_storage(url)).trials
    assert sum(t.state.name == "COMPLETE" and t.user_attrs.get("role") == "search"
               for t in trials) == 3  # the budget, exactly


def test_a_full_disk_injected_is_the_same_one_line(write_study, tmp_path, capsys, monkeypatch):
    import errno

    from asl_sweep.runtime import files

    real = files.os.fdopen

    def full(fd, *args, **kwargs):
        handle = real(fd, *args, **kwargs)

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device")

        return Full()

    path = write_study(QUICK)
    home = tmp_path / "mlruns"
    monkeypatch.setattr(files.os, "fdopen", full)
    code = main(["run", str(path), "--home", str(home)])
    one_line_error(capsys, code, "could not be written (No space left on device)")


def test_a_read_only_home(write_study, small_disk):
    path = write_study({**QUICK, "stages": [{**QUICK["stages"][0], "trials": 1}]})
    home = small_disk / "mlruns"

    def cli(*args):  # separate processes: this one must hold no file open on the disk
        return subprocess.run([sys.executable, "-m", "asl_sweep.cli", *args, str(path),
                               "--home", str(home)], capture_output=True, text=True, timeout=120)

    assert cli("run").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    status = cli("status")  # reading a finished study still works
    assert status.returncode == 0 and "[1] search: finished" in status.stdout, status.stderr
    again = cli("run", "--set", "study=other")
    assert again.returncode == 2 and "Read-only file system" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr


def test_a_missing_home_is_one_line(write_study, tmp_path, capsys):
    path = write_study()
    for command in ("status", "report", "export", "evaluate"):
        code = main([command, str(path), "--home", str(tmp_path / "nowhere")])
        one_line_error(capsys, code, "nothing recorded yet")
    assert not (tmp_path / "nowhere").exists()


def test_a_home_whose_optuna_store_is_gone_says_so(write_study, tmp_path, capsys):
    """optuna.db deleted, mlflow.db still there: the line says which store is missing and
    what it held, not 'nothing recorded yet'."""
    path = write_study()
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home)]) == 0
    capsys.readouterr()
    (home / "optuna.db").unlink()
    code = main(["status", str(path), "--home", str(home)])
    err = one_line_error(capsys, code, "its Optuna store")
    assert "is missing, though its MLflow runs are in" in err and "restore it" in err
    assert "nothing recorded yet" not in err and not (home / "optuna.db").exists()


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00" * 40), "not a text file"),
])
def test_a_study_path_that_is_not_a_study_file(tmp_path, capsys, make, expected):
    path = tmp_path / "study.yaml"
    make(path)
    one_line_error(capsys, main(["run", str(path), "--home", str(tmp_path / "h")]), expected)


def test_an_unreadable_study_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "study.yaml"
    path.write_text("study: x\n")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads it anyway: make the read itself fail
        from pathlib import Path

        real = Path.read_bytes
        monkeypatch.setattr(Path, "read_bytes", lambda p: (_ for _ in ()).throw(
            PermissionError(13, "Permission denied")) if p == path else real(p))
    one_line_error(capsys, main(["run", str(path)]), "cannot be read (Permission denied)")


@pytest.mark.parametrize("item, expected", [
    ("base.hidden.10000000=8", "base.hidden.10000000: index 10000000 is beyond the end of a "
                               "list (length 1, at most 64)"),
    ("base.dropout.10000000=0.1", "base.dropout"),
    ("base.lr=[1, 2", "the value '[1, 2' is not valid YAML"),
    ("base.hidden=x: y: z", "the value 'x: y: z' is not valid YAML"),
    # A list of mappings is not padded: stages.1 of a one-stage study was a 0.0 in its place
    # and "stages.1.trials is not a settable key path".
    ("stages.1.trials=2", "stages has 1 item (stages.0): stages.1 is past its end; add it in "
                          "the YAML"),
    ("stages.first.trials=2", "stages is a list: name an item by its number, not 'first' "
                              "(stages.0)"),
    # A list of numbers gains an item only right after its last: base.hidden.5 on [32] was
    # four zeros before it and "base.hidden.1: Input should be greater than or equal to 1".
    ("base.hidden.5=8", "base.hidden has 1 item (base.hidden.0): base.hidden.5 is past its "
                        "end; give the whole list, e.g. base.hidden=[...]"),
    # YAML's infinity and NaN (lr .inf was taken, and every trial diverged)
    ("base.lr=.inf", "base.lr: Input should be a finite number"),
    ("stages.0.space.lr={low: 1e-4, high: .inf}", "stages.0.space.lr.high: Input should be a "
                                                  "finite number"),
])
def test_set_values_blame_what_is_wrong_quickly(write_study, capsys, item, expected):
    started = time.perf_counter()
    one_line_error(capsys, main(["run", str(write_study()), "--set", item]), expected)
    assert time.perf_counter() - started < 5


def test_ui_and_the_proxy_refuse_a_taken_or_impossible_port_or_host(write_study, tmp_path, capsys):
    home = tmp_path / "mlruns"
    Workspace.at(home).prepare()
    (home / "mlflow.db").write_bytes(b"")  # a store to serve; the port check comes first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_error(capsys, main(["ui", "--home", str(home), "--port", str(port)]),
                       f"--port {port}: 127.0.0.1:{port} cannot be used")
    one_line_error(capsys, main(["ui", "--home", str(home), "--port", "70000"]),
                   "--port 70000: not a port number")
    # (a host that is not this machine's was blamed on the port: "--port 5000: bad host:5000
    # cannot be used (Name or service not known; another server may hold it)")
    for host, why in (("bad host", "Name or service not known"),
                      ("192.0.2.1", "Cannot assign requested address")):
        for command in (["ui", "--home", str(home)], ["store-proxy", "--storage",
                                                      f"sqlite:///{tmp_path}/optuna.db"]):
            one_line_error(capsys, main([*command, "--host", host]),
                           f"--host {host}: not an address of this machine ({why}); give one "
                           "of its addresses, 127.0.0.1 (the default: this machine only) or "
                           "0.0.0.0 (every network)")


def test_a_moved_or_copied_home_is_one_line_and_writes_nothing_into_the_original(
        write_study, tmp_path, capsys):
    import shutil

    path = write_study({"stages": [{"name": "s", "trials": 1, "confirm": None,
                                    "space": {"lr": [3e-3]}}]})
    original = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(original)]) == 0
    copy = tmp_path / "copied"
    shutil.copytree(original, copy)
    before = sorted(p.name for p in (original / "artifacts").rglob("*"))
    capsys.readouterr()
    for command in ("evaluate", "report", "export", "run"):
        code = main([command, str(path), "--home", str(copy)])
        err = capsys.readouterr().err
        assert code == 2, (command, err)
        assert "the home was moved or copied" in err and str(original / "artifacts") in err
        assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in (original / "artifacts").rglob("*")) == before


FILL_AT_SCORING = """
import sys
import asl_sweep.search.evaluation as study
real = study.score_repeats
def full(*args, **kwargs):
    scored = real(*args, **kwargs)
    with open(sys.argv[1], "wb") as f:  # the disk fills while the test split is scored
        try:
            while True:
                f.write(b"x" * 65536)
                f.flush()
        except OSError:
            pass
    return scored
study.score_repeats = full
from asl_sweep.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_disk_that_fills_during_the_final_scoring_is_one_line_and_a_rerun_scores(
        write_study, small_disk):
    path = write_study({**QUICK, "stages": [{**QUICK["stages"][0], "trials": 1}]})
    home = small_disk / "mlruns"
    filler = small_disk / "filler"
    proc = subprocess.run([sys.executable, "-c", FILL_AT_SCORING, str(filler), "run", str(path),
                           "--home", str(home)], capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "could not be written" in err and "rerun" in err
    filler.unlink()
    assert main(["run", str(path), "--home", str(home)]) == 0
    ws = Workspace.at(home)
    client = MlflowClient(ws.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert all(r.info.status != "RUNNING" for r in runs)
    assert read_final(load_study(path), ws)["n_images"] > 0


def _stopped(proc, timeout: float) -> tuple[str, float]:
    """One SIGTERM to `proc` (a scheduler's, or `timeout`'s), then its stderr and how many
    seconds it took to exit."""
    proc.send_signal(signal.SIGTERM)
    asked = time.time()
    _, err = proc.communicate(timeout=timeout)
    return err, time.time() - asked


def test_sigterm_while_a_large_budget_is_queued_stops_at_once(write_study, tmp_path):
    """A stage queues its budget before it searches (about 150 slots a second into SQLite):
    a SIGTERM while 10,000 were queued was held until the last, a minute later."""
    import sqlite3

    path = write_study({**QUICK, "stages": [{**QUICK["stages"][0], "trials": 10_000}]})
    db = tmp_path / "mlruns" / "optuna.db"
    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "run", str(path),
                             "--home", str(tmp_path / "mlruns")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, queued = time.time() + 120, 0
        while queued < 50 and proc.poll() is None:
            assert time.time() < deadline, "the budget was never queued"
            time.sleep(0.1)
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                    queued = conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
            except sqlite3.Error:  # not made yet
                continue
        err, took = _stopped(proc, timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert took < 10, (took, err[-500:])


def test_sigterm_while_the_built_in_set_is_drawn_stops_at_once(write_study, tmp_path):
    """A scheduler's (or `timeout`'s) one SIGTERM while the data is still being made: it was
    noted and acted on only at the first trial, after the whole set was drawn (minutes for a
    large one), so a scheduler's grace ran out and it killed the run instead."""
    path = write_study({**QUICK, "data": {"synthetic": {"per_class": 5000, "signers": 40,
                                                        "kind": "people"},
                                          "image_size": 48}})
    cmd = [sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home",
           str(tmp_path / "mlruns"), "--workers", "2"]  # --workers 2: a line before the data
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "workers side by side" in proc.stdout.readline()  # the signals are installed
        time.sleep(1.0)  # drawing 45,000 images: about 40 s on one core
        err, took = _stopped(proc, timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "nothing recorded was lost" in err and took < 10, (took, err)
    assert not (tmp_path / "mlruns" / "optuna.db").exists()  # it stopped before the stores


@pytest.mark.parametrize("damaged, store", [("optuna.db", "the Optuna store"),
                                            ("mlflow.db", "the MLflow store")])
def test_a_damaged_store_file_is_one_line_naming_it(write_study, tmp_path, capsys, damaged,
                                                     store):
    """A home whose database file is not SQLite (damaged, or another program's) was
    SQLAlchemy's traceback ("file is not a database")."""
    home = tmp_path / "mlruns"
    home.mkdir()
    (home / damaged).write_bytes(bytes(range(256)) * 20)
    err = one_line_error(capsys, main(["run", str(write_study()), "--home", str(home),
                                       "--workers", "1"]),
                         f"{store} ({damaged}, or --")
    assert err.endswith("cannot be read (file is not a database): the file is damaged or is "
                        "not asl-sweep's; restore it from a copy, or move it aside and run the "
                        "study afresh")


MAKE_STORES = """
import sys
import optuna
from mlflow.tracking import MlflowClient
optuna.create_study(storage=f"sqlite:///{sys.argv[1]}/optuna.db", study_name="made")
MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db").search_experiments()
"""


@pytest.mark.parametrize("store, schema, says", [
    ("optuna.db", "v3.0.0.d", "the Optuna store (optuna.db, or --storage) was made by another "
     "Optuna version ("),
    ("mlflow.db", "1b5f0d9ad7c1", "the MLflow store (mlflow.db, or --tracking) was made by "
     "another MLflow version (its schema 1b5f0d9ad7c1, this MLflow's ")])
def test_a_store_another_library_version_made_is_one_line_saying_what_to_do(
        write_study, tmp_path, capsys, store, schema, says):
    """A home made with another Optuna or MLflow (an older asl-sweep's, or a shared database
    server's) was their traceback ("Detected out-of-date database schema", "no longer
    compatible with the table schema")."""
    import sqlite3

    home = tmp_path / "mlruns"
    home.mkdir()
    # Made in another process, as they would be: MLflow keeps a store it has opened (and
    # checked) for the rest of the process.
    subprocess.run([sys.executable, "-c", MAKE_STORES, str(home)], check=True, timeout=120)
    with sqlite3.connect(home / store) as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (schema,))
    capsys.readouterr()
    err = one_line_error(capsys, main(["run", str(write_study()), "--home", str(home),
                                       "--workers", "1"]), says)
    assert err.endswith("upgrade` on its URI where an older MLflow made it, or use the MLflow "
                        "version that made it" if store == "mlflow.db" else
                        "back it up, then run `optuna storage upgrade --storage URL`"), err


def test_a_damaged_checkpoint_is_named_by_its_trial_and_run(write_study, tmp_path, capsys):
    """A best.pt damaged on disk was named by the temporary copy it was read through
    (/tmp/tmpXXXX/best.pt); the line names the trial and run, and what to do."""
    path = write_study(QUICK)
    home = tmp_path / "mlruns"
    assert main(["run", str(path), "--home", str(home), "--workers", "1"]) == 0
    capsys.readouterr()
    for checkpoint in home.glob("artifacts/*/*/artifacts/checkpoints/best.pt"):
        checkpoint.write_bytes(b"\x00damaged" * 100)
    err = one_line_error(capsys, main(["report", str(path), "--home", str(home)]),
                         "its checkpoint (run ")
    assert re.fullmatch(r"error: trial \d+: its checkpoint \(run [0-9a-f]{32}, "
                        r"checkpoints/best\.pt\) cannot be read \(.*\); delete it from the "
                        r"run's artifacts and rerun the study \(asl-sweep run, same "
                        r"arguments\) to train it again", err), err
    # Read in place (a local home's artifacts are not copied first); one deleted is missing
    # (it said MLflow's "The following failures occurred while downloading ...:"), and the
    # rerun the line advises trains it again.
    for checkpoint in home.glob("artifacts/*/*/artifacts/checkpoints/best.pt"):
        checkpoint.unlink()
    err = one_line_error(capsys, main(["report", str(path), "--home", str(home)]),
                         "its checkpoint (run ")
    assert re.fullmatch(r"error: trial \d+: its checkpoint \(run [0-9a-f]{32}, "
                        r"checkpoints/best\.pt\) is missing from the run's artifacts; rerun the "
                        r"study \(asl-sweep run, same arguments\) to train it again", err), err
    assert main(["run", str(path), "--home", str(home), "--workers", "1"]) == 0
    assert main(["report", str(path), "--home", str(home)]) == 0
