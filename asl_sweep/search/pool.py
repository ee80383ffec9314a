"""`asl-sweep run` on one machine: this process is worker 0 and, with --workers N, starts
workers 1..N-1 as processes of `asl-sweep worker` that join the same study through its
stores. How many and with how many threads each is runtime/workers.py's call."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from functools import partial

from asl_sweep.runtime import environment, signals
from asl_sweep.runtime.workers import Workers, auto_workers, fixed_workers, gpu_count, share_device
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.settings.spec import StudyConfig

# The study's run (search.study, search.session) loads MLflow: imported where a study runs,
# so that `run --dry-run` resolves its workers without it (with it: 4.0 s a dry run, not 2.2).


def _large(cfg: StudyConfig) -> bool:
    """Whether a stage trains at 224 px-like sizes or a pretrained backbone (memory per
    worker, for --workers auto)."""
    models = {cfg.base.model, *(str(s.fixed.get("model", "")) for s in cfg.stages)}
    sizes = [cfg.data.image_size, *(s.image_size or 0 for s in cfg.stages)]
    return "transfer" in models or max(sizes) >= 128


def resolve_workers(cfg: StudyConfig, workers: str | int, per_device: int,
                    say=print, networked: str | None = None) -> Workers:
    """How many workers run the study here. `networked`: where its SQLite stores lie on a
    network file system (Workspace.networked_stores), whose locks SQLite cannot count on
    with several processes writing one database: `auto` then runs one worker, and a count
    given is run as asked, with a warning; each says why in one line."""
    gpus = gpu_count()
    if per_device > 1 and not gpus:
        say(f"--per-device {per_device}: no GPU here, so it changes nothing")
    safe = ("for several, --home on a local disk, or --storage and --tracking on "
            "PostgreSQL (docs/how-to/several-machines.md)")
    if workers == "auto":
        chosen = auto_workers(large=_large(cfg), gpus=gpus, per_device=per_device)
        if networked and chosen.count > 1:
            say(f"--workers auto: one worker, not {chosen.count}: {networked}, where "
                f"SQLite's locks do not hold for several processes at once; {safe}")
            return fixed_workers(1, gpus=gpus, per_device=per_device, large=_large(cfg))
        return chosen
    if networked and int(workers) > 1:
        say(f"warning: --workers {workers}: {networked}, where SQLite's locks may not hold "
            f"for several processes at once (a broken study database); {safe}")
    return fixed_workers(int(workers), gpus=gpus, per_device=per_device, large=_large(cfg))


def run_pool(cfg: StudyConfig, ws: Workspace, workers: Workers, worker_argv: list[str],
             bars: bool = False, say=print) -> int:
    """Run the study with `workers` on this machine; this process scores the final
    configuration once every stage is decided. The exit code of the first worker that
    failed, else 0. `worker_argv`: the command line that names the study, data and stores
    for `asl-sweep worker`."""
    procs: list[subprocess.Popen] = []
    searched = None
    if workers.count > 1:
        say(f"{workers.count} workers side by side, {workers.threads_each} ({workers.why}); "
            "--workers 1 for one at a time")
        import torch

        threads = torch.get_num_threads()  # this process's own, given back for the final
        searched = partial(_take_threads, procs, threads, say)
        torch.set_num_threads(workers.threads)
        share_device(workers.memory_share)  # this process is worker 0, on the first GPU
    try:
        if workers.count > 1:
            procs += _start(cfg, ws, workers, worker_argv)  # the list `searched` waits on
        # One terminal and several processes: bars would garble, so lines instead.
        from asl_sweep.search.study import run_study

        run_study(cfg, ws, bars=bars and workers.count == 1, searched=searched)
    except BaseException:
        _wait(procs, stop=True)
        raise
    code = _wait(procs)  # done already: a stage is decided once all its trials are
    killed = [(i, -p.returncode) for i, p in enumerate(procs, 1) if p.returncode < 0]
    for index, signum in killed:  # the study finished without them: their trials ran again
        say(f"worker {index} was stopped by signal {signum} ({_signal_name(signum)}); a "
            "trial it held was queued again (a line above says so), and the study finished")
    return 0 if code < 0 else code


def _take_threads(procs: list[subprocess.Popen], threads: int, say=print) -> None:
    """Every stage decided: the workers leave (each once it has read the last decision), and
    the final test and the refits (final_model: refit), this process's alone, train and score
    on the `threads` it had before it shared the cores with them: on the one thread a worker
    has, with the other cores idle, the refits of `--workers 2` on 2 cores took 1.7x as long
    (benchmarks/final_threads.py). A stop asked for while waiting has stopped the workers
    (_wait) and raises here."""
    import torch

    _wait(procs)  # their exit codes are read again once the study is scored (run_pool)
    signals.check()
    if threads > torch.get_num_threads():
        torch.set_num_threads(threads)
        say(f"every stage decided, the workers done: the final test on {threads} threads")


def _signal_name(signum: int) -> str:
    """A signal as a person reads it: SIGKILL, which nobody catches, is what the kernel's
    out-of-memory killer sends (or kill -9)."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        return "an unknown signal"
    if signum == signal.SIGKILL:
        return f"{name}: the kernel's out-of-memory killer sends it, as does kill -9"
    return name


