"""The study record: what a study is bound to and what it concluded, kept in the Optuna store
beside its stages (an Optuna study of the study's own name, with no trials). It holds the data
settings the study ran with and a digest of the files, so every later command reads the same
data and a command that names other data is refused instead of silently obeyed; and, at the
end, the final test score."""

from __future__ import annotations

import json
from typing import Any

import optuna

from asl_sweep.runtime.errors import ConfigError, StoreError
from asl_sweep.search.state import (
    STUDY_RECORD,
    RecordKey,
    StageKey,
    SummaryKey,
    open_shared,
    read,
    wait_for,
    write,
)
from asl_sweep.search.store import stage_study_name
from asl_sweep.settings.config import DataConfig
from asl_sweep.settings.spec import StudyConfig

NEW_STUDY = "keep the stored settings (drop the change) or start a new study with --set study=NEW"


def _stored_form(data: DataConfig) -> dict[str, Any]:
    return json.loads(data.model_dump_json())


def _flat(tree: dict, prefix: str = "data.") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def first_difference(stored: dict, given: dict, prefix: str = "",
                     keys: set[str] | None = None) -> tuple[str, Any, Any] | None:
    """The first setting (a dotted path after `prefix`, among `keys` where given) whose value
    differs between two trees of settings: (path, stored value, given value)."""
    a, b = _flat(stored, prefix), _flat(given, prefix)
    for key in sorted(set(a) | set(b)):
        if keys is not None and not any(key == k or key.startswith(k + ".") for k in keys):
            continue
        if a.get(key) != b.get(key):
            return key, a.get(key), b.get(key)
    return None


def _first_difference(stored: dict, given: dict, keys: set[str] | None = None) -> str | None:
    found = first_difference(stored, given, "data.", keys)
    if found is None:
        return None
    key, then, now = found
    return f"{key}: this study ran with {_said(key, then)}, this command says {_said(key, now)}"


def _said(key: str, value: Any) -> str:
    """A data setting as a line says it: no root is the built-in set (it said "None")."""
    if value is None:
        return "the built-in synthetic letters (no --data)" if key == "data.root" else "none"
    return repr(value)


def load_record(storage, study: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        return None


def _stage_studies(storage, cfg: StudyConfig) -> list[str]:
    """The Optuna studies of `cfg`'s stages that exist in the store (by the stages' names, not
    by the prefix STUDY.: study `cnn.x` is not a stage of study `cnn`)."""
    names = {stage_study_name(cfg, stage) for stage in cfg.stages}
    return [s.study_name for s in storage.get_all_studies() if s.study_name in names]


def _anything_begun(storage, cfg: StudyConfig) -> bool:
    """Whether any trial of the study's stages has finished (its result depends on the data)
    or is training now (another worker, on the data it read)."""
    begun = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
             optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)
    return any(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False,
                                      states=begun)
               for name in _stage_studies(storage, cfg))


def bind(storage, cfg: StudyConfig, log=print) -> tuple[optuna.Study, bool, dict[str, Any]]:
    """The record of `cfg.study`, whether this call created it (exactly one process does),
    and its keys as this call read and left them (a process reads them once at its start:
    `check_digest` and the study's run take them from here). Made on the first run; on every
    later run the data settings must be the ones stored, unless no trial has finished yet or
    is training (a mistyped --data on a first run costs nothing: the study binds to the data
    of the run that trains)."""
    given = _stored_form(cfg.data)
    record, created = open_shared(cfg.study, storage)
    if created:
        record.set_user_attr(SummaryKey.KIND, STUDY_RECORD)
        write(record, RecordKey.DATA, given)
        settings = _keep_settings(record, {}, cfg)
        return record, True, {RecordKey.DATA: given, RecordKey.SETTINGS: settings}
    keys = read(record)
    if _is_a_stage(record, keys):
        raise StoreError(f"study {cfg.study}: that name is taken in this store by a stage of "
                         "another study (a stage's Optuna study is named STUDY.STAGE); name "
                         f"this study otherwise, e.g. --set study={cfg.study.replace('.', '-')}")
    # Another worker may be writing it right now.
    stored = (keys if RecordKey.DATA in keys
              else wait_for(record, RecordKey.DATA, 10.0) or read(record))
    ran = stored.get(RecordKey.DATA, given)
    anywhere = _first_difference(ran, given)  # the folder's path among them
    difference = _first_difference(_read_here(ran, given), given) if anywhere else None
    if anywhere and not _anything_begun(storage, cfg):
        log(f"study {cfg.study}: no trial has finished yet, so it binds to this command's "
            f"data ({difference or anywhere})")
        write(record, RecordKey.DATA, given)
        write(record, RecordKey.DIGEST, None)  # the new files' digest is stored once they are read
        stored = {**stored, RecordKey.DATA: given, RecordKey.DIGEST: None}
    elif difference:
        raise StoreError(f"study {cfg.study}: {difference}; {NEW_STUDY}")
    elif anywhere:  # only the folder's path: the same files elsewhere (check_digest)
        log(f"study {cfg.study}: reads its images in {given['root']} (it first read them in "
            f"{ran['root']}); their names and contents are checked against the ones it "
            "recorded")
    return record, False, {**stored, RecordKey.SETTINGS: _keep_settings(record, stored, cfg)}


