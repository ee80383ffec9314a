"""Real servers on the loopback address, for the tests and the fleet benchmark: PostgreSQL,
`mlflow server --serve-artifacts`, and `asl-sweep store-proxy` (Optuna's gRPC proxy). Each
is a context manager that starts the server, waits until it answers, and stops it."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Address(str):
    """A server's address, and `pid`: its process, the leader of a session of its own (its
    workers' too)."""

    pid: int


def _address(url: str, pid: int) -> Address:
    address = Address(url)
    address.pid = pid
    return address


def postgres_bin() -> str | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return bins[-1] if bins else None


class Postgres(str):
    """A PostgreSQL server's address (postgresql://postgres@127.0.0.1:PORT), and the means to
    stop and start it (a real outage), make databases and ask it SQL."""

    @classmethod
    def at(cls, root: str, max_connections: int) -> Postgres:
        port = free_port()
        server = cls(f"postgresql://postgres@127.0.0.1:{port}")
        server.bindir, server.root, server.port = postgres_bin(), root, port
        server.data, server.max_connections = os.path.join(root, "data"), max_connections
        server.as_user = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(root, "postgres")
            server.as_user = ["runuser", "-u", "postgres", "--"]
        server.pg(f"{server.bindir}/initdb", "-D", server.data, "-A", "trust", "-U", "postgres",
                  "--no-sync")
        return server

    def pg(self, *cmd: str) -> str:
        return subprocess.run([*self.as_user, *cmd], check=True, capture_output=True,
                              text=True, timeout=120).stdout

    def start(self) -> None:
        self.pg(f"{self.bindir}/pg_ctl", "-D", self.data, "-l", os.path.join(self.root, "log"),
                "-w", "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                f"-c fsync=off -c max_connections={self.max_connections}", "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg(f"{self.bindir}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def createdb(self, name: str) -> str:
        self.pg(f"{self.bindir}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                "postgres", name)
        return f"{self}/{name}"

    def sql(self, query: str, db: str = "postgres") -> list[list[str]]:
        """Rows of `query` as text (psql, so the asking process holds no connection)."""
        out = subprocess.run([f"{self.bindir}/psql", "-h", "127.0.0.1", "-p", str(self.port),
                              "-U", "postgres", "-d", db, "-Atc", query], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        return [line.split("|") for line in out.splitlines() if line]


@contextlib.contextmanager
def postgres(max_connections: int = 200) -> Iterator[Postgres]:
    """A fresh PostgreSQL server in a temporary folder, removed afterwards."""
    root = tempfile.mkdtemp(prefix="asl-pg-")
    server = Postgres.at(root, max_connections)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _wait(proc: subprocess.Popen, ready, what: str, log: Path | None = None,
          seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            said = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} did not start: {said}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path, workers: int = 1, log: Path | None = None,
                  port: int | None = None) -> Iterator[Address]:
    """`mlflow server --serve-artifacts` on `backend` (a database URI), artifacts kept in
    `artifacts`; yields its http:// address."""
    port = port or free_port()
    log = log or artifacts.parent / "mlflow-server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--serve-artifacts", "--artifacts-destination", str(artifacts), "--host",
         "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        stdout=subprocess.DEVNULL, stderr=log.open("w"),
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return True
        except OSError:
            return False

    try:
        _wait(proc, answers, "mlflow server", log)
        yield _address(url, proc.pid)
    finally:
        _stop(proc)


@contextlib.contextmanager
def store_proxy(storage: str, log: Path | None = None,
                port: int | None = None) -> Iterator[Address]:
    """`asl-sweep store-proxy` in front of `storage`; yields its grpc:// address."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep.cli", "store-proxy", "--storage",
                             storage, "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    first = proc.stdout.readline()
    if not first.startswith("Optuna storage proxy for "):
        raise RuntimeError(f"asl-sweep store-proxy did not start: {first}{proc.stdout.read()}")
    if log is not None:  # the rest of what it says, kept (and its pipe never fills)
        sink = log.open("w")
        subprocess.Popen(["cat"], stdin=proc.stdout, stdout=sink)

    def listens() -> bool:  # a moment after it says so
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    try:
        _wait(proc, listens, "asl-sweep store-proxy", None, 60)
        yield _address(f"grpc://127.0.0.1:{port}", proc.pid)
    finally:
        _stop(proc)
