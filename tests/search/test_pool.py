"""search/pool.py: how many workers a run starts here."""

from asl_sweep.runtime.workers import auto_workers
from asl_sweep.search.pool import resolve_workers
from asl_sweep.settings.spec import StudyConfig

CFG = StudyConfig.model_validate({"study": "s", "stages": [
    {"name": "a", "trials": 2, "confirm": None, "space": {"lr": [1e-3]}}]})
NFS = "the SQLite store /home/me/mlruns/optuna.db is on nfs4, a network file system"


def test_stores_on_a_network_file_system_run_one_worker_unless_more_are_asked_for():
    """SQLite's locks over NFS do not hold for several processes writing one database: a
    cluster's home folder. `auto` runs one worker there and says why; a count given runs
    as asked, with a warning; both name the store and the safe ways to run several."""
    said = []
    one = resolve_workers(CFG, "auto", 1, say=said.append, networked=NFS)
    assert one.count == 1
    if auto_workers().count > 1:  # a machine where auto would start several
        assert said == [f"--workers auto: one worker, not {auto_workers().count}: {NFS}, "
                        "where SQLite's locks do not hold for several processes at once; "
                        "for several, --home on a local disk, or --storage and --tracking "
                        "on PostgreSQL (docs/how-to/several-machines.md)"]
    said.clear()
    two = resolve_workers(CFG, 2, 1, say=said.append, networked=NFS)
    assert two.count == 2 and len(said) == 1 and said[0].startswith(
        f"warning: --workers 2: {NFS}, where SQLite's locks may not hold")
    said.clear()
    assert resolve_workers(CFG, "auto", 1, say=said.append).count == auto_workers().count
    assert said == []
