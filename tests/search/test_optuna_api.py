"""Each call asl-sweep makes inside Optuna (search/optuna_api.py), against the Optuna
installed: one of these fails when Optuna changes what the adapter relies on."""

import optuna
import pytest

from asl_sweep.search.optuna_api import (
    engine_of,
    frozen_of,
    keeps_heartbeats,
    stale_trial_ids,
    storage_of,
    study_id_of,
    tell,
    trial_id_of,
)


@pytest.fixture
def sqlite_study(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=5,
                                         grace_period=30)
    return optuna.create_study(study_name="s", storage=storage), storage


def test_storage_of_is_the_storage_the_study_writes(sqlite_study):
    study, storage = sqlite_study
    assert isinstance(storage_of(study), optuna.storages.BaseStorage)
    storage_of(study).set_study_system_attr(study_id_of(study), "k", 1)
    assert storage.get_study_system_attrs(storage.get_study_id_from_name("s")) == {"k": 1}


def test_engine_of_is_the_rdb_storages_engine(sqlite_study):
    import sqlalchemy

    _, storage = sqlite_study
    assert isinstance(engine_of(storage), sqlalchemy.engine.Engine)
    assert str(engine_of(storage).url).endswith("o.db")


def test_study_id_of_names_the_study_in_its_storage(sqlite_study):
    study, storage = sqlite_study
    assert study_id_of(study) == storage.get_study_id_from_name("s")


def test_trial_id_of_a_running_and_a_frozen_trial(sqlite_study):
    study, storage = sqlite_study
    trial = study.ask()
    assert storage.get_trial(trial_id_of(trial)).number == trial.number
    frozen = study.get_trials(deepcopy=False)[0]
    assert trial_id_of(frozen) == trial_id_of(trial)


def test_frozen_of_is_the_trial_as_it_was_taken(sqlite_study):
    study, _ = sqlite_study
    study.enqueue_trial({}, user_attrs={"role": "search"})
    trial = study.ask()
    frozen = frozen_of(trial)
    assert isinstance(frozen, optuna.trial.FrozenTrial)
    assert frozen.number == trial.number and frozen.user_attrs == {"role": "search"}
    assert "fixed_params" in frozen.system_attrs


def test_keeps_heartbeats_tells_the_rdb_storage_from_one_without(sqlite_study):
    _, storage = sqlite_study
    assert keeps_heartbeats(storage)
    assert not keeps_heartbeats(optuna.storages.InMemoryStorage())
    pytest.importorskip("grpc")  # the proxy's client keeps none either (no connection yet)
    assert not keeps_heartbeats(optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=1))


def test_tell_ends_a_trial_as_study_tell_does_without_reading_it_back(sqlite_study):
    study, storage = sqlite_study
    done, pruned, failed = study.ask(), study.ask(), study.ask()
    pruned.report(0.25, step=3)
    reads = []
    get_trial = storage.get_trial
    storage.get_trial = lambda trial_id: reads.append(trial_id) or get_trial(trial_id)
    tell(study, done, 0.5)
    tell(study, pruned, state=optuna.trial.TrialState.PRUNED)
    tell(study, failed, state=optuna.trial.TrialState.FAIL)
    assert len(reads) == 3  # one read a tell (Study.tell reads the trial twice)
    ended = study.get_trials(deepcopy=False)
    assert [(t.state.name, t.value) for t in ended] == [
        ("COMPLETE", 0.5), ("PRUNED", 0.25), ("FAIL", None)]
    with pytest.raises(ValueError, match="Cannot tell a COMPLETE trial"):
        tell(study, done, 0.6)


def test_stale_trial_ids_are_the_running_trials_whose_heartbeats_stopped(sqlite_study):
    from sqlalchemy import text

    study, storage = sqlite_study
    quiet, beating, never = study.ask(), study.ask(), study.ask()
    for trial in (quiet, beating):
        storage.record_heartbeat(trial_id_of(trial))
    assert stale_trial_ids(storage, study_id_of(study)) == []
    with engine_of(storage).begin() as db:  # its last beat 31 s ago: past the grace period
        db.execute(text("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-31 seconds') "
                        "WHERE trial_id = :id"), {"id": trial_id_of(quiet)})
    assert stale_trial_ids(storage, study_id_of(study)) == [trial_id_of(quiet)]
    study.tell(never, 0.5)
    assert study.get_trials()[0].state == optuna.trial.TrialState.RUNNING  # not failed