def _start(cfg: StudyConfig, ws: Workspace, workers: Workers,
           worker_argv: list[str]) -> list[subprocess.Popen]:
    """Workers 1..N-1 as processes on this machine; the study and its MLflow experiment are
    created here first, because creating them is a race. A stop asked for while they start
    (Ctrl-C, SIGTERM) stops the ones started."""
    import os

    from asl_sweep.search.session import open_session

    open_session(cfg, ws, log=lambda _: None)  # creates the stores, the record, the study run
    procs = []
    try:
        for index in range(1, workers.count):
            signals.check()
            # The stores as this process resolved them, through the environment: a URL's
            # password is not shown by `ps` as command-line arguments are.
            env = {**os.environ, environment.STORAGE.name: ws.storage,
                   environment.TRACKING.name: ws.tracking_uri}
            if workers.gpus > 1:  # each GPU takes per_device consecutive workers
                env["CUDA_VISIBLE_DEVICES"] = str(workers.device_of(index))
            with signals.ctrl_c_held_for_child():
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "asl_sweep.cli", "worker", *worker_argv,
                     "--worker-index", str(index), "--threads", str(workers.threads),
                     "--gpu-share", str(workers.memory_share), "--parent-pid", str(os.getpid())],
                    env=env))
    except BaseException:
        _wait(procs, stop=True)
        raise
    return procs


def _wait(procs: list[subprocess.Popen], stop: bool = False, again: bool = False) -> int:
    """Wait for the workers; `stop`: ask them to stop first (each closes its trial and queues
    it again). While waiting for them to finish, a stop asked of this process (Ctrl-C,
    SIGTERM) is passed on to them; while waiting for them to stop, only a second one is,
    as their second (`again`: stop at once)."""
    if stop:
        for p in procs:
            if p.poll() is None:
                signals.pass_on(p, again)
    try:
        while any(p.poll() is None for p in procs):
            if not stop:
                signals.check()
            time.sleep(0.2)
    except KeyboardInterrupt:
        return _wait(procs, stop=True, again=stop) or 130
    return max((p.returncode for p in procs), key=abs, default=0)


def join_study(cfg: StudyConfig, ws: Workspace, index: int, threads: int | None,
               gpu_share: float, parent_pid: int | None) -> int:
    """`asl-sweep worker`: join a study's search as worker `index`; the final test score is
    the initiating `run`'s, once every worker is done."""
    import torch

    from asl_sweep.search.study import run_study

    if threads:
        torch.set_num_threads(threads)
    share_device(gpu_share)
    if parent_pid:
        signals.stop_when_orphaned(parent_pid)
    log = lambda m: print(f"[worker {index}] {m}", flush=True)  # noqa: E731
    # A worker `run` started prints its own trials only: the stages' lines (each decision,
    # the data) are run's, printed once.
    results = run_study(cfg, ws, log=log, worker=index, score=False,
                        say=(lambda _: None) if parent_pid else log)
    if not parent_pid and len(results) == len(cfg.stages):
        from asl_sweep.search.record import final_result
        from asl_sweep.search.store import optuna_storage

        if final_result(optuna_storage(ws.storage), cfg.study) is None:
            log("every stage is decided; the final test score is `asl-sweep run`'s (a worker "
                "never reads the test split): run the same study with `asl-sweep run` and "
                "the same --home/--storage/--tracking, and it scores the final configuration "
                "without training the search again")
    return 0
