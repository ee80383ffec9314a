"""What a process may use: its CPUs (affinity, a quota) and its memory (a limit), read from
real cgroup files as a container, a Kubernetes pod or a Slurm job has them, and a real CPU
affinity set on a real process."""

import os
import subprocess
import sys

import pytest

from asl_sweep.runtime import machine

GiB = 1 << 30


def _files(root, files: dict[str, str]):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_limits_of_a_pod_and_of_the_slice_above_it(tmp_path):
    """cgroup v2: one tree; a limit on a folder above the process's own bounds it too."""
    root = _files(tmp_path, {
        "cgroup.controllers": "cpu memory",
        "kubepods/memory.max": "8589934592\n",
        "kubepods/cpu.max": "max 100000\n",
        "kubepods/pod1/memory.max": "max\n",
        "kubepods/pod1/memory.current": str(3 * GiB),
        "kubepods/pod1/cpu.max": "150000 100000\n"})
    listing = "0::/kubepods/pod1\n"
    assert machine.memory_limit(root, listing) == 8 * GiB
    assert machine.memory_in_use(root, listing) == 3 * GiB
    assert machine.cpu_quota(root, listing) == 1.5
    assert machine.usable_cpus(root, listing) == 1  # 1.5 CPUs: one worker, not two
    assert machine.free_memory(root, listing) <= 5 * GiB
    assert machine.total_memory(root, listing) <= 8 * GiB


def test_cgroup_v1_limits_inside_a_container_and_none(tmp_path):
    """cgroup v1 (controllers apart): a container sees the host's path of its cgroup, which
    its own mount does not hold; its limits are at the mount's root. No limit is a huge
    number or -1."""
    root = _files(tmp_path, {"memory/memory.limit_in_bytes": str(4 * GiB),
                             "memory/memory.usage_in_bytes": str(GiB),
                             "cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"})
    listing = "12:memory:/docker/abc123\n5:cpu,cpuacct:/docker/abc123\n"
    assert machine.memory_limit(root, listing) == 4 * GiB
    assert machine.cpu_quota(root, listing) == 2.0
    assert machine.free_memory(root, listing) <= 3 * GiB
    _files(tmp_path, {"memory/memory.limit_in_bytes": "9223372036854771712",
                      "cpu/cpu.cfs_quota_us": "-1"})
    assert machine.memory_limit(root, listing) is None and machine.cpu_quota(root, listing) is None
    assert machine.usable_cpus(root, listing) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("text", ["", "garbage", "max max", "0"])
def test_a_cgroup_file_that_says_nothing_usable_is_no_limit(tmp_path, text):
    root = _files(tmp_path, {"cgroup.controllers": "", "memory.max": text, "cpu.max": text})
    assert machine.memory_limit(root, "0::/\n") is None
    assert machine.cpu_quota(root, "0::/\n") is None
    assert machine.memory_limit(tmp_path / "no-cgroups", "0::/\n") is None


AFFINITY = """
import os
from asl_sweep.runtime.workers import auto_workers
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
workers = auto_workers()
print(workers.count, workers.threads)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux CPU affinity")
def test_auto_workers_count_the_cpus_this_process_may_run_on(tmp_path):
    """A Slurm task or `taskset -c 0` binds a process to some CPUs: --workers auto counted
    the machine's (os.cpu_count()), one worker a core it could not use."""
    done = subprocess.run([sys.executable, "-c", AFFINITY], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["1", "1"], done.stderr
