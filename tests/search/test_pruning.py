"""Every pruner a stage can name, on real training: the incumbent pruner stops a search
trial behind the incumbent's curve by more than its noise, saying what it was compared with,
and lets one level with it train to the end; median, halving and hyperband stop a hopeless
trial among others. Without a pruner (`none`) every trial trains every epoch."""

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from asl_sweep.cli import main
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.pruning import IncumbentPruner
from asl_sweep.search.state import Role, TrialKey


def _run(write_study, tmp_path, pruner: str, rates=(1e-2, 1e-7)) -> list:
    path = write_study({"data": {"synthetic": {"per_class": 30}},
                        "base": {"epochs": 12, "hidden": [64], "lr": 1e-2},
                        "stages": [{"name": "search", "trials": len(rates), "sampler": "grid",
                                    "pruner": pruner, "confirm": None,
                                    # the incumbent's own rate, and ones that cannot learn
                                    "space": {"lr": list(rates)}}]})
    home = tmp_path / pruner
    assert main(["run", str(path), "--home", str(home)]) == 0
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    return sorted(study.trials, key=lambda t: t.number)


@pytest.mark.slow
def test_a_trial_behind_the_incumbent_stops_early_and_one_level_with_it_does_not(
        write_study, tmp_path):
    trials = _run(write_study, tmp_path, "incumbent")
    by_lr = {t.params.get("lr"): t for t in trials if t.user_attrs[TrialKey.ROLE] == "search"}
    hopeless, level = by_lr[1e-7], by_lr[1e-2]
    assert hopeless.state == TrialState.PRUNED
    assert max(hopeless.intermediate_values) < 12  # stopped before the last epoch
    assert hopeless.user_attrs[TrialKey.PRUNED_BY].startswith("behind the incumbent (trial 0)")
    assert level.state == TrialState.COMPLETE and max(level.intermediate_values) == 12
    # Without it (pruner: none) the hopeless trial trains every epoch: the test can fail.
    plain = _run(write_study, tmp_path, "none")
    assert all(t.state == TrialState.COMPLETE for t in plain)


@pytest.mark.slow
def test_optunas_pruners_stop_a_hopeless_trial_among_others(write_study, tmp_path):
    rates = (1e-2, 5e-3, 3e-3, 1e-7, 2e-7, 3e-7)  # three that learn, three that cannot
    for pruner in ("median", "halving", "hyperband"):
        trials = _run(write_study, tmp_path, pruner, rates)
        hopeless = [t for t in trials if t.params.get("lr", 1.0) < 1e-6]
        pruned = [t for t in hopeless if t.state == TrialState.PRUNED]
        assert pruned and all(max(t.intermediate_values) < 12 for t in pruned), pruner
        # halving keeps the top third at each rung: some that learn may stop too, not all
        assert any(t.state == TrialState.COMPLETE for t in trials
                   if t.params.get("lr", 0) >= 1e-3), pruner
    plain = _run(write_study, tmp_path, "none", rates)
    assert all(t.state == TrialState.COMPLETE for t in plain)


def _trial(number: int, curve: dict[int, float], role: Role, **attrs) -> FrozenTrial:
    return FrozenTrial(number=number, state=TrialState.COMPLETE, value=curve[max(curve)],
                       datetime_start=None, datetime_complete=None, params={},
                       distributions={}, user_attrs={TrialKey.ROLE: role, **attrs},
                       system_attrs={}, intermediate_values=curve, trial_id=number)


def test_the_margin_is_the_incumbents_own_spread_with_a_floor():
    incumbent = _trial(0, {1: 0.50, 2: 0.60, 3: 0.70}, Role.INCUMBENT)
    # One curve: the noise of its epoch-to-epoch changes (here steady: the floor holds).
    assert IncumbentPruner.spread([incumbent], incumbent, 3) == pytest.approx(0.0)
    # Repeats of the incumbent at that epoch: their spread.
    repeats = [_trial(n, {3: v}, Role.CONFIRM, **{TrialKey.CONFIRMS: 0})
               for n, v in ((5, 0.60), (6, 0.80))]
    spread = IncumbentPruner.spread([incumbent, *repeats], incumbent, 3)
    assert spread == pytest.approx(0.1)
