"""Winner selection as pure functions over FrozenTrials built with optuna.trial.create_trial."""

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from asl_sweep.runtime.errors import GateNotReached
from asl_sweep.search.selection import counts_toward_budget, pick_winner, reached_target
from asl_sweep.settings.spec import StageConfig


def trial(number, value, state=TrialState.COMPLETE, train_acc=0.5, val_acc=None, params=10,
          **attrs):
    t = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                     params={"lr": 0.001 * (number + 1)},
                     distributions={"lr": FloatDistribution(1e-4, 1.0)},
                     user_attrs={"metrics": {"train_acc": train_acc,
                                             "val_acc": value if val_acc is None else val_acc,
                                             "val_loss": 1.0, "train_loss": 1.0},
                                 "num_params": params, **attrs})
    t.number = number
    return t


def stage(**kw):
    return StageConfig(name="s", **{"space": {"lr": [0.1]}, **kw})


def test_without_a_target_the_best_value_wins_and_ties_go_to_the_earlier_trial():
    trials = [trial(0, 0.4), trial(1, 0.7), trial(2, 0.7), trial(3, 0.9, TrialState.PRUNED)]
    result = pick_winner(trials, stage())
    assert (result.trial, result.value, result.status) == (1, 0.7, "best")
    assert result.params == {"lr": 0.002}


def test_direction_follows_a_loss_metric():
    trials = [trial(0, 0.9), trial(1, 0.3), trial(2, 0.5)]
    assert pick_winner(trials, stage(metric="val_loss")).trial == 1
    assert pick_winner(trials, stage(metric="val_loss", direction="maximize")).trial == 0


def test_a_reached_target_picks_by_the_other_accuracy_then_fewer_parameters():
    gate = stage(metric="train_acc", target=1.0)
    trials = [trial(0, 1.0, val_acc=0.3, params=50), trial(1, 0.9, val_acc=0.9),
              trial(2, 1.0, val_acc=0.4, params=90), trial(3, 1.0, val_acc=0.4, params=20)]
    for t in trials:
        t.user_attrs["metrics"]["train_acc"] = t.value
    result = pick_winner(trials, gate)
    assert (result.trial, result.status) == (3, "target reached")
    assert reached_target(trials, gate) and not reached_target(trials[1:2], gate)


def test_a_missed_target_stops_or_continues_as_the_stage_says():
    trials = [trial(0, 0.6), trial(1, 0.8)]
    with pytest.raises(GateNotReached, match=r"no trial reached train_acc >= 1.0 .*trial 1.*on_fail"):
        pick_winner(trials, stage(metric="train_acc", target=1.0))
    result = pick_winner(trials, stage(metric="train_acc", target=1.0, on_fail="continue"))
    assert (result.trial, result.status) == (1, "target missed")
    minimize = stage(metric="val_loss", target=0.1, on_fail="continue")
    assert pick_winner(trials, minimize).trial == 0


def test_no_complete_trial_is_no_winner():
    with pytest.raises(GateNotReached, match="no trial completed"):
        pick_winner([trial(0, None, TrialState.FAIL)], stage())


@pytest.mark.parametrize("state, failure, counts", [
    (TrialState.COMPLETE, None, True), (TrialState.PRUNED, None, True),
    (TrialState.FAIL, "error", True), (TrialState.FAIL, "interrupted", False),
    (TrialState.FAIL, "crashed", False), (TrialState.FAIL, None, False),
    (TrialState.FAIL, "surplus", False),
])
def test_what_counts_toward_the_budget(state, failure, counts):
    attrs = {"failure": failure} if failure else {}
    assert counts_toward_budget(trial(0, 0.5, state, **attrs)) is counts


def test_progress_counts_a_retried_trial_once():
    from asl_sweep.search.selection import counts_as_done

    stopped = trial(1, 0.0, TrialState.FAIL, failure="interrupted", role="search")
    dead = trial(2, 0.0, TrialState.FAIL, role="search")  # its worker died: no word on why
    own = trial(3, 0.0, TrialState.FAIL, failure="error", role="search")
    surplus = trial(4, 0.0, TrialState.FAIL, failure="surplus", role="search")
    rerun = trial(5, 0.5, role="search")
    confirm = trial(6, 0.5, role="confirm")
    assert [counts_as_done(t) for t in (stopped, dead, own, surplus, rerun, confirm)] == [
        False, False, True, False, True, True]


def test_a_mean_just_over_the_needed_gain_never_prints_as_a_tie():
    from asl_sweep.search.selection import decide

    incumbent = [trial(0, 0.50, role="incumbent"),
                 trial(2, 0.50, role="confirm", confirms=0, repeat=1)]
    candidate = [trial(1, 0.5252, role="search"),
                 trial(3, 0.5250, role="confirm", confirms=1, repeat=1)]
    result = decide(incumbent + candidate, stage(), 0, [1], min_gain=0.0248)
    assert result.status == "adopted"
    assert "(needed > 2.48 pt)" in result.decision and "+2.51" in result.decision


