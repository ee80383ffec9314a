"""A simulated fleet on loopback (issue 24): PostgreSQL, `mlflow server --serve-artifacts`
in front of it, and (in the proxy arm) Optuna's gRPC storage proxy (`asl-sweep store-proxy`);
N worker processes, each in its own empty temporary home with a host name of its own (as N
pods would be), share one study through them. Worker 0 is `asl-sweep run --workers 1`, the
others `asl-sweep worker --worker-index K`, as in deploy/kubernetes/workers.yaml. The trainer
is a fake of a few milliseconds (benchmarks/studies/fleet.yaml says why); every Optuna and
MLflow call, every checkpoint upload and every decision is real. A tenth of the workers are
killed with SIGKILL at random moments and started again in a fresh home, as a Job restarts
a pod.

Measured per arm (direct PostgreSQL, then through the proxy): trials per second through the
storage, the peak number of connections to the Optuna database and to MLflow's, exact
budgets per stage, trials lost or run twice, MLflow runs left RUNNING, and whether the
adopted settings and the final test score equal those of a one-worker run of the same
seeded study.

    .venv/bin/python -m benchmarks.fleet [--workers 64] [--kill 0.1] [--arms direct,proxy]

The workers are forked from this process once it has imported everything (torch alone is
~290 MB of private memory a process: 64 fresh interpreters would not fit in 24 GiB, forked
ones share it); this process holds no connection while it forks."""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections import Counter
from contextlib import ExitStack, nullcontext
from pathlib import Path

STUDY = Path(__file__).parent / "studies" / "fleet.yaml"
QUALITY = {"hidden": {8: 0.0, 16: 0.04, 32: 0.08}, "dropout": {0.0: 0.0, 0.2: 0.02},
           "lr": {0.001: 0.0, 0.003: 0.06, 0.01: 0.03}, "weight_decay": {0.0: 0.0, 0.0001: 0.01}}


def quality(cfg) -> float:
    """The fake's validation accuracy: the settings' own, and under half a point of seed."""
    q = 0.5 + QUALITY["hidden"].get(cfg.hidden[0] if cfg.hidden else 0, 0.0)
    q += QUALITY["dropout"].get(round(cfg.dropout[0], 6) if cfg.dropout else 0.0, 0.0)
    q += QUALITY["lr"].get(round(cfg.lr, 6), 0.0)
    q += QUALITY["weight_decay"].get(round(cfg.weight_decay, 6), 0.0)
    digest = int(hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:8], 16)
    return q + 0.004 * (digest % 1000) / 1000


