"""How many trainings this machine runs side by side, and with how many threads each.

On a CPU, intra-op threading scales sublinearly: on 2 cores a 64 px MLP step takes 16-18 ms
with 2 threads, while two single-thread trainings side by side take 19 ms each. Independent
trainings (the trials of a search, the repeats of a racing round) therefore run as one
process a core, each with one thread, as long as memory allows (benchmarks/concurrency.py has
the table per model size). On GPUs: one worker per device, or K (--per-device K: small trials
that leave a big GPU idle), each with its share of the device's memory."""

from __future__ import annotations

import os
from dataclasses import dataclass

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


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _gpus() -> int:
    import torch  # only when asked: the runtime layer loads nothing heavy at import

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def auto_workers(large: bool = False, cores: int | None = None, gpus: int | None = None,
                 memory: int | None = None, per_device: int = 1) -> Workers:
    """`--workers auto`: `per_device` per GPU (default one); else one per core, one thread
    each, fewer if the machine's free memory cannot hold them (`large`: a stage trains at
    224 px or a backbone)."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    gpus = gpus if gpus is not None else _gpus()
    if gpus:
        count = gpus * per_device
        each = "one" if per_device == 1 else str(per_device)
        return Workers(count, max(1, cores // count), f"{each} per GPU ({gpus})", gpus,
                       per_device)
    memory = memory if memory is not None else _available_memory()
    per = PER_WORKER_BYTES["large" if large else "small"]
    fit = max(1, memory // per) if memory else cores
    count = max(1, min(cores, fit))
    why = (f"one per CPU core ({cores}), one thread each" if count == cores else
           f"{count} of {cores} cores: free memory ({memory / 2**30:.0f} GiB) holds {count}")
    return Workers(count, max(1, cores // count), why)


def fixed_workers(count: int, cores: int | None = None, gpus: int = 0,
                  per_device: int = 1) -> Workers:
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return Workers(count, max(1, cores // count), f"--workers {count}", gpus, per_device)
