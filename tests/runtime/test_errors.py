"""A store fault names the store: which database a failed statement was writing."""

import sqlite3

import pytest
import sqlalchemy.exc

from asl_sweep.runtime.errors import StoreError, environment_fault


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
