"""`asl-sweep serve MODEL`: a registered model behind MLflow's own scoring server (`mlflow
models serve`, REST on /invocations), started with what it needs found: the study home's
registry for a models:/ URI, the local environment (no conda, no virtualenv made), and this
interpreter's own folder on PATH (the server runs `uvicorn`, a command that is not on PATH
after a plain `.venv` install unless the venv is activated)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from asl_sweep.runtime.errors import ConfigError
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.tracking.ui import check_port, run_server


def server_env(ws: Workspace) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "MLFLOW_TRACKING_URI": ws.tracking_uri,
            "MLFLOW_REGISTRY_URI": ws.tracking_uri,
            "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}


def serve_model(ws: Workspace, model: str, host: str, port: int, log=print) -> int:
    if not model.startswith(("models:/", "runs:/")) and not Path(model).exists():
        raise ConfigError(f"{model}: not a models:/ or runs:/ URI nor an MLflow model folder; "
                          "`asl-sweep export STUDY.yaml` registers one (models:/asl-sweep-STUDY/N)")
    if not model.startswith(("models:/", "runs:/")) and not (Path(model) / "MLmodel").is_file():
        raise ConfigError(f"{model}: not an MLflow model folder (no MLmodel file in it); give "
                          "models:/asl-sweep-STUDY/N, which `asl-sweep export` registers")
    if model.startswith(("models:/", "runs:/")):
        if not ws.has_tracking_store:
            raise ConfigError(f"{ws.home}: no MLflow store here to look {model} up in; pass "
                              "--home with the study's folder")
        from asl_sweep.tracking.tracker import Tracker

        # Looked up here, one line where there is no such model (the server said so with a
        # traceback of its own); the server gets the same URI and reads the same store.
        Tracker(ws).model_source(model)
    check_port(host, port)
    command = [sys.executable, "-c", "from mlflow.cli import cli; cli()", "models", "serve",
               "-m", model, "--env-manager", "local", "-h", host, "-p", str(port), "-w", "1"]

    def ready(base: str) -> None:
        log(f"serving {model} on {base}/invocations  (Ctrl-C to stop)")
        log(f"  ask it: curl -s {base}/invocations -H 'Content-Type: application/json' "
            "-d '{\"inputs\": [[[[0, ...]]]]}'  (images [B, 3, H, W], 0-255 or 0-1)")

    return run_server("mlflow models serve", command, server_env(ws), f"http://{host}:{port}",
                      "/ping", ready)