def fork(job, log: Path, host: str | None = None) -> int:
    """`job()` in a forked child whose output goes to `log`; its return value is the exit
    code. A child never returns into this process's code."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if host is not None:  # a pod of its own: no worker is known dead by its PID
            socket.gethostname = lambda: host
        code = job()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def worker_argv(index: int, home: Path, storage: str | None, tracking: str | None) -> list[str]:
    stores = ([] if storage is None else ["--storage", storage]) + (
        [] if tracking is None else ["--tracking", tracking])
    if index == 0:
        return ["run", str(STUDY), "--workers", "1", "--home", str(home), *stores]
    return ["worker", str(STUDY), "--worker-index", str(index), "--home", str(home), *stores]


def count_requests() -> Counter:
    """Every HTTP request this process makes to the tracking server, counted by method and
    endpoint (an artifact's path cut to its kind)."""
    import mlflow.store.artifact.http_artifact_repo as artifact_repo
    import mlflow.utils.rest_utils as rest

    counts: Counter = Counter()
    sent = rest.http_request

    def counted(host_creds, endpoint, method, *args, **kwargs):
        if "/mlflow-artifacts/artifacts/" in endpoint:
            parts = endpoint.split("/artifacts/", 2)
            endpoint = "/mlflow-artifacts/artifacts/.../" + (
                parts[-1].split("/")[0] if len(parts) > 2 else "")
        counts[f"{method} {endpoint}"] += 1
        counts[f"request {method} {endpoint} <- {_caller(skip='asl_sweep.tracking.')}"] += 1
        return sent(host_creds, endpoint, method, *args, **kwargs)

    rest.http_request = artifact_repo.http_request = counted
    # And every call asl-sweep (and the Optuna study it holds) makes to the Optuna storage
    # API, through the proxy or to the database: the outermost call only. Storages call
    # each other inside one call (Optuna wraps a database in a cache whose reads sync with
    # the database; RDBStorage's setters run check_trial_is_updatable, an in-memory check;
    # the proxy's reads sync its own cache), and those are part of that one call.
    import threading

    import optuna

    from asl_sweep.search.store import RetryingRDBStorage, public_calls

    cache = type(optuna.storages.get_storage("sqlite:///:memory:"))  # what wraps a database
    depth = threading.local()
    for cls in {optuna.storages.GrpcStorageProxy, cache, RetryingRDBStorage}:
        for name in public_calls(cls):
            method = getattr(cls, name)

            def make(method=method, name=name):
                def call(self, *args, **kwargs):
                    inside = getattr(depth, "n", 0)
                    if not inside:
                        counts[f"optuna {name}"] += 1
                        counts[f"caller {name} <- {_caller()}"] += 1
                    depth.n = inside + 1
                    try:
                        return method(self, *args, **kwargs)
                    finally:
                        depth.n = inside
                return call

            setattr(cls, name, make())
    return counts


def _caller(skip: str = "asl_sweep.runtime.") -> str:
    """The two asl-sweep functions (module.function) nearest to this storage call (or
    tracking request), the nearest first, passing over the modules under `skip`: "state.read
    <- study._race" says which flow a shared helper served."""
    frame, found = sys._getframe(2), []
    while frame is not None and len(found) < 2:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("asl_sweep.") and not module.startswith(
                ("asl_sweep.runtime.", skip)):
            # (runtime/: the retry wrapper around every storage call, not who asked)
            found.append(f"{module.rsplit('.', 1)[-1]}.{frame.f_code.co_name}")
        frame = frame.f_back
    return " <- ".join(found) or "optuna"


def cli_job(argv: list[str], requests: Path | None = None):
    def job() -> int:
        import asl_sweep.search.trial
        from asl_sweep.cli import main
        from tests.fakes import fake_trainer

        asl_sweep.search.trial.train = fake_trainer(quality)
        counts = count_requests() if requests is not None else None
        code = main(argv)
        if counts is not None:
            requests.write_text(json.dumps(counts))
        return code

    return job


def reap(pids) -> list[tuple[int, int]]:
    """(pid, exit code or -signal) of each of `pids` that has ended."""
    ended = []
    for pid in list(pids):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            ended.append((pid, os.waitstatus_to_exitcode(status)))
    return ended


def wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def in_child(job, log: Path) -> dict:
    """`job()`'s JSON-able result, computed in a child (this process keeps no connection)."""
    out = log.with_suffix(".json")

    def write() -> int:
        out.write_text(json.dumps(job()))
        return 0

    code = wait(fork(write, log))
    if code != 0:
        raise RuntimeError(f"{log}: {log.read_text()[-3000:]}")
    return json.loads(out.read_text())


def _stat(pid: str) -> tuple[str, list[str]] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:]
    return name, rest.split()


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of the servers by session (a server's process and its workers,
    live and reaped) and of PostgreSQL (every backend, live or reaped by the postmaster),
    and of this process's reaped children (the workers)."""
    import resource

    tick = os.sysconf("SC_CLK_TCK")
    by: dict[str, float] = {"postgres": 0.0}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        found = _stat(pid)
        if found is None:
            continue
        name, f = found
        seconds = sum(int(v) for v in f[11:15]) / tick  # utime stime cutime cstime
        by[f"session:{f[3]}"] = by.get(f"session:{f[3]}", 0.0) + seconds
        if name == "postgres":
            by["postgres"] += seconds
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    by["workers"] = children.ru_utime + children.ru_stime
    return by


