"""What this process may use of the machine: the CPUs it may run on (its affinity, and a
container's or a job's CPU quota) and the memory it may take (a container's or a job's limit
below the machine's). os.cpu_count() and /proc/meminfo say the whole machine's, which in a
Slurm job, a Kubernetes pod or a `docker --cpus/--memory` container overstate both: a job
given 2 CPUs of a 64-core node was sized as 64 workers, one that decodes more than its
memory limit is killed by the system without a word.

Limits are read from the cgroup files that bound this process (v2, or v1's cpu and memory
controllers), its own cgroup and every one above it (a limit set on the job bounds its steps).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number (9223372036854771712)


def _v2(root: Path) -> bool:
    """Whether the cgroups under `root` are v2 (one tree) rather than v1 (one per controller)."""
    return (root / "cgroup.controllers").exists()


def _own_cgroups(root: Path, controller: str, listing: str | None) -> list[Path]:
    """The cgroup folders that bound this process for `controller` (cgroup v2: every
    controller in one tree), its own first, then each one above it. `listing`: the text of
    /proc/self/cgroup."""
    if listing is None:
        try:
            listing = Path("/proc/self/cgroup").read_text()
        except OSError:
            return []
    v2 = _v2(root)
    base = root if v2 else root / controller
    own = None
    for line in listing.splitlines():
        _, names, path = (line.split(":", 2) + ["", ""])[:3]
        if (v2 and names == "") or (not v2 and controller in names.split(",")):
            own = path
            break
    if own is None or not base.is_dir():
        return []
    # Up to the mount's root, each folder that is there: in a container the process's own
    # path is the host's, not found below the container's mount, whose root is then the
    # container's own cgroup.
    folders, folder = [], base / own.lstrip("/")
    while True:
        if folder.is_dir():
            folders.append(folder)
        if folder == base or base not in folder.parents:
            break
        folder = folder.parent
    return folders


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    if not text or not text[0].lstrip("-").isdigit():
        return None  # "max": no limit
    value = int(text[0])
    return value if 0 < value < UNLIMITED else None


def memory_limit(root: Path = CGROUP_ROOT, listing: str | None = None) -> int | None:
    """The memory this process's cgroups allow (the smallest limit), None where none is set."""
    file = "memory.max" if _v2(root) else "memory.limit_in_bytes"
    limits = [n for f in _own_cgroups(root, "memory", listing)
              if (n := _number(f / file)) is not None]
    return min(limits) if limits else None


def memory_in_use(root: Path = CGROUP_ROOT, listing: str | None = None) -> int | None:
    """What this process's own cgroup has taken of its limit."""
    file = "memory.current" if _v2(root) else "memory.usage_in_bytes"
    folders = _own_cgroups(root, "memory", listing)
    return _number(folders[0] / file) if folders else None


def cpu_quota(root: Path = CGROUP_ROOT, listing: str | None = None) -> float | None:
    """The CPUs this process's cgroups allow (a quota of 150 ms a 100 ms period: 1.5), the
    smallest; None where none is set."""
    v2 = _v2(root)
    quotas = []
    for folder in _own_cgroups(root, "cpu", listing):
        if v2:
            try:
                quota, period = (folder / "cpu.max").read_text().split()[:2]
            except (OSError, ValueError):
                continue
            if quota.isdigit() and period.isdigit() and int(period) > 0:
                quotas.append(int(quota) / int(period))
        else:
            quota, period = (_number(folder / "cpu.cfs_quota_us"),
                             _number(folder / "cpu.cfs_period_us"))
            if quota and period:
                quotas.append(quota / period)
    return min(quotas) if quotas else None


def _affinity() -> int | None:
    """How many CPUs this process may run on, where the system says (not macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def usable_cpus(root: Path = CGROUP_ROOT, listing: str | None = None) -> int:
    """The CPUs this process may run on (Slurm and `taskset` bind a job to some), no more
    than its CPU quota allows (a quota of 1.5 CPUs: 1), at least 1."""
    cpus = _affinity() or os.cpu_count() or 1
    quota = cpu_quota(root, listing)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def fit_threads(root: Path = CGROUP_ROOT, listing: str | None = None) -> int | None:
    """Size torch's thread pool by the CPU quota where it is below the CPUs this process may
    run on: torch counts those (its affinity), not a quota, so in a `docker --cpus 2`
    container on a 64-core node it would run 64 threads on 2 CPUs' time, each throttled. Set
    before torch is imported (its OpenMP reads OMP_NUM_THREADS as it loads), or on torch
    itself where it is; a user's OMP_NUM_THREADS or MKL_NUM_THREADS is left as it is. The
    count set, or None where nothing was."""
    if "OMP_NUM_THREADS" in os.environ or "MKL_NUM_THREADS" in os.environ:
        return None
    allowed = _affinity()
    if allowed is None:
        return None
    cpus = usable_cpus(root, listing)
    if cpus >= allowed:
        return None
    os.environ["OMP_NUM_THREADS"] = str(cpus)  # this process and the workers it starts
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(cpus)
    return cpus


def total_memory(root: Path = CGROUP_ROOT, listing: str | None = None) -> int | None:
    """This machine's memory, or less where a limit on this process says so."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = None
    known = [m for m in (physical, memory_limit(root, listing)) if m]
    return min(known) if known else None


def free_memory(root: Path = CGROUP_ROOT, listing: str | None = None) -> int | None:
    """The memory this process may still take: the machine's available memory, or what is
    left of a limit on it where that is less."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    limit = memory_limit(root, listing)
    left = max(0, limit - (memory_in_use(root, listing) or 0)) if limit else None
    known = [m for m in (available, left) if m is not None]
    return min(known) if known else None


# --- the file systems under this process's files ------------------------------------------

MOUNTINFO = Path("/proc/self/mountinfo")
# File systems whose locks SQLite cannot count on with several processes writing one
# database (its documentation's "SQLite over a network": NFS, SMB/CIFS and their kin; Lustre
# refuses fcntl locks unless mounted with flock): a cluster's home folder is often one.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs",
    "lustre", "fuse.sshfs", "fuse.glusterfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone",
    "fuse.ceph-fuse", "fuse.juicefs"})


def _unescaped(field: str) -> str:
    """A mount point as the kernel writes it in mountinfo: space, tab, newline and backslash
    as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem_of(path: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """The type of the file system holding `path` (its nearest folder that exists), from the
    kernel's table of this process's mounts: the deepest mount point above it, the last
    mounted where two share one; None where the table cannot be read (not Linux)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    target = Path(path).absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    target = target.resolve()
    found, depth = None, -1
    for line in lines:
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        point = Path(_unescaped(fields[4]))
        if (point == target or point in target.parents) and len(point.parts) >= depth:
            found, depth = fields[fields.index("-", 6) + 1], len(point.parts)
    return found


def network_filesystem(path: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """The network file system holding `path` (its type: nfs4, cifs, ...), or None."""
    kind = filesystem_of(path, mountinfo)
    return kind if kind in NETWORK_FILESYSTEMS else None
