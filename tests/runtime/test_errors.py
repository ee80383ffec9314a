"""A store fault names the store: which database a failed statement was writing; a path in
a message stays on its one line."""

import os
import sqlite3

import pytest
import sqlalchemy.exc

from asl_sweep.runtime.errors import StoreError, as_text, environment_fault


@pytest.mark.parametrize("statement, store", [
    ("INSERT INTO trial_values (trial_id, value) VALUES (?, ?)", "the Optuna store"),
    ("UPDATE studies SET study_name=?", "the Optuna store"),
    ("INSERT INTO latest_metrics (key, value) VALUES (?, ?)", "the MLflow store"),
    ("UPDATE runs SET status=? WHERE runs.run_uuid = ?", "the MLflow store"),
    ("PRAGMA main.table_info(x)", "a store"),
])
def test_a_read_only_database_is_named(statement, store):
    cause = sqlite3.OperationalError("attempt to write a readonly database")
    error = sqlalchemy.exc.OperationalError(statement, {}, cause)
    found = environment_fault(error)
    assert isinstance(found, StoreError)
    assert str(found).startswith(f"{store}") and "attempt to write a readonly database" in str(found)


def test_a_fault_whose_statement_names_no_table_is_the_callers_store():
    """The storage proxy's own database fails at a COMMIT (no table named): the caller knows
    it is the Optuna store (the full-database-behind-the-proxy test met it as "a store"
    once in four CI runs)."""
    cause = sqlite3.OperationalError("database or disk is full")
    error = sqlalchemy.exc.OperationalError("COMMIT", {}, cause)
    assert str(environment_fault(error)).startswith("a store could not be written")
    named = environment_fault(error, "the Optuna store (optuna.db, or --storage)")
    assert str(named).startswith("the Optuna store (optuna.db, or --storage) could not be "
                                 "written (database or disk is full)")


def _chain(*errors: BaseException) -> BaseException:
    """errors[0] raised while handling errors[1], ... as libraries wrap them."""
    for outer, inner in zip(errors, errors[1:], strict=False):
        outer.__context__ = inner
    return errors[0]


def test_an_address_refused_is_a_store_error_and_not_a_lost_connection():
    """A host name that does not resolve (urllib3 under MLflow's client, psycopg) or a
    database the server does not have was waited for as a server away (120 s, then "start
    it again"), or was a traceback; waiting does not mend it, the address does."""
    import socket

    import mlflow.exceptions
    import psycopg
    import requests
    import urllib3

    from asl_sweep.runtime.outage import lost_connection

    resolving = urllib3.exceptions.NameResolutionError(
        "no-such-host.invalid", None, socket.gaierror(-2, "Name or service not known"))
    http = _chain(mlflow.exceptions.MlflowException(
        "API request to http://no-such-host.invalid:5000/api/2.0/mlflow/experiments/search "
        f"failed with exception HTTPConnectionPool(host='no-such-host.invalid', port=5000): "
        f"Max retries exceeded with url: /x (Caused by {resolving!r})"),
        requests.exceptions.ConnectionError("Max retries exceeded"), resolving)
    database = sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
        'database "nodb" does not exist'))
    host = psycopg.OperationalError("failed to resolve host 'db.invalid': [Errno -2] Name or "
                                    "service not known")
    for error, said in [(http, "Failed to resolve 'no-such-host.invalid' ([Errno -2] Name or "
                               "service not known)"),
                        (database, 'FATAL: database "nodb" does not exist'),
                        (host, "failed to resolve host 'db.invalid': [Errno -2] Name or "
                               "service not known")]:
        assert lost_connection(error) is None
        fault = environment_fault(error, "the MLflow store (--tracking)")
        assert str(fault) == (f"the MLflow store (--tracking) cannot be opened ({said}): check "
                              "its address (host name, database, user, password), then rerun "
                              "the same command")
    # A server starting, stopping or full, and a name server away, are waited for.
    for passing in ("FATAL:  the database system is starting up",
                    "FATAL:  sorry, too many clients already"):
        error = psycopg.OperationalError(f'connection failed: connection to server at '
                                         f'"127.0.0.1", port 5432 failed: {passing}')
        assert lost_connection(error) and environment_fault(error) is None
    away = psycopg.OperationalError("connection failed: could not connect: Temporary failure "
                                    "in name resolution")
    assert lost_connection(away) and environment_fault(away) is None
    # git's lower-case "fatal:" (MLflow asks git for the source's version) is no store's
    assert environment_fault(RuntimeError("fatal: not a git repository")) is None


def test_a_disk_fault_a_library_kept_only_as_text_is_one_line_naming_the_file():
    """MLflow's artifact copy reports a full disk as text in an MlflowException: it was a
    traceback; the file named is the one being written."""
    import mlflow.exceptions

    error = mlflow.exceptions.MlflowException(
        "The following failures occurred while downloading one or more artifacts from /t/a:\n"
        "##### File m.pt #####\n[Errno 28] No space left on device: '/t/a/m.pt' -> '/t/b/m.pt'")
    assert str(environment_fault(error)) == (
        "/t/b/m.pt: could not be written (No space left on device); nothing recorded was "
        "lost: free space or make the folder writable, then rerun the same command")
    plain = RuntimeError("[Errno 27] File too large: '/t/c.bin'")
    assert str(environment_fault(plain)).startswith("/t/c.bin: could not be written (File too")
    assert environment_fault(RuntimeError("[Errno 2] No such file or directory: 'x'")) is None


def test_a_path_is_shown_on_one_line_whatever_its_name_holds():
    """A newline, a tab or an escape in a file name (a script's, a download's) split the
    error line predict printed for it, and could send the terminal a control sequence; a
    name in another encoding is shown by its bytes."""
    shown = as_text("photos/new\nline\t\x1b[31mred\x7f.png")
    assert shown == "photos/new\\nline\\t\\x1b[31mred\\x7f.png"
    assert shown.isprintable()
    assert as_text(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert as_text("caf\u00e9 \u624b.png") == "caf\u00e9 \u624b.png"  # UTF-8 text as it is


def test_optunas_tables_beside_another_programs_schema_are_not_called_an_old_optuna(tmp_path):
    """MLflow's schema revision in a file that holds Optuna's tables (`store-proxy` once
    wrote Optuna's into an mlflow.db): Optuna says its own version set it up and is no
    longer compatible with it, which read "made by another Optuna version (5.1.0; this is
    Optuna 5.1.0): use the newer Optuna that made it"."""
    import optuna

    from asl_sweep.search.store import optuna_storage

    url = f"sqlite:///{tmp_path / 'both.db'}"
    optuna.create_study(storage=url, study_name="made")
    with sqlite3.connect(tmp_path / "both.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'dc11669786a5'")  # MLflow's
    with pytest.raises(RuntimeError) as raised:
        optuna_storage(url)
    line = str(environment_fault(raised.value, "the Optuna store"))
    assert line == (f"the Optuna store (optuna.db, or --storage) holds Optuna "
                    f"{optuna.__version__}'s tables beside another program's schema (its "
                    "alembic_version is not Optuna's: an MLflow store, mlflow.db, given for the "
                    "Optuna one?): give the Optuna store a database of its own")
