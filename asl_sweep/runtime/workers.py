"""How many trainings this machine runs side by side, and with how many threads each.

On a CPU, intra-op threading scales sublinearly: on 2 cores a 64 px MLP step takes 16-18 ms
with 2 threads, while two single-thread trainings side by side take 19 ms each. Independent
trainings (the trials of a search, the repeats of a racing round) therefore run as one
process a core, each with one thread, as long as memory allows (benchmarks/concurrency.py has
the table per model size). On GPUs: one worker per device, or K (--per-device K: small trials
that leave a big GPU idle), each with its share of the device's memory."""

from __future__ import annotations

from dataclasses import dataclass

from asl_sweep.runtime.errors import ConfigError
from asl_sweep.runtime.machine import free_memory, usable_cpus

# What one worker process holds at most: the decoded images of the sizes it trains at, the
# model, its optimizer and a batch's activations (a 224 px transfer stage is the largest).
PER_WORKER_BYTES = {"small": 1 << 30, "large": 3 << 30}


@dataclass(frozen=True)
class Workers:
    count: int
    threads: int  # CPU threads each
    why: str
    gpus: int = 0
    per_device: int = 1  # workers that share one GPU (--per-device)

    @property
    def threads_each(self) -> str:
        """`1 thread each`, `2 threads each`: as run and its dry run say it."""
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} each"

    def device_of(self, index: int) -> int | None:
        """The GPU that worker `index` trains on (None on a CPU): each GPU takes
        `per_device` consecutive workers, and the count wraps around the GPUs."""
        return (index // self.per_device) % self.gpus if self.gpus else None

    @property
    def memory_share(self) -> float:
        """Each worker's share of its GPU's memory."""
        return 1.0 / self.per_device if self.gpus else 1.0


def share_device(share: float) -> None:
    """Cap this process's CUDA allocations to `share` of its GPU's memory, so that workers
    that share a GPU cannot starve each other (one whose trial needs more fails with an
    out-of-memory error, that trial's own failure)."""
    if share >= 1.0:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(share)


def gpu_count() -> int:
    """The GPUs this process sees."""
    import torch  # only when asked: the runtime layer loads nothing heavy at import

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def auto_workers(large: bool = False, cores: int | None = None, gpus: int | None = None,
                 memory: int | None = None, per_device: int = 1) -> Workers:
    """`--workers auto`: `per_device` per GPU (default one); else one per core, one thread
    each, fewer if the machine's free memory cannot hold them (`large`: a stage trains at
    224 px or a backbone)."""
    cores = cores if cores is not None else usable_cpus()
    gpus = gpus if gpus is not None else gpu_count()
    if gpus:
        count = gpus * per_device
        each = "one" if per_device == 1 else str(per_device)
        return Workers(count, max(1, cores // count), f"{each} per GPU ({gpus})", gpus,
                       per_device)
    memory = memory if memory is not None else free_memory()
    per = PER_WORKER_BYTES["large" if large else "small"]
    fit = max(1, memory // per) if memory else cores
    count = max(1, min(cores, fit))
    why = (f"one per CPU core ({cores})" if count == cores else
           f"{count} of {cores} cores: free memory ({memory / 2**30:.0f} GiB) holds {count}")
    return Workers(count, max(1, cores // count), why)


# On a CPU, at most this many workers a core: two at once per core still beat one at a time
# for every model size measured (benchmarks/concurrency.py), more only share the same cores.
PER_CORE = 2


def worker_limit(cores: int, gpus: int, per_device: int, memory: int | None,
                 large: bool) -> tuple[int, str]:
    """The most workers this machine holds, and what sets it: on GPUs `per_device` each;
    on a CPU PER_CORE a core; and never more than free memory holds (`large`: a stage
    trains at 224 px or a backbone)."""
    if gpus:
        limit = gpus * per_device
        why = f"{gpus} GPU{'s' if gpus != 1 else ''} x --per-device {per_device}"
    else:
        limit, why = cores * PER_CORE, f"{cores} CPU cores x {PER_CORE}"
    if memory:
        per = PER_WORKER_BYTES["large" if large else "small"]
        fit = max(1, memory // per)
        if fit < limit:
            limit, why = fit, (f"{memory / 2**30:.0f} GiB of free memory at "
                               f"{per / 2**30:.0f} GiB a worker")
    return limit, why


def fixed_workers(count: int, cores: int | None = None, gpus: int = 0,
                  per_device: int = 1, memory: int | None = None,
                  large: bool = False) -> Workers:
    """`--workers N`: N, unless the machine cannot hold them (one line naming the limit)."""
    cores = cores if cores is not None else usable_cpus()
    memory = memory if memory is not None else free_memory()
    limit, why = worker_limit(cores, gpus, per_device, memory, large)
    if count > limit:
        raise ConfigError(f"--workers {count}: this machine holds at most {limit} workers "
                          f"({why}); give --workers {limit} or fewer, or --workers auto")
    return Workers(count, max(1, cores // count), f"--workers {count}", gpus, per_device)
