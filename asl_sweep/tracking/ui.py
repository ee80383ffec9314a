"""`asl-sweep ui`: the MLflow UI on a study home's store. One web worker and no background
job runner (a local store needs neither), and the address is printed only once the server
answers: the runs of each study's experiment, opened on the model-training view."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

from asl_sweep.runtime import signals
from asl_sweep.runtime.errors import ConfigError, StoreError
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.tracking.views import SHARED_VIEW_TAG, TRIALS_VIEW

START_TIMEOUT_S = 120
TRIALS = urllib.parse.quote("tags.kind = 'trial'")


def check_port(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: not a port number (1-65535)")
    not_here = (f"--host {host}: not an address of this machine ({{}}); give one of its "
                "addresses, 127.0.0.1 (the default: this machine only) or 0.0.0.0 (every "
                "network)")
    try:
        family, *_, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(not_here.format(getattr(e, "strerror", None) or e)) from None
    with socket.socket(family) as probe:
        # As the servers bind: a port whose last connections linger (a server restarted a
        # moment ago) is free to them; one a server listens on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(not_here.format(e.strerror)) from None
            raise ConfigError(f"--port {port}: {host}:{port} cannot be used ({e.strerror or e}; "
                              "another server may hold it); choose another with --port") from None


def experiment_addresses(base: str) -> list[str]:
    """Each study's runs page, asked of the running server itself (its REST API)."""
    request = urllib.request.Request(f"{base}/ajax-api/2.0/mlflow/experiments/search",
                                     data=json.dumps({"max_results": 1000}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        experiments = json.load(answer).get("experiments", [])
    lines = []
    for e in experiments:
        if e["name"] == "Default":
            continue
        runs = f"{base}/#/experiments/{e['experiment_id']}/runs?workflowType=machine_learning"
        shared = any(t["key"] == SHARED_VIEW_TAG + TRIALS_VIEW for t in e.get("tags", []))
        # The study's trial view (views.py): flat, best first, its columns chosen; a study
        # recorded before there was one: its trial runs by a filter.
        trials = (f"{runs}&viewStateShareKey={TRIALS_VIEW}" if shared
                  else f"{runs}&searchFilter={TRIALS}")
        lines += [f"  {e['name']}, every trial: {trials}",
                  f"  {e['name']}, charts: {trials}&compareRunsMode=CHART",
                  # oldest first: stage 1 above stage 2 (MLflow's default is newest first)
                  f"  {e['name']}, study -> stage -> trial: {runs}&orderByKey="
                  f"{urllib.parse.quote('attributes.start_time')}&orderByAsc=true"]
    return lines


LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The MLflow server's notes on its own flags (--allowed-hosts, --host 0.0.0.0): flags
# asl-sweep's ui does not have; the addresses it serves are asl-sweep's own lines.
_SERVER_NOTES = ("[MLflow] Security middleware",)


def _pass_on(stream) -> None:
    """The MLflow server's stderr, less its notes on flags asl-sweep's ui does not have."""
    for line in stream:
        if not line.startswith(_SERVER_NOTES):
            sys.stderr.write(line)
            sys.stderr.flush()


def allowed_hosts(host: str, port: int) -> str:
    """The Host headers the UI answers: this machine's names where it listens on this
    machine only (MLflow's own default, said explicitly so MLflow does not print a note
    about flags asl-sweep's ui does not have), any where the user binds another address."""
    if host in LOOPBACK:
        return f"localhost:{port},127.0.0.1:{port},[::1]:{port}"
    return "*"


def serve(ws: Workspace, host: str, port: int, log=print) -> int:
    if not ws.has_tracking_store:
        raise StoreError(f"{ws.home}: no MLflow store here yet; run a study first, or pass "
                         "--home with the study's folder")
    from asl_sweep.tracking.tracker import Tracker

    # Opened here first: a damaged store, or one another MLflow made, is one line (the
    # server printed MLflow's traceback, then stopped at start).
    Tracker(ws)
    check_port(host, port)
    # The server's own library deprecation notes (Starlette's, for one) are not for the user.
    quiet = ("ignore::DeprecationWarning",
             "ignore:starlette.middleware.wsgi is deprecated")  # a UserWarning subclass
    warn = ",".join(w for w in (os.environ.get("PYTHONWARNINGS"), *quiet) if w)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONWARNINGS": warn}
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", ws.tracking_uri,
               "--registry-store-uri", ws.tracking_uri,
               "--default-artifact-root", ws.artifacts.as_uri(), "--host", host, "--port",
               str(port), "--allowed-hosts", allowed_hosts(host, port),
               "--workers", "1", "--uvicorn-opts", "--log-level warning",
               # MLflow's app, opening on the model-training view (tracking/uiapp.py)
               "--app-name", "asl-sweep"]

    def ready(base: str) -> None:
        studies = experiment_addresses(base)
        # The experiment list: the bare address opens MLflow's GenAI welcome page.
        log(f"MLflow UI: {base}/#/experiments?workflowType=machine_learning  (Ctrl-C to stop)")
        for line in studies:
            log(line)

    return run_server("the MLflow server", command, env, f"http://{host}:{port}", "/health",
                      ready)


def run_server(what: str, command: list[str], env: dict, base: str, health: str,
               ready) -> int:
    """Start a server process, call ready(base) once `health` answers, and keep it until it
    stops or the user stops it (Ctrl-C, SIGTERM); its stderr passes on, less the notes above."""
    with signals.ctrl_c_held_for_child():  # the terminal's Ctrl-C is ours to pass on
        server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    threading.Thread(target=_pass_on, args=(server.stderr,), name="server-stderr",
                     daemon=True).start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            signals.check()
            if server.poll() is not None:
                raise StoreError(f"{what} stopped at start (exit code "
                                 f"{server.returncode}); its messages are above")
            try:
                with urllib.request.urlopen(f"{base}{health}", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise StoreError(f"{what} did not answer on {base} within "
                                     f"{START_TIMEOUT_S}s") from None
                time.sleep(0.3)
        ready(base)
        while server.poll() is None:
            signals.check()
            time.sleep(0.3)
        return server.returncode
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
