from __future__ import annotations

import copy
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from asl_sweep.runtime.workspace import Workspace
from asl_sweep.settings.config import DataConfig

# `run` trains one trial at a time in tests (the default, auto, starts a process a core):
# tests that watch the trainer in-process need it there (module-scoped fixtures too), and the
# suite's timing stays steady. Tests of several workers ask for them with --workers.
os.environ["ASL_SWEEP_WORKERS"] = "1"

# The suite runs two test processes (pytest-xdist, -n 2): each, and every process a test
# starts, computes on one thread, so the two do not fight over the cores (torch's default,
# a thread a core in each, oversubscribes them).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Tests that start servers, real processes or whole studies: `pytest -m "not slow"` (the fast
# loop) leaves them out, CI runs them all. Whole modules are named here; a single test of
# another module carries @pytest.mark.slow itself.
SLOW_MODULES = {"test_faults.py", "test_sweeps.py", "search/test_store.py",
                "search/test_study.py", "search/test_reuse.py", "search/test_trial.py",
                "tracking/test_server.py", "tracking/test_ui.py", "results/test_export.py",
                "results/test_report.py", "results/test_compare.py"}
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if item.path.relative_to(TESTS).as_posix() in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _user_cache(tmp_path_factory):
    """The user's cache, where asl-sweep keeps its blank MLflow store, is this run's own:
    one folder for the run's test processes and every process they start (pytest-xdist's
    workers share the parent of their base folders), never the user's ~/.cache."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    os.environ["XDG_CACHE_HOME"] = str(root / "user-cache")


@pytest.fixture(autouse=True)
def _no_outage_carried_over():
    """Each test starts as a fresh command's process does: no store given up or said to be
    away. A test whose store stayed away (a tracking address answering 503) left it given
    up, and a later test in the same pytest worker saw its own outage given up at once,
    never said: a failure that came and went with xdist's order."""
    yield
    from asl_sweep.runtime import outage

    outage._gave_up.clear()
    outage._said.clear()


TINY_STUDY = {
    "study": "tiny",
    "data": {"synthetic": {"per_class": 12, "seed": 0}, "image_size": 16, "val_fraction": 0.25},
    # device: cpu, so tests that compare numbers exactly hold on a GPU machine too.
    "base": {"hidden": [32], "epochs": 4, "batch_size": 16, "lr": 3e-3, "checkpoint_every": 2,
             "checkpoint_seconds": 0,
             "device": "cpu"},
    "stages": [{
        # Without confirmation unless a test asks for it: fewer trials, faster tests.
        "name": "search", "goal": "tiny search", "trials": 4, "sampler": "random",
        "confirm": None,
        "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "hidden": [[32], [16, 16]]},
    }],
}


def deep_update(tree: dict, updates: dict) -> dict:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            deep_update(tree[key], value)
        else:
            tree[key] = value
    return tree


@pytest.fixture
def write_study(tmp_path):
    """Write a study YAML (the tiny one, with updates) and return its path."""

    def write(updates: dict | None = None, name: str = "study.yaml") -> Path:
        spec = deep_update(copy.deepcopy(TINY_STUDY), updates or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace.at(tmp_path / "mlruns").prepare()


def make_image_folder(root: Path, classes=("A", "B", "C"), per_class: int = 6,
                      people=("p1", "p2", "p3"), size: int = 20) -> Path:
    """Real image files named <person>_<letter>_<n>.png, one folder per class."""
    rng = np.random.default_rng(0)
    for c_index, c in enumerate(classes):
        folder = root / c
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            person = people[n % len(people)]
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            pixels[:, c_index * 4:(c_index + 1) * 4] = 250  # a class-specific bar
            Image.fromarray(pixels).save(folder / f"{person}_{c}_{n}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def data_config(image_folder) -> DataConfig:
    return DataConfig(root=image_folder, image_size=16)


def running_trial(db: Path, study_name: str, proc, seconds: float = 120,
                  role: str | None = None, epochs: int = 1) -> int:
    """Number of a trial of `study_name` (of `role`, if given) that is RUNNING and has
    reported `epochs` epochs, read through a read-only SQLite connection: polling must never create
    or lock anything while the process under test sets its database up."""
    deadline = time.time() + seconds
    query = ("SELECT t.number FROM trials t JOIN studies s ON s.study_id = t.study_id "
             "WHERE s.study_name = ? AND t.state = 'RUNNING' AND (SELECT COUNT(*) FROM "
             f"trial_intermediate_values v WHERE v.trial_id = t.trial_id) >= {int(epochs)}")
    if role is not None:
        query += (" AND EXISTS (SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = "
                  f"t.trial_id AND a.key = 'role' AND a.value_json = '\"{role}\"')")
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if not db.exists():
            continue
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                rows = conn.execute(query, (study_name,)).fetchall()
        except sqlite3.Error:  # tables not there yet
            continue
        if rows:
            return rows[0][0]
    raise AssertionError(f"no trial of {study_name} was caught running "
                         f"(process exit code {proc.poll()})")


def interrupt_a_trial(cmd: list[str], db: Path, study_name: str, role: str | None = None,
                      epochs: int = 1) -> tuple[int, str]:
    """`cmd` (an `asl-sweep run`) as a process, stopped with SIGTERM once a trial of
    `study_name` (of `role`, if given) has trained `epochs` epochs: it must exit 130. The
    trial's number and the process's stderr."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = running_trial(db, study_name, proc, role=role, epochs=epochs)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    return victim, err


def run_until_training(cmd: list[str], db: Path, study_name: str):
    """`cmd` (an `asl-sweep run`) as a process whose stores give up after 3 s of silence,
    returned once a trial of `study_name` (in the SQLite file `db`) has trained two epochs:
    the moment an outage test takes a store or server away. MLflow's own retries of a
    request are off (asl-sweep's wait is under test): after the budget each closing write
    of the stopping run waited them out, 10 of the tracking-server test's 14 s."""
    import subprocess

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ASL_SWEEP_STORE_RETRY_S": "3",
                                 "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    running_trial(db, study_name, proc, epochs=2)
    return proc


def stopped_line(proc, err: str) -> str:
    """The last line of a run that stopped because a store or server went away: exit 2, no
    traceback, at most three lines (the outage noticed, what could not be recorded, the
    error itself)."""
    assert proc.returncode == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    return err.strip().splitlines()[-1]


def clock_off(seconds: int) -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment that run a real process whose wall clock is
    `seconds` off this machine's (libfaketime: a worker of another machine whose clock has
    drifted; its monotonic clock, which timers use, left alone). Skips where the `faketime`
    program is missing (.ci/run installs it)."""
    import shutil

    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed (apt-get install faketime)")
    return (["faketime", "-f", f"{seconds:+d}s"],
            {**os.environ, "FAKETIME_DONT_FAKE_MONOTONIC": "1"})


def elsewhere(code: str, *args: str, ready: str, clock: int = 0):
    """`code` run by a real Python process standing for a worker of another machine (the
    code names its own host), its wall clock `clock` seconds off this one's (clock_off);
    returned once it prints `ready`. A session of its own: under faketime it is faketime's
    child, and os.killpg(process.pid, ...) reaches both."""
    import subprocess
    import sys

    prefix, env = clock_off(clock) if clock else ([], None)
    process = subprocess.Popen([*prefix, sys.executable, "-c", code, *args], text=True,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    assert process.stdout.readline().strip() == ready, process.stderr.read()
    return process
