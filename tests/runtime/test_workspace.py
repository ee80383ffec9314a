import os
import subprocess
import sys
import time

import pytest

from asl_sweep.runtime.workspace import shown
from tests.servers import free_port


@pytest.mark.parametrize("url, printed", [
    ("postgresql://sweep:s3cret@db.lab:5432/optuna", "postgresql://sweep:***@db.lab:5432/optuna"),
    ("postgresql+psycopg://u:p%40ss@h/db?sslmode=require&password=x",
     "postgresql+psycopg://u:***@h/db?sslmode=require&password=***"),
    ("https://token:abc@mlflow.lab/", "https://token:***@mlflow.lab/"),
    ("postgresql://sweep@db.lab/optuna", "postgresql://sweep@db.lab/optuna"),  # no password
    ("sqlite:////tmp/mlruns/optuna.db", "sqlite:////tmp/mlruns/optuna.db"),
    ("grpc://proxy:13000", "grpc://proxy:13000"),
])
def test_a_store_url_is_shown_without_its_password(url, printed):
    assert shown(url) == printed


def test_a_tracking_database_never_reached_is_one_line_in_the_retry_budget(write_study,
                                                                           tmp_path):
    """MLflow opened an unreachable tracking database with its own retries: about 100 s,
    then SQLAlchemy's traceback (exit 1), the password in the URL printed on the way. Now it
    is waited for in ASL_SWEEP_STORE_RETRY_S, then one line (exit 2), the password hidden."""
    url = f"postgresql://sweep:s3cret@127.0.0.1:{free_port()}/mlflow"  # nothing listens
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "asl_sweep.cli", "run", str(write_study()),
                           "--home", str(tmp_path / "mlruns"), "--tracking", url],
                          env={**os.environ, "ASL_SWEEP_STORE_RETRY_S": "2"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert time.monotonic() - started < 60
    assert "Traceback" not in proc.stderr and "s3cret" not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: the MLflow store (--tracking) has not answered for 2 s (")


def test_a_password_in_a_store_url_is_not_printed(write_study, tmp_path):
    """An Optuna database not there when a command starts is waited for as one that goes
    away (it was refused at once, "postgresql://sweep:s3cret@...: the Optuna store cannot be
    opened"), and no line prints a URL's password."""
    url = f"postgresql://sweep:s3cret@127.0.0.1:{free_port()}/optuna"
    for args, said in ((["--storage", url], "error: the Optuna store (--storage) has not "
                                            "answered for 1 s ("),
                       (["--storage", "foo://sweep:s3cret@x/db"],
                        "error: --storage foo://sweep:***@x/db: not a database URL")):
        proc = subprocess.run([sys.executable, "-m", "asl_sweep.cli", "status",
                               str(write_study()), "--home", str(tmp_path / "mlruns"), *args],
                              env={**os.environ, "ASL_SWEEP_STORE_RETRY_S": "1"},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "s3cret" not in proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(said), proc.stderr


def test_optuna_and_mlflow_are_refused_one_database_or_each_others(tmp_path):
    """Both stores in one database (or one's file given for the other's): Optuna wrote its
    tables into mlflow.db and stopped with a migration error, MLflow into optuna.db with
    alembic's 'Can't locate revision' traceback. One line now, before either opens it."""
    import optuna
    from mlflow.tracking import MlflowClient

    from asl_sweep.runtime.errors import ConfigError
    from asl_sweep.runtime.workspace import Workspace

    home = tmp_path / "home"
    home.mkdir()
    optuna_db, mlflow_db = f"sqlite:///{home / 'optuna.db'}", f"sqlite:///{home / 'mlflow.db'}"
    optuna.create_study(storage=optuna_db, study_name="s")
    MlflowClient(mlflow_db).search_experiments()
    before = (home / "mlflow.db").read_bytes(), (home / "optuna.db").read_bytes()
    with pytest.raises(ConfigError, match=r"^--storage sqlite:///.*/mlflow.db: an MLflow store "
                                          r"\(it holds that library's tables\), not the one"):
        Workspace.at(tmp_path / "other", storage=mlflow_db)
    with pytest.raises(ConfigError, match=r"^--tracking sqlite:///.*/optuna.db: an Optuna "
                                          r"store"):
        Workspace.at(tmp_path / "other", tracking_uri=optuna_db)
    with pytest.raises(ConfigError, match=r"^--storage and --tracking name one database"):
        Workspace.at(home, storage=mlflow_db)  # the home's own mlflow.db
    assert ((home / "mlflow.db").read_bytes(), (home / "optuna.db").read_bytes()) == before
    # One database server's database for both, however the URLs spell it.
    with pytest.raises(ConfigError, match=r"name one database \(postgresql\+psycopg://u@db"):
        Workspace.at(home, storage="postgresql://u:pw@db/x",
                     tracking_uri="postgresql+psycopg://u@db:5432/x")
    Workspace.at(home, storage="postgresql://u@db/optuna", tracking_uri="postgresql://u@db/mlflow")
    Workspace.at(home, storage="grpc://proxy:13000", tracking_uri="http://mlflow:5000")
    Workspace.at(home)  # each in its own file


def test_stores_named_by_relative_sqlite_urls_are_read(tmp_path, monkeypatch):
    """`--storage sqlite:///optuna.db` (relative, as SQLAlchemy reads it): its file was opened
    by a file URI, which a relative path has none of, and the check was a ValueError
    traceback; an MLflow store given for --storage so is refused in its one line."""
    import sqlite3

    from asl_sweep.runtime.errors import ConfigError
    from asl_sweep.runtime.workspace import Workspace

    monkeypatch.chdir(tmp_path)
    sqlite3.connect("optuna.db").execute("CREATE TABLE studies (x)")
    sqlite3.connect("mlflow.db").execute("CREATE TABLE experiments (x)")
    made = Workspace.at(tmp_path / "home", storage="sqlite:///optuna.db",
                        tracking_uri="sqlite:///mlflow.db")
    assert str(made.tracking_file) == "mlflow.db"
    with pytest.raises(ConfigError, match=r"^--storage sqlite:///mlflow.db: an MLflow store"):
        Workspace.at(tmp_path / "home", storage="sqlite:///mlflow.db",
                     tracking_uri="sqlite:///optuna.db")


def test_a_sqlite_store_on_a_network_file_system_is_named(tmp_path):
    """A cluster's home folder on NFS: the stores in it are named with the file system's
    type; stores on servers are no file of this machine's."""
    from asl_sweep.runtime.workspace import Workspace

    table = tmp_path / "mountinfo"
    table.write_text("20 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
                     f"21 20 0:41 / {tmp_path} rw,relatime shared:3 - nfs4 srv:/home rw\n")
    home = tmp_path / "mlruns"
    assert Workspace.at(home).networked_stores(table) == (
        f"the SQLite store {home.resolve() / 'optuna.db'} is on nfs4, a network file system")
    assert Workspace.at(home).networked_stores(tmp_path / "no-table") is None
    served = Workspace.at(home, storage="postgresql://me@db/optuna",
                          tracking_uri="http://127.0.0.1:5000")
    assert served.networked_stores(table) is None