def outcome(storage: str, tracking: str) -> dict:
    """What the study decided and what its stores hold: budgets, lost and doubled trials,
    MLflow runs left RUNNING, the adopted settings and the final test score."""
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from asl_sweep.search.record import load_record
    from asl_sweep.search.state import read as attrs
    from asl_sweep.search.store import optuna_storage, stage_trials
    from asl_sweep.settings.studyfile import load_study

    cfg = load_study(STUDY, [], None, None, None)
    result: dict = {"stages": {}}
    stamps = []
    for stage in cfg.stages:
        study = optuna.load_study(study_name=f"{cfg.study}.{stage.name}", storage=storage)
        trials = stage_trials(study)
        stamps += [(t.datetime_start.timestamp(), t.datetime_complete.timestamp())
                   for t in trials if t.state == TrialState.COMPLETE]
        search = [t for t in trials if t.user_attrs.get("role") == "search"]
        done = [t for t in search if t.state == TrialState.COMPLETE]
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        finished_origin: dict[int, int] = {}
        for t in trials:
            if t.state == TrialState.COMPLETE:
                origin = t.system_attrs.get("failed_trial", t.number)
                finished_origin[origin] = finished_origin.get(origin, 0) + 1
        lost = [t.number for t in trials if t.state == TrialState.FAIL
                and "failure" not in t.user_attrs and t.number not in retried]
        unfinished = [t.number for t in trials if not t.state.is_finished()
                      and t.state != TrialState.WAITING]
        a = attrs(study)
        result["stages"][stage.name] = {
            "budget": stage.trials, "search_complete": len(done),
            "trials": len(trials), "killed_and_retried": sum(
                t.state == TrialState.FAIL and "failure" not in t.user_attrs for t in trials),
            "lost": lost + unfinished,
            "surplus_asks": sum(t.user_attrs.get("failure") == "surplus" for t in trials),
            "run_twice": sorted(n for n, c in finished_origin.items() if c > 1),
            "adopted": a["result"]["params"], "status": a["result"]["status"]}
    record = load_record(optuna_storage(storage), cfg.study)
    result["final_test"] = attrs(record)["final"]["summary"]
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name(cfg.study)
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    result["mlflow_runs"] = len(runs)
    result["mlflow_running"] = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    result["first_start"] = min(s for s, _ in stamps)
    result["last_complete"] = max(c for _, c in stamps)
    result["finished_trials"] = len(stamps)  # trained to the end (not pruned, not failed)
    return result


def one_worker(root: Path) -> dict:
    """The same seeded study, one worker, local stores: the reference."""
    home = root / "one"
    home.mkdir(parents=True)
    began = time.time()
    code = wait(fork(cli_job(worker_argv(0, home, None, None)), root / "one.log"))
    if code != 0:
        raise RuntimeError((root / "one.log").read_text()[-3000:])
    wall = time.time() - began
    from asl_sweep.runtime.workspace import Workspace

    ws = Workspace.at(home)
    found = in_child(lambda: outcome(ws.storage, ws.tracking_uri), root / "one-outcome.log")
    return {**found, "wall_s": round(wall, 1)}


def mid_trial(pg, db: str, running: dict[int, tuple[int, int]], rng: random.Random) -> int:
    """A worker that is training a trial right now, if one is (else any)."""
    rows = pg.sql("select a.value_json from trial_user_attributes a join trials t on "
                  "t.trial_id = a.trial_id where t.state = 'RUNNING' and a.key = 'worker'", db)
    busy = sorted({int(json.loads(r[0]).rpartition(":")[2]) for r in rows} & set(running))
    return rng.choice(busy or sorted(running))


