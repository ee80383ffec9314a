"""Stops at safe points, across `run` and the workers it starts: real processes, real signals."""

import signal
import subprocess
import sys
import time

import pytest

from asl_sweep.runtime import signals

STARTING = """
import sys, time
time.sleep(2)  # a worker's imports: the terminal's Ctrl-C comes here
from asl_sweep.runtime import signals
signals.install()
try:
    signals.check()
except KeyboardInterrupt as e:
    print("stop at a safe point:", e)
    sys.exit(0)
print("no stop")
"""

WORKING = """
import sys, time
from asl_sweep.runtime import signals
signals.install()
print("ready", flush=True)
try:
    time.sleep(4)  # between two safe points
except KeyboardInterrupt:
    print("at once")
    sys.exit(3)
try:
    signals.check()
except KeyboardInterrupt as e:
    print("at the safe point:", e)
"""


READING = """
import sys, time
from asl_sweep.runtime import signals
signals.install()
try:
    with signals.at_once():  # e.g. report loading torch and MLflow, reading the study
        print("ready", flush=True)
        time.sleep(4)
except KeyboardInterrupt:
    print("at once")
    sys.exit(3)
print("after the block")
"""


def test_a_stop_in_a_block_that_records_nothing_is_taken_at_once():
    """report, export, evaluate and status spend seconds loading torch and MLflow and
    reading the study back before anything is written; a Ctrl-C there was held until the
    first safe point after (about 4 s of `report`'s 7 on quick.yaml here)."""
    proc = subprocess.Popen([sys.executable, "-c", READING], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "ready"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out.strip()) == (3, "at once"), err
    assert time.monotonic() - sent < 2


def test_a_ctrl_c_while_a_worker_starts_is_held_for_its_first_safe_point():
    with signals.ctrl_c_held_for_child():
        proc = subprocess.Popen([sys.executable, "-c", STARTING], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out.strip()) == (0, "stop at a safe point: signal 2"), err


@pytest.mark.parametrize("sent, said", [
    # the terminal's Ctrl-C, then `run` passing it on: one stop, at the safe point
    ([signal.SIGINT, signals.PASSED_ON], "at the safe point: signal 2"),
    # passed on twice (by `run`, then by the orphan watch as `run` is gone): still one stop
    ([signals.PASSED_ON, signals.PASSED_ON], "at the safe point: signal 10"),
    # Ctrl-C twice: the second stops at once
    ([signal.SIGINT, signal.SIGINT], "at once"),
    # a stop passed on, then `run` asked a second time (SIGTERM): at once
    ([signals.PASSED_ON, signal.SIGTERM], "at once"),
])
def test_a_stop_passed_on_never_counts_as_the_second_signal(sent, said):
    proc = subprocess.Popen([sys.executable, "-c", WORKING], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "ready"
    for signum in sent:
        proc.send_signal(signum)
        time.sleep(0.3)
    out, err = proc.communicate(timeout=60)
    assert out.strip() == said, err


def test_a_closed_terminal_stops_the_run_at_a_safe_point(write_study, tmp_path):
    """A closed terminal (SIGHUP to the process group, then writes to it fail) killed `run`
    at once: its trial stayed RUNNING in the Optuna store and in MLflow until a rerun. Now it
    is a stop at the next safe point, its last lines going nowhere."""
    import os
    import pty
    import sqlite3
    import threading

    from mlflow.tracking import MlflowClient

    path = write_study({"base": {"epochs": 500}, "stages": [{
        "name": "search", "trials": 2, "sampler": "random", "confirm": None, "pruner": "none",
        "space": {"lr": [1e-3, 3e-3]}}]})
    home = tmp_path / "mlruns"
    main_fd, term = pty.openpty()
    # A terminal's own run: SIGHUP at its default even where this suite runs under nohup
    # (which `run` leaves ignored, as it should: the run then outlived the closed terminal).
    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "run", str(path), "--home",
                             str(home), "--workers", "1"], stdin=term, stdout=term, stderr=term,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    os.close(term)
    said = []

    def read() -> None:
        try:
            while chunk := os.read(main_fd, 4096):
                said.append(chunk)
        except OSError:  # the terminal is closed
            pass

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline, running = time.time() + 120, 0
        while not running:
            assert proc.poll() is None and time.time() < deadline, b"".join(said)[-2000:]
            time.sleep(0.2)
            try:
                with sqlite3.connect(f"file:{home / 'optuna.db'}?mode=ro", uri=True) as db:
                    running = db.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'"
                                         ).fetchone()[0]
            except sqlite3.Error:  # not made yet
                continue
        time.sleep(1.0)  # into its epochs
        os.killpg(proc.pid, signal.SIGHUP)
        os.close(main_fd)  # the terminal is gone: a write to it now fails
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (proc.returncode, b"".join(said)[-2000:])
    with sqlite3.connect(f"file:{home / 'optuna.db'}?mode=ro", uri=True) as db:
        states = [s for (s,) in db.execute("SELECT state FROM trials")]
    assert "RUNNING" not in states and "WAITING" in states, states  # queued again
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status != "RUNNING" for r in runs), [r.info.status for r in runs]
