"""What the terminal shows while a study runs (search/progress.py)."""

from datetime import datetime, timedelta

import optuna
from optuna.trial import TrialState, create_trial

from asl_sweep.search.progress import StageProgress, final_model_lines
from asl_sweep.search.state import TrialOutcome
from asl_sweep.settings.spec import StudyConfig


def _cfg() -> StudyConfig:
    return StudyConfig.model_validate({"study": "s", "stages": [
        {"name": "a", "trials": 2, "confirm": None, "space": {"lr": [1e-3]}},
        {"name": "b", "trials": 2, "confirm": None, "space": {"lr": [1e-3]}}]})


def _done(number: int, seconds: float, **attrs) -> optuna.trial.FrozenTrial:
    start = datetime(2026, 1, 1)
    t = create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs=attrs)
    t.number, t.datetime_start = number, start
    t.datetime_complete = start + timedelta(seconds=seconds)
    return t


def test_time_left_is_unknown_until_a_trial_has_trained_here():
    """Issue 34: 'about 0s left' after a reused incumbent (it took no time)."""
    lines: list[str] = []
    progress = StageProgress(lines.append, _cfg(), 0)
    study = optuna.create_study()
    reused = _done(0, 0.0, role="incumbent", outcome=TrialOutcome(
        {}, {}, 0, reused_from="stage x, trial 3").stored())
    study.add_trial(reused)
    progress.finished(reused.number, study.get_trials())
    assert "time left known after the first training" in lines[-1], lines
    assert "0s left" not in lines[-1]
    trained = _done(1, 12.0, role="search")
    study.add_trial(trained)
    progress.finished(trained.number, study.get_trials())
    assert "about 12s left, about 48s in the study" in lines[-1], lines  # 1 + 3 planned


def test_the_final_model_lines_name_what_is_exported_and_every_candidate():
    entry = {"mean": 0.9, "ci": [0.8, 0.95], "members": [0, 5]}
    final = {"export_trial": 0, "best_repeat": {"trial": 0, "accuracy": 0.85},
             "ensemble": entry}
    assert final_model_lines(final, "ensemble")[-1] == (
        "exported model: the ensemble (final_model: ensemble, fixed before the test split "
        "was read)")
    # final_model: refit, set after the run scored: nothing to export until a rerun
    assert "none yet" in final_model_lines(final, "refit")[-1]
    refit = entry | {"mean": 0.97, "members_mean": 0.96, "members_std": 0.01,
                     "by_person": [{"person": "s91", "accuracy": 0.67},
                                   {"person": "s115", "accuracy": 0.89}]}
    lines = final_model_lines(final | {"refit": refit}, "refit")
    assert lines[1] == ("refit on every non-test person (2 models, probabilities averaged): "
                        "0.970 (95% CI 0.800-0.950; one by one 0.960 +- 0.010); its worst "
                        "test people: s91 0.67, s115 0.89")
    assert lines[-1].startswith("exported model: the refit (final_model: refit")
    assert final_model_lines(final, "best_repeat")[-1].startswith(
        "exported model: the best repeat by validation (trial 0) (final_model: best_repeat")
