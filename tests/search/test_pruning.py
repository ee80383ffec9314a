"""Every pruner a stage can name, on real training: the incumbent pruner stops a search
trial behind the incumbent's curve by more than its noise, saying what it was compared with,
and lets one level with it, or one that starts slower and closes the gap, train to the end;
median, halving and hyperband stop a hopeless trial among others; `best` stops one behind
the stage's best trial so far. Without a pruner (`none`) every trial trains every epoch."""

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
def test_a_slow_starter_closing_the_gap_trains_on_where_one_epochs_gap_would_stop_it(
        write_study, tmp_path):
    """A rate warmed up over half the epochs learns slower early and ends ahead of the
    incumbent (no warmup): behind by more than the margin at its first epochs, it trains on
    under the shipped rule (the pace and the trend; the trend alone spares it too, its gap
    shrinks). The rule before (the gap at one epoch, the same epoch) stops it at epoch 1 on
    the same recorded curves: the test can fail."""
    path = write_study({"data": {"synthetic": {"per_class": 60, "seed": 0, "signers": 4}},
                        "base": {"epochs": 12, "hidden": [64], "lr": 3e-3, "optimizer": "adam",
                                 "schedule": "constant", "warmup_epochs": 0},
                        "stages": [{"name": "search", "trials": 1, "sampler": "grid",
                                    "pruner": "incumbent", "confirm": None,
                                    "space": {"warmup_epochs": [6]}}]})
    home = tmp_path / "home"
    assert main(["run", str(path), "--home", str(home)]) == 0
    study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
    incumbent, slow = sorted(study.trials, key=lambda t: t.number)
    assert slow.params == {"warmup_epochs": 6}
    assert slow.state == TrialState.COMPLETE and max(slow.intermediate_values) == 12
    assert slow.value > incumbent.value  # it ends ahead: stopping it would lose it

    curve = slow.intermediate_values
    assert _stopped_at(IncumbentPruner("maximize", warmup=1, window=0), study, curve,
                       slow.number) == 1
    assert _stopped_at(IncumbentPruner("maximize", warmup=1, window=2), study, curve,
                       slow.number) is None


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


@pytest.mark.slow
def test_best_stops_a_trial_behind_the_stages_best_that_the_incumbent_pruner_lets_train(
        write_study, tmp_path):
    """`best`: a search trial that beats the incumbent but trails the stage's best trial so
    far (here the seed trial) stops, saying which trial it was compared with; under
    `incumbent` the same trial trains to its last epoch (the test can fail)."""
    def run(pruner):
        path = write_study({"data": {"synthetic": {"per_class": 30}},
                            "base": {"epochs": 12, "hidden": [64], "lr": 1e-7, "optimizer": "adam"},
                            "stages": [{"name": "search", "trials": 3, "sampler": "grid",
                                        "pruner": pruner, "confirm": None,
                                        "seed_trials": [{"lr": 3e-3}],
                                        "space": {"lr": [3e-3, 2e-4]}}]})
        home = tmp_path / pruner
        assert main(["run", str(path), "--home", str(home)]) == 0
        study = optuna.load_study(study_name="tiny.search", storage=Workspace.at(home).storage)
        return {t.params["lr"] if t.user_attrs[TrialKey.ROLE] == "search"
                else t.user_attrs[TrialKey.ROLE]: t for t in study.trials}

    slow = 2e-4  # learns (above the 1e-7 incumbent) but trails the seed trial's 3e-3
    trails = run("best")[slow]
    assert trails.state == TrialState.PRUNED and max(trails.intermediate_values) < 12
    assert trails.user_attrs[TrialKey.PRUNED_BY].startswith(
        "behind trial 1, the stage's best so far")
    kept = run("incumbent")
    assert kept[slow].state == TrialState.COMPLETE and max(kept[slow].intermediate_values) == 12
    assert kept[slow].value > kept["incumbent"].value


