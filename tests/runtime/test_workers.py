"""--workers auto: how many trainings side by side, and with how many threads each."""

from pathlib import Path

import pytest

from asl_sweep.runtime.workers import auto_workers, fixed_workers

QUICK = Path(__file__).parents[2] / "sweeps" / "quick.yaml"

GIB = 1 << 30


def test_one_worker_a_core_with_one_thread_each_on_a_cpu():
    w = auto_workers(cores=2, gpus=0, memory=20 * GIB)
    assert (w.count, w.threads) == (2, 1) and "one per CPU core" in w.why
    assert auto_workers(cores=16, gpus=0, memory=64 * GIB).count == 16


def test_memory_bounds_the_count_for_large_models():
    w = auto_workers(large=True, cores=16, gpus=0, memory=10 * GIB)
    assert (w.count, w.threads) == (3, 5) and "free memory" in w.why
    assert auto_workers(large=False, cores=16, gpus=0, memory=10 * GIB).count == 10
    assert auto_workers(large=True, cores=4, gpus=0, memory=1 * GIB).count == 1


def test_one_worker_a_gpu():
    w = auto_workers(cores=16, gpus=2, memory=64 * GIB)
    assert (w.count, w.threads) == (2, 8) and "GPU" in w.why


def test_a_number_splits_the_cores():
    assert (fixed_workers(2, cores=2).threads, fixed_workers(4, cores=2).threads) == (1, 1)
    assert fixed_workers(1, cores=8).threads == 8


def test_k_workers_share_each_gpu_with_a_share_of_its_memory():
    w = auto_workers(cores=16, gpus=2, memory=64 * GIB, per_device=4)
    assert (w.count, w.threads, w.memory_share) == (8, 2, 0.25) and "4 per GPU" in w.why
    assert [w.device_of(i) for i in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    one = fixed_workers(3, cores=8, gpus=1, per_device=3)
    assert [one.device_of(i) for i in range(3)] == [0, 0, 0] and one.memory_share == 1 / 3


def test_on_a_cpu_there_is_no_device_and_no_share():
    w = fixed_workers(2, cores=2, gpus=0, per_device=4)
    assert (w.device_of(1), w.memory_share) == (None, 1.0)


def test_more_workers_than_the_machine_holds_is_one_line_naming_the_limit():
    from asl_sweep.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--workers 9999: this machine holds at most 4 "
                                          r"workers \(2 CPU cores x 2\); give --workers 4"):
        fixed_workers(9999, cores=2, memory=64 * GIB)
    with pytest.raises(ConfigError, match=r"at most 3 workers \(10 GiB of free memory at 3 GiB"):
        fixed_workers(4, cores=16, memory=10 * GIB, large=True)
    with pytest.raises(ConfigError, match=r"at most 2 workers \(1 GPU x --per-device 2\)"):
        fixed_workers(3, cores=16, gpus=1, per_device=2, memory=64 * GIB)
    assert fixed_workers(4, cores=2, memory=64 * GIB).count == 4  # two a core still runs


def test_workers_9999_is_refused_before_anything_starts(tmp_path, capsys):
    """The command line as a user types it: one line, exit 2, no process and no store."""
    from asl_sweep.cli import main

    home = tmp_path / "mlruns"
    code = main(["run", str(QUICK), "--home", str(home), "--workers", "9999"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --workers 9999: this machine holds at most")
    assert len(err.splitlines()) == 1 and not (home / "optuna.db").exists()
