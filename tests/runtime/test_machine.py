"""What a process may use: its CPUs (affinity, a quota) and its memory (a limit), read from
real cgroup files as a container, a Kubernetes pod or a Slurm job has them, and a real CPU
affinity set on a real process."""

import os
import subprocess
import sys
from pathlib import Path

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


def _unset_threads() -> dict[str, str]:
    """This environment, less the thread counts the suite sets for its own processes."""
    return {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


QUOTA = """
import sys
from pathlib import Path
from asl_sweep.runtime import machine
print(machine.fit_threads(Path(sys.argv[1]), "0::/job\\n"))
import torch
print(torch.get_num_threads())
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to run on")
def test_torch_threads_follow_a_cpu_quota_below_the_cpus_it_may_run_on(tmp_path):
    """torch sizes its pool by the CPUs it may run on, not by a quota: a container given
    `--cpus 1` of a 2-core machine ran 2 threads on one CPU's time. A user's
    OMP_NUM_THREADS (or MKL_NUM_THREADS) is theirs."""
    root = _files(tmp_path, {"cgroup.controllers": "cpu", "job/cpu.max": "100000 100000\n"})
    env = _unset_threads()
    done = subprocess.run([sys.executable, "-c", QUOTA, str(root)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.stdout.split() == ["1", "1"], done.stderr
    done = subprocess.run([sys.executable, "-c", QUOTA, str(root)], capture_output=True,
                          text=True, timeout=120, env={**env, "OMP_NUM_THREADS": "2"})
    assert done.stdout.split() == ["None", "2"], done.stderr


def _real_cpu_cgroup(name: str):
    """A real cgroup with a CPU quota of one CPU (root, cgroup v1's cpu controller or v2 with
    cpu delegated), or None where this machine gives none."""
    v1 = machine.CGROUP_ROOT / "cpu"
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            folder = v1 / name
            folder.mkdir()
            (folder / "cpu.cfs_period_us").write_text("100000")
            (folder / "cpu.cfs_quota_us").write_text("100000")
            return folder
        if "cpu" in (machine.CGROUP_ROOT / "cgroup.subtree_control").read_text().split():
            folder = machine.CGROUP_ROOT / name
            folder.mkdir()
            (folder / "cpu.max").write_text("100000 100000")
            return folder
    except OSError:
        return None
    return None


REAL = """
import sys
from asl_sweep.cli import main
code = main(["status", sys.argv[1]])  # a study file that is not there: one line, exit 2
import torch
print(code, torch.get_num_threads())
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to run on")
def test_a_command_in_a_real_cgroup_with_a_one_cpu_quota_runs_torch_on_one_thread(tmp_path):
    folder = _real_cpu_cgroup(f"asl-sweep-test-{os.getpid()}")
    if folder is None:
        pytest.skip("no cgroup with a CPU quota can be made here (needs root)")
    env = _unset_threads()

    def join() -> None:  # the child, before it runs Python
        (folder / "cgroup.procs").write_text(str(os.getpid()))

    try:
        done = subprocess.run([sys.executable, "-c", REAL, str(tmp_path / "none.yaml")],
                              capture_output=True, text=True, timeout=120, env=env,
                              preexec_fn=join)
    finally:
        folder.rmdir()
    assert done.stdout.split() == ["2", "1"], done.stderr


def _mountinfo(tmp_path, *mounts: tuple[str, str]):
    """A mount table as the kernel writes /proc/self/mountinfo: (mount point, type) lines
    in mount order, an optional field on some (shared:N) and octal escapes in points."""
    lines = [f"{20 + i} 1 0:{40 + i} / {point.replace(' ', chr(92) + '040')} rw,relatime"
             f"{' shared:' + str(i) if i % 2 else ''} - {kind} src{i} rw"
             for i, (point, kind) in enumerate(mounts)]
    (tmp_path / "mountinfo").write_text("\n".join(lines) + "\n")
    return tmp_path / "mountinfo"


def test_the_file_system_of_a_path_is_its_deepest_mount_the_last_mounted_there(tmp_path):
    """A cluster's home on NFS, a local scratch disk mounted inside it, a name with a space,
    a path not made yet (the home of a first run), and a folder mounted over twice."""
    home = tmp_path / "home dir"
    (home / "scratch").mkdir(parents=True)
    table = _mountinfo(tmp_path, ("/", "ext4"), (str(home), "nfs4"),
                       (str(home / "scratch"), "xfs"), (str(tmp_path / "over"), "nfs"),
                       (str(tmp_path / "over"), "tmpfs"))
    assert machine.filesystem_of(home / "mlruns" / "optuna.db", table) == "nfs4"
    assert machine.network_filesystem(home / "mlruns", table) == "nfs4"
    assert machine.filesystem_of(home / "scratch" / "mlruns", table) == "xfs"
    assert machine.network_filesystem(home / "scratch" / "mlruns", table) is None
    assert machine.filesystem_of(tmp_path / "elsewhere", table) == "ext4"
    (tmp_path / "over").mkdir()
    assert machine.filesystem_of(tmp_path / "over" / "x", table) == "tmpfs"
    assert machine.filesystem_of(home, tmp_path / "no-such-table") is None  # not Linux


def test_this_machines_own_mount_table_is_read():
    assert machine.filesystem_of(Path(__file__)) is not None