def test_best_compares_with_the_top_th_best_paired_trial_never_one_the_incumbent_beats():
    incumbent = _trial(0, {1: 0.5, 2: 0.6}, Role.INCUMBENT)
    seed = _trial(1, {1: 0.6, 2: 0.8}, Role.SEED)
    search = _trial(2, {1: 0.6, 2: 0.7}, Role.SEARCH)
    later = _trial(3, {1: 0.7}, Role.SEARCH)  # finished before epoch 2: not at that epoch
    repeat = _trial(4, {1: 0.9, 2: 0.9}, Role.CONFIRM,  # another fold and seed: not paired
                    **{TrialKey.CONFIRMS: 1, TrialKey.REPEAT: 1})
    trials = [incumbent, seed, search, later, repeat]

    def leader(top, step=2):
        return IncumbentPruner("maximize", against="best", top=top).leader(
            trials, incumbent, step).number

    assert [leader(1), leader(2), leader(3)] == [1, 2, 0]  # a race of 3 would take the incumbent
    assert leader(1, step=1) == 1  # ranked by final value: 0.8 before trial 3's 0.7


def test_the_pace_spares_a_trial_that_takes_off_later_and_the_trend_alone_does_not():
    """Both curves flat at chance, then the incumbent takes off at epoch 5 and the trial at
    epoch 7, rising as fast and ending level: the gap grows from nothing, so the trend alone
    (pace 1) stops it at the takeoff; compared with the incumbent at two thirds of its
    epochs it is never behind. One that never takes off is stopped either way."""
    rise = [0.1, 0.1, 0.1, 0.1, 0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    incumbent = {e: v for e, v in enumerate(rise, start=1)}
    late = {e: v for e, v in enumerate([0.1, 0.1] + rise[:-2], start=1)}
    flat = {e: 0.1 for e in incumbent}
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        value=0.9, intermediate_values=incumbent, user_attrs={TrialKey.ROLE: Role.INCUMBENT}))

    def pruner(pace):
        return IncumbentPruner("maximize", warmup=1, window=2, pace=pace)

    assert _stopped_at(pruner(1.0), study, late) == 6  # behind 0.4 at its epoch 6, growing
    assert _stopped_at(pruner(2 / 3), study, late) is None
    paced = pruner(2 / 3)
    assert _stopped_at(paced, study, flat) == 8
    assert "0.100 at epoch 8 vs 0.500 at its epoch 6 (0.67 of the trial's epochs)" in paced.reason


def _stopped_at(pruner: IncumbentPruner, study: optuna.Study, curve: dict[int, float],
                number: int = 1) -> int | None:
    """The first epoch at which `pruner` stops search trial `number` reporting `curve` one
    epoch at a time, or None where it trains to the end."""
    for epoch in sorted(curve):
        so_far = {e: v for e, v in curve.items() if e <= epoch}
        if pruner.prune(study, _trial(number, so_far, Role.SEARCH)):
            return epoch
    return None


def test_the_replay_of_recorded_curves_runs_every_pruner_a_stage_can_name():
    """benchmarks/pruning_replay.py, the evidence for the shipped pruner (its pruned share
    and false prunes), on the committed curves in their recorded order: it stopped running
    when a stage with nothing to search was refused (its stages named no space), and nothing
    said so for two days. The shipped `best` prunes epochs and never the adopted trial."""
    import json

    from benchmarks.pruning_replay import (
        DATA,
        DEFAULT_SOURCES,
        PRUNERS,
        adopted,
        replay,
        stages_of,
    )

    stages = [s for source in DEFAULT_SOURCES
              for s in stages_of(json.loads((DATA / f"{source}.json").read_text()), source)]
    assert len(stages) >= 5
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for pruner in PRUNERS:
        results = [replay(stage, pruner, stage["trials"]) for stage in stages]
        assert all(r["full"] > 0 for r in results), pruner
    best = [(stage, replay(stage, "best", stage["trials"])) for stage in stages]
    assert sum(r["trained"] for _, r in best) < sum(r["full"] for _, r in best)
    assert not [stage["stage"] for stage, r in best if adopted(stage) in r["pruned"]]
