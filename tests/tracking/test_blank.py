import contextlib
import logging
import sqlite3

from asl_sweep.runtime.workspace import Workspace
from asl_sweep.tracking import blank
from asl_sweep.tracking.tracker import Tracker


def _schema(db_file) -> dict[str, list[str]]:
    """Each table's and index's definition, its lines sorted: two stores MLflow builds in two
    processes list a table's constraints in different orders (Python's hash seed)."""
    with contextlib.closing(sqlite3.connect(db_file)) as db:
        return {name: sorted(line.strip().rstrip(",") for line in sql.splitlines())
                for name, sql in db.execute(
                    "SELECT name, sql FROM sqlite_master WHERE sql NOT NULL")}


def _version(db_file) -> str:
    with contextlib.closing(sqlite3.connect(db_file)) as db:
        return db.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def _copied(caplog, home) -> bool:
    return any("is a copy of" in r.getMessage() and str(home) in r.getMessage()
               for r in caplog.records)


def test_a_new_home_is_a_copy_of_the_blank_store_and_reads_as_one_mlflow_built(
        tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger=blank.__name__)
    (tmp_path / "no-cache").write_text("a file, not a folder: no blank store")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))
    built = Workspace.at(tmp_path / "built").prepare()
    Tracker(built)  # MLflow builds it, every migration
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = (Workspace.at(tmp_path / name).prepare() for name in ("first", "second"))
    Tracker(first)  # the blank is made, then copied
    assert blank.blank_path().parent == tmp_path / "cache" / "asl-sweep"
    tracker = Tracker(second)
    assert _copied(caplog, first.home) and _copied(caplog, second.home)
    assert not _copied(caplog, built.home)
    stores = [ws.home / "mlflow.db" for ws in (built, first, second)]
    assert _schema(stores[1]) == _schema(stores[2]) == _schema(stores[0])
    assert _version(stores[1]) == _version(stores[0])
    # MLflow's Default experiment, made on opening as in a store it built; and a study's
    # records go in and read back.
    assert tracker.client.get_experiment("0").name == "Default"
    run_id = tracker.new_run(tracker.experiment("copied"), "trial 0")
    tracker.log_text(run_id, "hello", "notes/hello.txt")
    assert tracker.status(run_id) == "RUNNING"
    assert [e.name for e in Tracker(first).client.search_experiments()] == ["Default"]


def test_a_blank_that_is_not_one_is_made_again_and_never_carries_records(
        tmp_path, monkeypatch, caplog):
    """A used store or a damaged file in the blank's place (copied by hand, cut short) must
    not become a new home's store: it is checked before each copy and made again."""
    caplog.set_level(logging.DEBUG, logger=blank.__name__)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    used = Tracker(Workspace.at(tmp_path / "used").prepare())
    used.new_run(used.experiment("someone else's study"), "trial 0")
    path = blank.blank_path()
    for wrong in ((tmp_path / "used" / "mlflow.db").read_bytes(), b"SQLite format 3\0cut"):
        path.write_bytes(wrong)
        home = tmp_path / f"new-{len(wrong)}"
        tracker = Tracker(Workspace.at(home).prepare())
        assert _copied(caplog, home)
        assert [e.name for e in tracker.client.search_experiments()] == ["Default"]
        assert path.read_bytes() != wrong


def test_a_cache_that_cannot_be_written_leaves_the_store_to_mlflow(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file" / "below"))
    tracker = Tracker(Workspace.at(tmp_path / "home").prepare())
    assert [e.name for e in tracker.client.search_experiments()] == ["Default"]


def test_a_relative_cache_variable_is_ignored_as_xdg_says(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert blank.cache_folder() == tmp_path / "user" / ".cache" / "asl-sweep"
    monkeypatch.chdir(tmp_path)
    Tracker(Workspace.at(tmp_path / "home").prepare())
    assert blank.blank_path().exists() and not (tmp_path / "relative").exists()