def test_a_race_dropped_as_futile_says_so_and_keeps_the_incumbent():
    """A near-tie: after two rounds its upper bound is above 0 (not clearly worse), but at
    its trend the sixth round would not show it better; it is dropped there (the replay
    stops at that look), the stage keeps the incumbent and its line names the rule."""
    from asl_sweep.search.selection import decide_race, race_verdict

    values = {1: (0.600, 0.610), 2: (0.620, 0.612), 3: (0.580, 0.584)}  # repeat: inc, cand
    trials = [trial(0, 0.60, role="incumbent"), trial(1, 0.65, role="search")]
    n = 2
    for r, (inc, cand) in values.items():
        trials.append(trial(n, inc, role="confirm", confirms=0, repeat=r, incumbent=True))
        trials.append(trial(n + 1, cand, role="confirm", confirms=1, repeat=r))
        n += 2
    s = stage(confirm={"top": 1})
    verdict = race_verdict(trials, s, 0, [1], rounds=3)
    assert verdict.done and verdict.adopt is None and verdict.dropped == {1: 2}
    assert verdict.bounds[1].plain_upper > 0 and verdict.bounds[1].power < 0.05
    result = decide_race(trials, s, 0, [1], verdict)
    assert result.status == "kept incumbent"
    assert "futile: at this trend max_repeats would not show it better" in result.decision
    assert "< futility 5%" in result.decision
    # Without the rule the same race goes on.
    assert not race_verdict(trials, stage(confirm={"top": 1, "futility": 0}), 0, [1],
                            rounds=3).done


@pytest.mark.parametrize("step, adopted", [(None, 1), (1 / 24, None)])
def test_repeats_that_agree_to_the_image_are_not_proof_of_a_gain(step, adopted):
    """On 24 validation images two repeats each one image better than the incumbent have a
    spread of 0, which made the gain certain at the first look (adopted; a trial stored
    without its step still is). Each trial records the least change one image makes (1/24):
    the spread carries the rounding to it, and one image twice proves nothing."""
    from asl_sweep.search.selection import race_verdict

    extra = {} if step is None else {"step": step}
    trials = [trial(0, 0.5, role="incumbent", **extra), trial(1, 0.6, role="search", **extra)]
    for r, n in ((1, 2), (2, 4)):
        trials.append(trial(n, 0.5, role="confirm", confirms=0, repeat=r, incumbent=True,
                            **extra))
        trials.append(trial(n + 1, 0.5 + 1 / 24, role="confirm", confirms=1, repeat=r, **extra))
    verdict = race_verdict(trials, stage(confirm={"top": 1}), 0, [1], rounds=2)
    assert verdict.adopt == adopted
    assert verdict.bounds[1].sd == pytest.approx((step or 0.0) / 12 ** 0.5)


@pytest.mark.parametrize("crossfit, adopted", [(False, 1), (True, None)])
def test_a_race_compares_each_repeat_where_its_epoch_was_not_chosen(crossfit, adopted):
    """A trial's value is its best epoch on the validation images that chose it: a
    candidate whose curve wavers more tops it higher, +3 pt a repeat here, and was adopted
    on that (a trial stored without `crossfit` still is). Cross-fitted (the epoch one half of
    the validation people chose, scored on the other half) it is level with the incumbent:
    the race compares those, and says so."""
    from asl_sweep.search.selection import CROSSFIT_WORDS, decide_race, race_verdict
    from asl_sweep.training.train import PARTITIONS

    def extra(level):
        return {"crossfit": level} if crossfit else {}

    trials = [trial(0, 0.70, role="incumbent", **extra(0.68)),
              trial(1, 0.74, role="search", **extra(0.68))]
    for r, n, lift in ((1, 2, 0.030), (2, 4, 0.032), (3, 6, 0.029)):
        trials.append(trial(n, 0.70, role="confirm", confirms=0, repeat=r, incumbent=True,
                            **extra(0.68 + 0.001 * r)))
        trials.append(trial(n + 1, 0.70 + lift, role="confirm", confirms=1, repeat=r,
                            **extra(0.68 - 0.001 * r)))
    rule = stage(confirm={"top": 1, "max_repeats": 3})
    verdict = race_verdict(trials, rule, 0, [1], rounds=3)
    assert verdict.adopt == adopted
    line = decide_race(trials, rule, 0, [1], verdict).decision
    assert (CROSSFIT_WORDS in line) == crossfit
    assert f"over {PARTITIONS} splits" in CROSSFIT_WORDS


def test_a_difference_that_rounds_to_zero_has_no_minus_sign():
    """Issue 34: a decision printed '-0.0 pt'."""
    from asl_sweep.search.selection import signed

    assert [signed(x) for x in (-0.04, -0.0, 0.0, 0.04)] == ["+0.0"] * 4
    assert (signed(3.26), signed(-2.5), signed(-0.004, 2)) == ("+3.3", "-2.5", "+0.00")


def test_a_race_line_speaks_in_points_for_person_metrics_and_bounds_what_an_accuracy_can_lose():
    from asl_sweep.search.racing import Bounds, Verdict
    from asl_sweep.search.selection import race_line
    from asl_sweep.settings.spec import StageConfig

    stage = StageConfig(name="s", metric="val_person_q25", space={"lr": [0.1]})
    verdict = Verdict(adopt=None, alive=[4, 5], bounds={
        4: Bounds(n=2, mean=0.34, sd=0.3, lower=-2.371, upper=3.0, power=1.0),
        5: Bounds(n=3, mean=0.02, sd=0.01, lower=-0.004, upper=0.05, power=0.5)})
    line = race_line(stage, verdict)
    # Was "trial 4 +34.0 pt, lower bound -237.1 pt": no accuracy loses 237 points.
    assert "trial 4 +34.0 pt, lower bound below -100 pt (too few rounds to bound it yet)" in line
    assert "trial 5 +2.0 pt, lower bound -0.4 pt" in line