def _keep_settings(record: optuna.Study, stored: dict[str, Any], cfg: StudyConfig) -> dict:
    """The study's settings as this run reads them (its YAML with the --set it was given),
    kept in the record where they differ from the stored ones: the commands that read a
    study back by its name find them there where its YAML is not at hand (`recorded_study`)."""
    settings = json.loads(cfg.model_dump_json())
    if stored.get(RecordKey.SETTINGS) != settings:
        write(record, RecordKey.SETTINGS, settings)
    return settings


def recorded_studies(storage) -> list[str]:
    """The names of the studies asl-sweep recorded in this Optuna store (not the stages'
    own Optuna studies, nor another program's), sorted."""
    return sorted(s.study_name for s in optuna.get_all_study_summaries(
        storage, include_best_trial=False)
        if s.user_attrs.get(SummaryKey.KIND) == STUDY_RECORD)


def recorded_study(storage, study: str) -> dict[str, Any] | None:
    """The settings a study's last run read (`_keep_settings`), as a tree for
    studyfile.build_study; None where the store has no study of that name. A study whose
    runs kept none (an older asl-sweep's) is one line saying to give its YAML."""
    record = load_record(storage, study)
    if record is None or record.user_attrs.get(SummaryKey.KIND) != STUDY_RECORD:
        return None  # a stage's Optuna study, or another program's
    keys = read(record)
    if RecordKey.SETTINGS not in keys:
        raise ConfigError(f"{study}: no such study file; study {study} is recorded in this "
                          "store, but its runs kept no settings (an asl-sweep before they "
                          "did): give its YAML, with the --set it ran with")
    return keys[RecordKey.SETTINGS]


def _read_here(ran: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The data settings a study ran with, its photo folder where this command has it: a
    folder is a place, not the data (a worker's node-local copy, photos moved since), and
    the files' digest (names and contents) is what `check_digest` holds to."""
    if ran.get("root") and given.get("root"):
        return {**ran, "root": given["root"]}
    return ran


def _is_a_stage(record: optuna.Study, keys: dict[str, Any]) -> bool:
    """Whether the Optuna study of a study's name (its keys just read) is a stage of another
    study (a dotted name, `cnn.augmentation`, is stage augmentation of study cnn): a record
    has no trials and no stage keys."""
    return (StageKey.CARRIED in keys or StageKey.UID in keys
            or bool(record.get_trials(deepcopy=False)))


def started(storage, cfg: StudyConfig) -> bool:
    """Whether any stage of the study has begun (its Optuna study exists)."""
    return bool(_stage_studies(storage, cfg))


def check_digest(record: optuna.Study, cfg: StudyConfig, digest: str,
                 keys: dict[str, Any] | None = None, storage=None, log=print) -> None:
    """The files must be the ones the study first ran on (stored on the first run). `keys`:
    the record's, where the caller has just read them. Given the `storage`, a study none of
    whose trials has finished or is training binds to the files as they are now (a photo
    folder tidied after a `train` or an interrupted first trial), as `bind` does for its data
    settings; a worker whose copy of the files differs from a training worker's is refused."""
    stored = (read(record) if keys is None else keys).get(RecordKey.DIGEST)
    if stored == digest:
        return
    if stored is not None and storage is not None and not _anything_begun(storage, cfg):
        log(f"study {cfg.study}: no trial has finished yet, so it binds to the images in "
            f"{cfg.data.root or 'the built-in set'} as they are now (they changed since it "
            "first read them)")
    elif stored is not None:
        raise StoreError(f"study {cfg.study}: the images in {cfg.data.root or 'the built-in set'} "
                         "changed since the study ran (their names or contents differ from the "
                         "ones it recorded); give the folder it ran on, restore them, or start "
                         "a new study with --set study=NEW")
    write(record, RecordKey.DIGEST, digest)


def stored_data(storage, cfg: StudyConfig, explicit: set[str]) -> DataConfig:
    """For the commands that read a study back: the data it ran with. A value the user gave
    explicitly (--data, --set data.*) must agree with the stored one."""
    record = load_record(storage, cfg.study)
    stored = read(record) if record is not None else {}
    if RecordKey.DATA not in stored:
        raise StoreError(f"study {cfg.study}: nothing recorded yet; run it first (asl-sweep run)")
    ran, given = stored[RecordKey.DATA], _stored_form(cfg.data)
    if "data.root" in explicit:  # photos moved since: read where they are (open_data
        ran = _read_here(ran, given)  # checks their digest against the stored one)
    difference = _first_difference(ran, given, explicit)
    if difference:
        raise StoreError(f"study {cfg.study}: {difference}; without --data or --set data.* "
                         "the study's own data is used, or start a new study with --set "
                         "study=NEW")
    data = DataConfig.model_validate(ran)
    if data.root is not None and not data.root.is_dir() and "data.root" not in explicit:
        raise StoreError(f"study {cfg.study} ran on the images in {data.root}, which is not a "
                         "folder now: pass --data with the folder they are in now (the same "
                         "files: their names and contents are checked)")
    return data


def stored_digest(storage, study: str) -> str | None:
    record = load_record(storage, study)
    return read(record).get(RecordKey.DIGEST) if record is not None else None


def final_result(storage, study: str) -> dict | None:
    record = load_record(storage, study)
    return read(record).get(RecordKey.FINAL) if record is not None else None


def save_final(record: optuna.Study, final: dict) -> None:
    write(record, RecordKey.FINAL, final)
    record.set_user_attr(SummaryKey.TEST_ACC, f"{final['mean']:.3f} +- {final['std']:.3f}")
