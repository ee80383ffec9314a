"""Reading a finished study back needs neither torch nor mlflow."""

import json
import subprocess
import sys

import pytest

from asl_sweep.cli import main

STATUS_ALONE = """
import json, sys
from asl_sweep.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "mlflow"})
print(json.dumps({"code": code, "heavy": heavy}))
"""


@pytest.mark.slow
def test_status_of_a_finished_study_imports_no_torch(write_study, tmp_path):
    path = write_study()
    home = str(tmp_path / "mlruns")
    assert main(["run", str(path), "--home", home, "--trials", "2"]) == 0
    proc = subprocess.run([sys.executable, "-c", STATUS_ALONE, "status", str(path), "--home",
                           home], capture_output=True, text=True, timeout=60)
    assert "[1] search: finished" in proc.stdout, proc.stderr
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 0, "heavy": []}


def test_a_trial_whose_worker_on_another_machine_stopped_beating_reads_as_lost(write_study,
                                                                               tmp_path):
    """A worker on another machine lost (a power cut): `status` said its trial was running
    until some run or worker looked (only a dead process of this machine was seen at once).
    A trial silent for the grace period reads as lost, in the stage and in its repeats."""
    import optuna
    from sqlalchemy import text

    from asl_sweep.results.readback import read_stages
    from asl_sweep.runtime.workspace import Workspace
    from asl_sweep.search import gone_here, optuna_storage
    from asl_sweep.search.optuna_api import engine_of, trial_id_of
    from asl_sweep.search.state import StageKey, TrialKey, write
    from asl_sweep.search.store import REPEATS_SUFFIX, stage_study_name
    from asl_sweep.settings.studyfile import load_study

    cfg = load_study(write_study())
    ws = Workspace.at(tmp_path / "home")
    ws.prepare()
    storage = optuna_storage(ws.storage)
    name = stage_study_name(cfg, cfg.stages[0])
    stage = optuna.create_study(study_name=name, storage=storage)
    repeats = optuna.create_study(study_name=name + REPEATS_SUFFIX, storage=storage)
    write(stage, StageKey.PLAN, {"first_repeat": 2})
    taken = [stage.ask(), stage.ask(), repeats.ask()]
    for trial in taken:
        trial.set_user_attr(TrialKey.WORKER, "another-machine:4242")
        storage.record_heartbeat(trial_id_of(trial))
    (view,) = read_stages(cfg, ws)
    assert view.by_state(gone_here) == {"running": 3}
    with engine_of(storage).begin() as db:
        db.execute(text("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-5 minutes') "
                        "WHERE trial_id != :id"), {"id": trial_id_of(taken[1])})
    (view,) = read_stages(cfg, ws)
    assert view.silent == {0, 2}  # the repeat is the stage's trial 2
    assert view.by_state(gone_here) == {
        "running": 1, "lost with their workers (the next run queues them again)": 2}
    assert [t.state.name for t in stage.get_trials()] == ["RUNNING", "RUNNING"]  # failed none


def test_status_says_the_final_score_is_in_progress_while_a_worker_does_it(write_study,
                                                                           tmp_path):
    """cnn.yaml's refits train for minutes after its last stage decides: `status` showed
    every stage finished and no final score, as if nothing were running. While a live
    worker holds the final score's claim it names that worker, and nothing once released."""
    import optuna

    from asl_sweep.results.leaderboard import final_line
    from asl_sweep.runtime.workspace import Workspace
    from asl_sweep.search import optuna_storage
    from asl_sweep.search.state import FINAL_CLAIM, does_job, holding, worker_id
    from asl_sweep.search.store import stage_study_name
    from asl_sweep.settings.studyfile import load_study

    cfg = load_study(write_study(), ["final_model=refit"])
    ws = Workspace.at(tmp_path / "home")
    ws.prepare()
    storage = optuna_storage(ws.storage)
    assert final_line(cfg, ws) is None  # nothing stored, nothing claimed
    last = optuna.create_study(study_name=stage_study_name(cfg, cfg.stages[-1]),
                               storage=storage)
    record = optuna.create_study(study_name=cfg.study, storage=storage)
    assert does_job(last, FINAL_CLAIM, "final", keys_of=record)
    with holding(last, FINAL_CLAIM):
        line = final_line(cfg, ws)
        assert line.startswith(f"final test score: in progress, by {worker_id()}")
        assert "trained again on every non-test person first" in line
    assert final_line(cfg, ws) is None  # released: not in progress


def test_export_of_a_study_whose_first_stage_is_running_says_to_let_the_run_finish(
        write_study, tmp_path, capsys):
    """`export` beside a running study said "no finished stage yet; run it first", as if it
    had never run. Now it names the stage and how far it is."""
    import optuna

    from asl_sweep.runtime.workspace import Workspace
    from asl_sweep.search import optuna_storage
    from asl_sweep.search.record import bind
    from asl_sweep.search.store import stage_study_name
    from asl_sweep.settings.studyfile import load_study

    path = write_study()
    cfg = load_study(path)
    home = tmp_path / "home"
    ws = Workspace.at(home)
    ws.prepare()
    storage = optuna_storage(ws.storage)
    bind(storage, cfg, log=lambda line: None)  # the study's record, as a run's start makes it
    stage = optuna.create_study(study_name=stage_study_name(cfg, cfg.stages[0]),
                                storage=storage)
    stage.tell(stage.ask(), 0.5)
    stage.ask()
    for command in ("export", "evaluate"):
        assert main([command, str(path), "--home", str(home)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: study {cfg.study}: no stage has decided yet (stage {cfg.stages[0].name}: "
            "1 of the 2 trials it has started have finished); let the run finish "
            "(asl-sweep status shows how far it is), or run it again if it was stopped")
