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
])
def test_a_bad_variable_stops_the_command_at_the_start_naming_it(write_study, tmp_path, name,
                                                                 value, message):
    proc = subprocess.run([sys.executable, "-m", "asl_sweep.cli", "run", str(write_study()),
                           "--home", str(tmp_path / "mlruns")],
                          env={**os.environ, name: value}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlruns" / "optuna.db").exists()  # before anything was recorded


@pytest.mark.parametrize("value, seconds", [("", 120.0), ("0", 0.0), ("2.5", 2.5)])
def test_seconds_take_numbers_and_an_empty_value_is_the_default(monkeypatch, value, seconds):
    monkeypatch.setenv("ASL_SWEEP_STORE_RETRY_S", value)
    assert environment.store_retry_seconds() == seconds


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5", "5s"])
def test_seconds_refuse_what_is_not_a_finite_count(monkeypatch, value):
    monkeypatch.setenv("ASL_SWEEP_SYSTEM_METRICS_S", value)
    with pytest.raises(ConfigError, match="ASL_SWEEP_SYSTEM_METRICS_S"):
        environment.system_metrics_seconds()


def test_a_flag_wins_over_its_variable(monkeypatch):
    from asl_sweep.cli import _workers_default, build_parser

    monkeypatch.setenv("ASL_SWEEP_WORKERS", "two")
    assert build_parser().parse_args(["run", "s.yaml", "--workers", "1"]).workers == 1
    assert build_parser().parse_args(["run", "s.yaml"]).workers is None  # then the variable:
    with pytest.raises(ConfigError, match=r"^\$ASL_SWEEP_WORKERS: 'two'"):
        _workers_default()
    monkeypatch.setenv("ASL_SWEEP_WORKERS", "3")
    assert _workers_default() == 3
