import os
import subprocess
import sys

import pytest

from asl_sweep.runtime import environment
from asl_sweep.runtime.errors import ConfigError


@pytest.mark.parametrize("name, value, message", [
    # (both were read with float() where they were used: a traceback once a store was away,
    # or at the first trial)
    ("ASL_SWEEP_STORE_RETRY_S", "abc", "$ASL_SWEEP_STORE_RETRY_S='abc': give a number of "
     "seconds, 0 or more (default 120), or unset it"),
    ("ASL_SWEEP_SYSTEM_METRICS_S", "-1", "$ASL_SWEEP_SYSTEM_METRICS_S='-1': give a number"),
    # (the parser's error blamed --workers, which was not given)
    ("ASL_SWEEP_WORKERS", "two", "$ASL_SWEEP_WORKERS: 'two': give a number of workers or "
     "auto; or unset it"),
    # (taken as "no": a run without a network tried to download its backbone's weights)
    ("ASL_SWEEP_OFFLINE", "maybe", "$ASL_SWEEP_OFFLINE='maybe': give 1 (never download "
     "pretrained weights) or 0, or unset it"),
])
def test_a_bad_variable_stops_the_command_at_the_start_naming_it(write_study, tmp_path, name,
                                                                 value, message):
    # -X importtime lists every module the command loaded (on stderr, before its error).
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "asl_sweep.cli", "run",
                           str(write_study()), "--home", str(tmp_path / "mlruns")],
                          env={**os.environ, name: value}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlruns" / "optuna.db").exists()  # before anything was recorded
    # ... and before torch was loaded (seconds): $ASL_SWEEP_WORKERS was read after it.
    loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
              if line.startswith("import time:")}
    assert "asl_sweep.runtime.environment" in loaded and "torch" not in loaded


@pytest.mark.parametrize("value, seconds", [("", 120.0), ("0", 0.0), ("2.5", 2.5)])
def test_seconds_take_numbers_and_an_empty_value_is_the_default(monkeypatch, value, seconds):
    monkeypatch.setenv("ASL_SWEEP_STORE_RETRY_S", value)
    assert environment.store_retry_seconds() == seconds


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5", "5s"])
def test_seconds_refuse_what_is_not_a_finite_count(monkeypatch, value):
    monkeypatch.setenv("ASL_SWEEP_SYSTEM_METRICS_S", value)
    with pytest.raises(ConfigError, match="ASL_SWEEP_SYSTEM_METRICS_S"):
        environment.system_metrics_seconds()


@pytest.mark.parametrize("value", ["1e-9", "0.1"])
def test_system_samples_are_off_or_at_most_two_a_second(monkeypatch, value):
    """1e-9 s sampled in a tight loop beside the training: 3925 MLflow rows of each metric
    in a 2-second training, and 41% of its throughput."""
    monkeypatch.setenv("ASL_SWEEP_SYSTEM_METRICS_S", value)
    with pytest.raises(ConfigError, match=r"give 0 \(no samples\) or at least 0.5 seconds"):
        environment.system_metrics_seconds()
    for fine in ("0", "0.5", "30"):
        monkeypatch.setenv("ASL_SWEEP_SYSTEM_METRICS_S", fine)
        assert environment.system_metrics_seconds() == float(fine)


@pytest.mark.parametrize("value, offline", [("", False), ("0", False), ("off", False),
                                            ("1", True), ("true", True), ("Yes", True)])
def test_offline_is_a_yes_or_a_no(monkeypatch, value, offline):
    monkeypatch.setenv("ASL_SWEEP_OFFLINE", value)
    assert environment.offline() is offline


def test_a_flag_wins_over_its_variable(monkeypatch):
    from asl_sweep.cli import _workers_default, build_parser

    monkeypatch.setenv("ASL_SWEEP_WORKERS", "two")
    assert build_parser().parse_args(["run", "s.yaml", "--workers", "1"]).workers == 1
    assert build_parser().parse_args(["run", "s.yaml"]).workers is None  # then the variable:
    with pytest.raises(ConfigError, match=r"^\$ASL_SWEEP_WORKERS: 'two'"):
        _workers_default()
    monkeypatch.setenv("ASL_SWEEP_WORKERS", "3")
    assert _workers_default() == 3


def test_the_stores_come_from_their_variables_and_a_bad_one_is_named(monkeypatch, tmp_path,
                                                                     capsys):
    """ASL_SWEEP_STORAGE / ASL_SWEEP_TRACKING: the stores without a flag (a Kubernetes Secret,
    a password kept off the command line); a flag wins; a bad value names the variable."""
    from asl_sweep.cli import build_parser, main

    monkeypatch.setenv("ASL_SWEEP_STORAGE", "postgresql://u:s3cret@db/optuna")
    monkeypatch.setenv("ASL_SWEEP_TRACKING", "http://mlflow:5000")
    args = build_parser().parse_args(["status", "s.yaml"])
    assert (args.storage, args.tracking) == ("postgresql://u:s3cret@db/optuna",
                                             "http://mlflow:5000")
    args = build_parser().parse_args(["worker", "s.yaml", "--storage", "sqlite:///o.db"])
    assert args.storage == "sqlite:///o.db" and args.tracking == "http://mlflow:5000"
    assert build_parser().parse_args(["predict", "m.onnx", "x.png"]).tracking == (
        "http://mlflow:5000")
    study = tmp_path / "s.yaml"
    study.write_text("study: s\nstages: [{name: a, space: {lr: [0.01]}}]\n")
    monkeypatch.setenv("ASL_SWEEP_STORAGE", "optuna.db")
    assert main(["status", str(study), "--home", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: $ASL_SWEEP_STORAGE optuna.db: not a database URL; give sqlite:///PATH/optuna.db,"
        " postgresql://USER@HOST/DB or grpc://HOST:PORT (asl-sweep store-proxy)")
    monkeypatch.delenv("ASL_SWEEP_STORAGE")
    monkeypatch.setenv("ASL_SWEEP_TRACKING", str(tmp_path))
    assert main(["status", str(study), "--home", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: $ASL_SWEEP_TRACKING {tmp_path}: a folder "
                                              "is MLflow's old plain-folder store")
    assert not (tmp_path / "optuna.db").exists()