def arm(name: str, pg, root: Path, workers: int, kill: float, rng: random.Random) -> dict:
    """One fleet: `workers` processes through `name` (direct | proxy) until the study is done."""
    from tests.servers import mlflow_server, store_proxy

    where = root / name
    (where / "logs").mkdir(parents=True)
    optuna_db, mlflow_db = f"optuna_{name}", f"mlflow_{name}"
    database = pg.createdb(optuna_db)
    with ExitStack() as stack:
        tracking = stack.enter_context(mlflow_server(
            pg.createdb(mlflow_db), where / "artifacts", workers=4,
            log=where / "mlflow-server.log"))
        storage = stack.enter_context(
            store_proxy(database, where / "proxy.log") if name == "proxy"
            else nullcontext(database))
        running: dict[int, tuple[int, int]] = {}  # pid: (worker index, attempt)

        def start(index: int, attempt: int) -> None:
            home = Path(tempfile.mkdtemp(prefix=f"w{index}-", dir=where))
            job = cli_job(worker_argv(index, home, storage, tracking),
                          where / "logs" / f"requests-{index}-{attempt}.json")
            pid = fork(job, where / "logs" / f"worker-{index}-{attempt}.log",
                       host=f"fleet-{name}-{index}-{attempt}")
            running[pid] = (index, attempt)

        kills = sorted(rng.uniform(10, 120) for _ in range(round(workers * kill)))
        cpu_before = cpu_seconds()
        began = time.time()
        for index in range(workers):
            start(index, 0)
        peak = {"optuna": 0, "mlflow": 0}
        killed, codes, progress = [], {}, []
        while running:
            for pid, code in reap(running):
                index, attempt = running.pop(pid)
                if pid in killed:
                    start(index, attempt + 1)  # the scheduler restarts it, in a fresh home
                else:
                    codes[(index, attempt)] = code
            rows = pg.sql("select datname, count(*) from pg_stat_activity "
                          "where datname is not null group by datname")
            now = {db: int(n) for db, n in rows}
            peak["optuna"] = max(peak["optuna"], now.get(optuna_db, 0))
            peak["mlflow"] = max(peak["mlflow"], now.get(mlflow_db, 0))
            try:
                done = int(pg.sql("select count(*) from trials where state = 'COMPLETE'",
                                  optuna_db)[0][0])
            except Exception:  # its tables are not made yet
                done = 0
            progress.append((round(time.time() - began, 1), done))
            if kills and done >= kills[0] and running:
                kills.pop(0)
                victim = mid_trial(pg, optuna_db, running, rng)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            if time.time() - began > 1800:
                for pid in running:
                    os.kill(pid, signal.SIGKILL)
                raise RuntimeError(f"{name}: the fleet did not finish in 30 minutes")
            time.sleep(0.5)
        wall = time.time() - began
        cpu_after = cpu_seconds()
        servers = {"mlflow_server": f"session:{tracking.pid}", "postgres": "postgres",
                   "workers": "workers", **({"proxy": f"session:{storage.pid}"}
                                            if name == "proxy" else {})}
        cpu = {k: round(cpu_after.get(v, 0.0) - cpu_before.get(v, 0.0), 1)
               for k, v in servers.items()}
        failed = {f"{i}.{a}": c for (i, a), c in codes.items() if c != 0}
        if failed:  # their logs go with the temporary folder: what they said, here
            for key in failed:
                said = (where / "logs" / f"worker-{key.replace('.', '-')}.log").read_text()
                print(f"--- worker {key}:\n" + "\n".join(said.splitlines()[-15:]),
                      file=sys.stderr, flush=True)
            raise RuntimeError(f"{name}: workers exited with {failed}")
        found = in_child(lambda: outcome(database, tracking), where / "outcome.log")
    span = found["last_complete"] - found["first_start"]
    requests: Counter = Counter()
    for path in (where / "logs").glob("requests-*.json"):  # the workers that were not killed
        requests.update(json.loads(path.read_text()))
    per_trial = {k: round(v / found["finished_trials"], 2) for k, v in requests.most_common()
                 if not k.startswith("optuna ")}
    storage_calls = {k[7:]: round(v / found["finished_trials"], 2)
                     for k, v in requests.most_common() if k.startswith("optuna ")}
    callers = {k[7:]: round(v / found["finished_trials"], 2)
               for k, v in requests.most_common() if k.startswith("caller ")}
    by_request = {k[8:]: round(v / found["finished_trials"], 2)
                  for k, v in requests.most_common() if k.startswith("request ")}
    per_trial = {k: v for k, v in per_trial.items() if not k.startswith(("caller ", "request "))}
    busiest = max((b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(progress, progress[20:],
                                                               strict=False)) \
        if len(progress) > 20 else None
    return {**found, "workers": workers, "killed": len(killed), "wall_s": round(wall, 1),
            "cpu_s": cpu, "cpu_capacity_s": round(wall * (os.cpu_count() or 1), 1),
            "mlflow_requests_per_trial": round(sum(per_trial.values()), 1),
            "storage_calls_per_trial": round(sum(storage_calls.values()), 1),
            "storage_calls_per_trial_by_method": storage_calls,
            "storage_calls_per_trial_by_caller": callers,
            "mlflow_requests_per_trial_by_endpoint": per_trial,
            "mlflow_requests_per_trial_by_caller": by_request,
            "trials_per_s": round(found["finished_trials"] / span, 2),
            "busiest_10s_trials_per_s": round(busiest, 2) if busiest is not None else None,
            "peak_connections_optuna_db": peak["optuna"],
            "peak_connections_mlflow_db": peak["mlflow"]}


ARM_KEYS = ("workers", "killed", "wall_s", "finished_trials", "trials_per_s",
            "busiest_10s_trials_per_s", "peak_connections_optuna_db",
            "peak_connections_mlflow_db", "mlflow_requests_per_trial", "storage_calls_per_trial",
            "mlflow_running", "same_as_one_worker", "final_test")


def tables(result: dict, arms: list[str]) -> dict:
    """The result as BENCHMARKS.md shows it: one row per arm, per arm and stage, per
    server's CPU, and per kind of request."""
    one = result.pop("one_worker")
    out = {k: v for k, v in result.items() if k not in arms}
    rows = [{"arm": "one worker, local stores", **dict.fromkeys(ARM_KEYS, ""), "workers": 1,
             "killed": 0, "wall_s": one["wall_s"], "finished_trials": one["finished_trials"],
             "trials_per_s": round(one["finished_trials"]
                                   / (one["last_complete"] - one["first_start"]), 2),
             "mlflow_running": len(one["mlflow_running"]), "final_test": one["final_test"]}]
    stages, cpu, requests, calls, by_caller, request_callers = [], [], {}, {}, {}, {}
    for arm in arms:
        r = result[arm]
        rows.append({"arm": arm, **{k: (len(r[k]) if k == "mlflow_running" else r[k])
                                    for k in ARM_KEYS}})
        for name, stage in r["stages"].items():
            stages.append({"arm": arm, "stage": name,
                           **{k: v for k, v in stage.items() if k != "status"}})
        cpu.append({"arm": arm, "proxy": 0.0, **r["cpu_s"],
                    "capacity (wall x cores)": r["cpu_capacity_s"]})
        for k, v in r["mlflow_requests_per_trial_by_endpoint"].items():
            requests.setdefault(k, {"request": k, **dict.fromkeys(arms, 0)})[arm] = v
        for k, v in r["storage_calls_per_trial_by_method"].items():
            calls.setdefault(k, {"storage call": k, **dict.fromkeys(arms, 0)})[arm] = v
        for k, v in r.get("mlflow_requests_per_trial_by_caller", {}).items():
            request_callers.setdefault(k, {"tracking request <- asl-sweep function": k,
                                           **dict.fromkeys(arms, 0)})[arm] = v
        for k, v in r["storage_calls_per_trial_by_caller"].items():
            by_caller.setdefault(k, {"storage call <- asl-sweep function": k,
                                     **dict.fromkeys(arms, 0)})[arm] = v
    out["arms"] = rows
    out["stages"] = stages
    out["cpu_seconds"] = cpu
    def most(rows: dict) -> list[dict]:  # the 12 largest in any arm
        return sorted(rows.values(), key=lambda r: -max(r[a] for a in arms))[:12]

    out["mlflow_requests_per_finished_trial"] = most(requests)
    out["storage_calls_per_finished_trial"] = most(calls)
    out["storage_calls_per_finished_trial_by_caller"] = most(by_caller)
    out["mlflow_requests_per_finished_trial_by_caller"] = most(request_callers)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--kill", type=float, default=0.1, help="share of workers killed")
    parser.add_argument("--arms", default="direct,proxy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (logs)")
    args = parser.parse_args()

    # As asl-sweep's CLI does before MLflow loads: no usage telemetry (its thread sets and
    # pops an environment variable while requests read the environment).
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # Everything a worker imports, imported once here and shared by every fork.
    import mlflow.store.artifact.mlflow_artifacts_repo  # noqa: F401
    import mlflow.store.tracking.rest_store  # noqa: F401
    import optuna.storages._grpc.client  # noqa: F401
    import psycopg  # noqa: F401
    import torch

    import asl_sweep.cli  # noqa: F401
    import asl_sweep.search.study  # noqa: F401
    import asl_sweep.search.trial  # noqa: F401
    from benchmarks.common import RESULTS, machine, write_result
    from tests.servers import postgres

    torch.set_num_threads(1)
    gc.freeze()
    rng = random.Random(args.seed)
    result: dict = {"machine": machine(), "workers": args.workers, "kill_share": args.kill}
    with (nullcontext(str(args.keep)) if args.keep else
          tempfile.TemporaryDirectory(prefix="fleet-")) as tmp:
        root = Path(tmp)
        result["one_worker"] = one = one_worker(root)
        print(f"one worker: {one['wall_s']} s, adopted "
              f"{[s['adopted'] for s in one['stages'].values()]}, test {one['final_test']}",
              flush=True)
        with postgres(max_connections=400) as pg:
            for name in args.arms.split(","):
                found = arm(name, pg, root, args.workers, args.kill, rng)
                found["same_as_one_worker"] = (
                    [s["adopted"] for s in found["stages"].values()]
                    == [s["adopted"] for s in one["stages"].values()]
                    and found["final_test"] == one["final_test"])
                result[name] = found
                print(json.dumps({k: v for k, v in found.items() if k != "stages"}), flush=True)
                print(json.dumps(found["stages"]), flush=True)
    (RESULTS / "fleet.json").unlink(missing_ok=True)  # a run's tables, whole
    print(f"written to {write_result('fleet', tables(result, args.arms.split(',')))}")


if __name__ == "__main__":
    main()
