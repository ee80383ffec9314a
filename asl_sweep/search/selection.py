"""Which trials count and what a stage adopts: pure functions over Optuna FrozenTrials, no
I/O, so every rule can be tested with optuna.trial.create_trial alone.

The evidence rule. Every stage trains the configuration it received (the incumbent) as its
first trial. With confirmation, the top candidates and the incumbent are trained again on
fresh, paired (seed, fold) repeats and raced (racing.py): a candidate is adopted once a
one-sided paired t interval on the fresh repeats puts it above `min_gain`, dropped once it
puts it below, and the stage keeps the incumbent when no candidate is left or max_repeats is
reached; the search trial that put a candidate forward is shown, never counted. The rule
before racing (`confirm: {repeats: R}`: R-1 fresh repeats plus the search trial, adopt over
one standard error and at least 0.5 points) is `decide`. Gate stages (with a target) keep
their own rule: the trial that reached the target."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from asl_sweep.runtime.errors import GateNotReached
from asl_sweep.search.racing import TEST_NAME, RaceRule, Verdict, judge
from asl_sweep.search.space import decode_params
from asl_sweep.search.state import SEARCH_ROLES, Failure, Role, TrialKey, outcome_of
from asl_sweep.settings.spec import ConfirmConfig, StageConfig

# The metric that breaks ties between trials that reached a stage's target.
SECONDARY = {"train_acc": "val_acc", "val_acc": "train_acc",
             "val_loss": "val_acc", "train_loss": "val_acc", "val_person_mean": "val_acc",
             "val_person_q25": "val_person_mean", "val_person_worst": "val_person_mean"}
MIN_GAIN_FLOOR = 0.005  # half an accuracy point


@dataclass
class StageResult:
    stage: str
    trial: int  # the trial whose settings the stage carries on (the incumbent's when kept)
    value: float  # the stage metric: the mean over paired repeats when confirmed
    params: dict[str, Any]  # the change carried into later stages ({} when kept)
    metrics: dict[str, float]  # that trial's best-epoch metrics
    status: str  # adopted | kept incumbent | best | target reached | target missed
    run_id: str = ""
    decision: str = ""  # one line: what was decided, on which evidence
    repeats: list[int] = field(default_factory=list)  # trials of the carried configuration
    evidence: dict[str, Any] = field(default_factory=dict)
    # The overrides of the study's base that rebuild the configuration the stage carries
    # (what it started from, its `fixed` and its change; or the previous family's, when a
    # stage that switched family kept it). None: stored before this was kept.
    config: dict[str, Any] | None = None


def role_of(t: FrozenTrial) -> Role:
    return Role(t.user_attrs.get(TrialKey.ROLE, Role.SEARCH))


def counts_toward_budget(t: FrozenTrial) -> bool:
    if role_of(t) not in SEARCH_ROLES:
        return False  # the incumbent and confirmation repeats are not in `trials`
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    # A trial that failed on its own used its turn; one killed, stopped or stale is retried.
    return t.state == TrialState.FAIL and t.user_attrs.get(TrialKey.FAILURE) == Failure.ERROR


def counts_as_done(t: FrozenTrial) -> bool:
    """Whether a trial of any role used its turn (for progress): finished, not a surplus
    trial, and not one that a fault stopped and the queue runs again."""
    if not t.state.is_finished() or t.user_attrs.get(TrialKey.FAILURE) in (Failure.SURPLUS,
                                                                            Failure.UNUSED):
        return False
    return t.state != TrialState.FAIL or t.user_attrs.get(TrialKey.FAILURE) == Failure.ERROR


def reached_target(trials: list[FrozenTrial], stage: StageConfig) -> bool:
    return any(t.state == TrialState.COMPLETE and stage.reached(t.value) for t in trials)


def _sign(stage: StageConfig) -> int:
    return 1 if stage.direction == "maximize" else -1


def _complete(trials: list[FrozenTrial], roles: tuple[str, ...]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and role_of(t) in roles]


def _result(t: FrozenTrial, stage: StageConfig, status: str, decision: str,
            value: float | None = None, repeats: list[int] | None = None,
            evidence: dict | None = None) -> StageResult:
    params = {} if role_of(t) == Role.INCUMBENT else decode_params(t.params)
    return StageResult(stage=stage.name, trial=t.number,
                       value=float(t.value if value is None else value), params=params,
                       metrics=outcome_of(t).metrics, status=status,
                       run_id=t.user_attrs.get(TrialKey.RUN, ""), decision=decision,
                       repeats=repeats or [t.number], evidence=evidence or {})


def pick_winner(trials: list[FrozenTrial], stage: StageConfig,
                unconfirmed: str = "no confirmation") -> StageResult:
    """Without confirmation (`unconfirmed`: why, for the decision). With a target: among
    trials that reached it, the best by the other metric, then the fewest parameters.
    Without: the best by the stage metric, the earlier trial on a tie. The incumbent is a
    candidate like any other."""
    complete = _complete(trials, (Role.INCUMBENT, *SEARCH_ROLES))
    if not complete:
        raise GateNotReached(f"stage {stage.name}: no trial completed "
                             f"({len(trials)} started); nothing to carry forward")
    sign = _sign(stage)
    if stage.target is not None:
        reached = [t for t in complete if stage.reached(t.value)]
        if reached:
            other = SECONDARY[stage.metric]
            other_sign = -1 if other.endswith("loss") else 1
            winner = min(reached, key=lambda t: (
                -other_sign * outcome_of(t).metrics[other], outcome_of(t).num_params,
                t.number))
            return _result(winner, stage, "target reached",
                           f"trial {winner.number} reached {stage.shown_metric} {winner.value:.4f} "
                           f"(target {stage.target}; {len(reached)} of {len(complete)} did)")
        best = max(complete, key=lambda t: (sign * t.value, -t.number))
        message = (f"stage {stage.name}: no trial reached {stage.shown_metric} "
                   f"{'>=' if sign > 0 else '<='} {stage.target} "
                   f"(best: {best.value:.4f}, trial {best.number})")
        if stage.on_fail == "stop":
            raise GateNotReached(message + "; rerun with more trials (--trials), or set "
                                 f"on_fail: continue in stage {stage.name} (more epochs or "
                                 "another space: a new study, --set study=NEW)")
        return _result(best, stage, "target missed", message.split(": ", 1)[1])
    winner = max(complete, key=lambda t: (sign * t.value, -t.number))
    kept = role_of(winner) == Role.INCUMBENT
    return _result(winner, stage, "best",
                   f"{'kept incumbent' if kept else f'trial {winner.number}'}: best "
                   f"{stage.shown_metric} {winner.value:.4f} ({unconfirmed})")


def is_previous_family(t: FrozenTrial) -> bool:
    """Whether `t` trains the second incumbent of a stage that switches model family (the
    configuration the earlier stages carried, in its own family), or a repeat of it."""
    return bool(t.user_attrs.get(TrialKey.PREVIOUS_FAMILY))


def plan_candidates(trials: list[FrozenTrial], stage: StageConfig, top: int,
                    same_as_incumbent, switching: bool = False) -> list[int]:
    """The `top` best distinct search trials (by value) that differ from the incumbent. In a
    stage that switches family, the incumbent is the previous family's configuration and the
    new family's own starting point is a candidate like its search trials."""
    sign, seen, chosen = _sign(stage), set(), []
    roles = (Role.INCUMBENT, *SEARCH_ROLES) if switching else SEARCH_ROLES
    pool = [t for t in _complete(trials, roles) if not is_previous_family(t)]
    ranked = sorted(pool, key=lambda t: (-sign * t.value, t.number))
    for t in ranked:
        key = tuple(sorted((k, str(v)) for k, v in t.params.items()))
        if key in seen or same_as_incumbent(t):
            continue
        seen.add(key)
        chosen.append(t.number)
        if len(chosen) == top:
            break
    return chosen


def search_gains(trials: list[FrozenTrial], stage: StageConfig, incumbent: int,
                 candidates: list[int]) -> dict[int, float]:
    """Each candidate's search trial against the incumbent's, sign applied: the same fold
    and training seed, so a paired look (confirm.search_gain races only those above 0)."""
    by_number = {t.number: t for t in trials}
    sign = _sign(stage)
    base = by_number[incumbent].value
    return {c: sign * (by_number[c].value - base) for c in candidates}


def compared_value(t: FrozenTrial) -> float:
    """What the repeats of a configuration compare for a finished trial: its best epoch's
    metric chosen on one half of the validation people and scored on the other (the outcome's
    `crossfit`, training.train.crossfit), or its value where it was stored without one (a
    training metric, a mean over several folds, a trial from before it was recorded)."""
    outcome = outcome_of(t)
    if outcome is not None and outcome.crossfit is not None:
        return float(outcome.crossfit)
    return float(t.value)


CROSSFIT_WORDS = ("each repeat at the best epoch of one half of its validation people, scored "
                  "on the other half, over 20 splits in halves")


def _crossfitted(trials: list[FrozenTrial], numbers: list[int]) -> bool:
    """Whether any of these trials' compared values is cross-fitted (compared_value)."""
    by_number = {t.number: t for t in trials}
    return any((o := outcome_of(by_number[n])) is not None and o.crossfit is not None
               for n in numbers if n in by_number)


def repeat_values(trials: list[FrozenTrial], target: int) -> dict[int, tuple[float, int]]:
    """repeat -> (compared value, trial) for the configuration of trial `target`: repeat 0 is
    the trial itself, repeat r the first complete confirmation of it with that repeat."""
    by_number = {t.number: t for t in trials}
    out: dict[int, tuple[float, int]] = {}
    if target in by_number and by_number[target].state == TrialState.COMPLETE:
        out[0] = (compared_value(by_number[target]), target)
    for t in sorted(trials, key=lambda t: t.number):
        if (role_of(t) == Role.CONFIRM and t.state == TrialState.COMPLETE
                and t.user_attrs.get(TrialKey.CONFIRMS) == target):
            out.setdefault(int(t.user_attrs[TrialKey.REPEAT]), (compared_value(t), t.number))
    return out


def _points(stage: StageConfig) -> tuple[float, str]:
    """Accuracies (pooled or over people) in points, losses as they are."""
    return (100.0, " pt") if not stage.metric.endswith("loss") else (1.0, "")


def signed(x: float, digits: int = 1) -> str:
    """A difference with its sign, never "-0.0": what rounds to zero is "+0.0"."""
    return f"{(round(x, digits) or 0.0):+.{digits}f}"


def decide(trials: list[FrozenTrial], stage: StageConfig, incumbent: int,
           candidates: list[int], min_gain: float | None = None) -> StageResult:
    """Adopt the best candidate by its mean paired difference to the incumbent, only if the
    difference exceeds min_gain; otherwise keep the incumbent."""
    by_number = {t.number: t for t in trials}
    base = repeat_values(trials, incumbent)
    if not base:
        raise GateNotReached(f"stage {stage.name}: the incumbent (trial {incumbent}) did not "
                             "complete; nothing to compare with")
    sign, (scale, unit) = _sign(stage), _points(stage)
    evidence: dict[str, Any] = {"incumbent": incumbent, "configs": {}}
    evidence["configs"][str(incumbent)] = _describe(base)
    best: tuple[float, int, dict] | None = None
    for c in candidates:
        values = repeat_values(trials, c)
        pairs = sorted(set(values) & set(base))
        diffs = [sign * (values[r][0] - base[r][0]) for r in pairs]
        stats = _describe(values)
        stats.update(pairs=pairs, diff_mean=statistics.fmean(diffs) if diffs else None,
                     diff_se=(statistics.stdev(diffs) / math.sqrt(len(diffs))
                              if len(diffs) >= 2 else None))
        evidence["configs"][str(c)] = stats
        if diffs and (best is None or stats["diff_mean"] > best[0]):
            best = (stats["diff_mean"], c, stats)
    incumbent_trial = by_number[incumbent]
    kept_repeats = [n for _, n in sorted(base.values(), key=lambda vn: vn[1])]
    kept_value = statistics.fmean(v for v, _ in base.values())
    if best is None:
        return _result(incumbent_trial, stage, "kept incumbent",
                       "kept incumbent: no other configuration completed its repeats",
                       kept_value, kept_repeats, evidence)
    mean, c, stats = best
    n = len(stats["pairs"])
    se = stats["diff_se"]
    floor = MIN_GAIN_FLOOR if unit else 0.0
    threshold = min_gain if min_gain is not None else max(se if se is not None else 0.0, floor)
    evidence.update(best=c, threshold=threshold)
    # Digits enough that a mean and the threshold it is compared with never print alike
    # ("+2.5 (needed > 2.5)" read as a tie).
    digits = next((d for d in (1, 2, 3) if f"{mean * scale:.{d}f}" !=
                   f"{threshold * scale:.{d}f}"), 4)
    spread = (f"{signed(mean * scale, digits)} +- {se * scale:.{digits}f}{unit}"
              if se is not None
              else f"{mean * scale:+.{digits}f}{unit}")
    needed = f"needed > {threshold * scale:.{digits}f}{unit}"
    over = f"over {n} paired repeat{'s' if n != 1 else ''}"
    if n >= 2 and mean > threshold:
        values = repeat_values(trials, c)
        repeats = [values[r][1] for r in sorted(values)]
        return _result(by_number[c], stage, "adopted",
                       f"adopted trial {c}: {spread} {over} ({needed}); "
                       f"{stage.shown_metric} {stats['mean']:.3f} vs "
                       f"incumbent {evidence['configs'][str(incumbent)]['mean']:.3f}",
                       stats["mean"], repeats, evidence)
    return _result(incumbent_trial, stage, "kept incumbent",
                   f"kept incumbent: {spread} {over} for the best candidate (trial {c}), no "
                   f"evidence ({needed})" if n >= 2 else
                   f"kept incumbent: {spread} {over} for trial {c}, too few to decide",
                   kept_value, kept_repeats, evidence)


def _describe(values: dict[int, tuple[float, int]]) -> dict[str, Any]:
    v = [values[r][0] for r in sorted(values)]
    return {"values": {str(r): values[r][0] for r in sorted(values)},
            "trials": {str(r): values[r][1] for r in sorted(values)},
            "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) >= 2 else 0.0}


def race_rule(confirm: ConfirmConfig) -> RaceRule:
    return RaceRule(confirm.min_repeats, confirm.max_repeats, confirm.level,
                    confirm.min_gain or 0.0, confirm.futility)


def _fresh_diffs(trials: list[FrozenTrial], stage: StageConfig, incumbent: int,
                 candidates: list[int]) -> tuple[dict, dict[int, dict], dict[int, list]]:
    """The incumbent's repeats, each candidate's, and each candidate's paired differences
    over the fresh repeats (r >= 1) both have, in repeat order, sign applied."""
    base = repeat_values(trials, incumbent)
    sign = _sign(stage)
    values = {c: repeat_values(trials, c) for c in candidates}
    diffs = {c: [(r, sign * (values[c][r][0] - base[r][0]))
                 for r in sorted(set(values[c]) & set(base)) if r >= 1] for c in candidates}
    return base, values, diffs


def _steps(trials: list[FrozenTrial], base: dict[int, tuple[float, int]],
           values: dict[int, dict[int, tuple[float, int]]]) -> dict[int, dict[int, float]]:
    """Per candidate and fresh repeat r, the least change one validation image makes to the
    metric on that repeat's fold (the coarser of the pair's; 0 for a trial stored without
    it): the step the race's differences are measured in (search/racing.py)."""
    by_number = {t.number: t for t in trials}

    def step(number: int) -> float:
        outcome = outcome_of(by_number[number])
        return (outcome.step or 0.0) if outcome is not None else 0.0

    return {c: {r: max(step(vals[r][1]), step(base[r][1])) for r in vals if r in base and r >= 1}
            for c, vals in values.items()}


def race_verdict(trials: list[FrozenTrial], stage: StageConfig, incumbent: int,
                 candidates: list[int], rounds: int) -> Verdict:
    """The race after `rounds` rounds of fresh repeats, replayed look by look from the
    trials alone (a candidate dropped at an earlier look stays out), so every worker and
    every rerun reaches the same verdict without keeping any state."""
    rule = race_rule(stage.confirm)
    base, values, diffs = _fresh_diffs(trials, stage, incumbent, candidates)
    steps = _steps(trials, base, values)
    dropped: dict[int, int] = {}
    verdict = Verdict(adopt=None, alive=list(candidates), rounds=0)
    for n in range(min(rule.min_repeats, max(rounds, 1)), rounds + 1):
        seen = {c: [d for r, d in diffs[c] if r <= n] for c in candidates}
        step = {c: max((steps[c][r] for r, _ in diffs[c] if r <= n), default=0.0)
                for c in candidates}
        verdict = judge(seen, len(candidates), rule, dropped, rounds=n, steps=step)
        dropped = verdict.dropped
        if verdict.done:
            break
    return verdict


def _bound(lower: float, unit: str) -> str:
    """A lower bound on a gain in accuracy, in points: below -100 pt (a few noisy rounds)
    it bounds nothing an accuracy can lose, and says so."""
    if unit == " pt" and lower < -1.0:
        return "below -100 pt (too few rounds to bound it yet)"
    return f"{signed(lower * (100.0 if unit == ' pt' else 1.0))}{unit}"


def race_line(stage: StageConfig, verdict: Verdict) -> str:
    """Where a race stands after a look, in the metric's own unit: each candidate still in
    it, its mean gain and lower bound, and those dropped."""
    scale, unit = _points(stage)
    alive = "; ".join(f"trial {c} {signed(b.mean * scale)}{unit}, lower bound "
                      f"{_bound(b.lower, unit)}, conditional power {b.power:.0%}"
                      for c, b in verdict.bounds.items() if c in verdict.alive)
    return alive + (f"; dropped {sorted(verdict.dropped)}" if verdict.dropped else "")


def decide_race(trials: list[FrozenTrial], stage: StageConfig, incumbent: int,
                candidates: list[int], verdict: Verdict,
                unraced: dict[str, float] | None = None) -> StageResult:
    """The stage's result once the race is done: the adopted candidate, or the incumbent.
    `unraced`: candidates dropped before the race, with their search gain (ConfirmPlan)."""
    by_number = {t.number: t for t in trials}
    base, values, diffs = _fresh_diffs(trials, stage, incumbent, candidates)
    if not base:
        raise GateNotReached(f"stage {stage.name}: the incumbent (trial {incumbent}) did not "
                             "complete; nothing to compare with")
    rule = race_rule(stage.confirm)
    scale, unit = _points(stage)
    kept = _describe_fresh(base)
    # The incumbent's value: the mean of its fresh repeats; with none (nothing raced and not
    # the last stage), its search trial's.
    kept_value = base[min(base)][0] if math.isnan(kept["mean"]) else kept["mean"]
    if not candidates and unraced:
        best = max(unraced, key=lambda c: (unraced[c], -int(c)))
        return _result(by_number[incumbent], stage, "kept incumbent",
                       f"kept incumbent: no search trial beat it on the search's fold and "
                       f"seed (the best, trial {best}: {signed(unraced[best] * scale)}{unit}); "
                       f"not raced (confirm.search_gain)",
                       kept_value, _trials_of(base),
                       {"rule": "search_gain", "incumbent": incumbent, "unraced": unraced,
                        "best": int(best),
                        **({"configs": {str(incumbent): kept}} if kept["values"] else {})})
    evidence: dict[str, Any] = {
        "rule": TEST_NAME, "level": rule.level, "min_gain": rule.min_gain,
        "futility": rule.futility,
        "min_repeats": rule.min_repeats, "max_repeats": rule.max_repeats,
        "incumbent": incumbent, "rounds": verdict.rounds,
        "dropped": {str(c): n for c, n in verdict.dropped.items()},
        "configs": {str(incumbent): kept}}
    steps = _steps(trials, base, values)
    for c in candidates:
        stats = _describe_fresh(values[c])
        b = verdict.bounds.get(c)
        stats.update(diffs=[d for _, d in diffs[c]], step=max(steps[c].values(), default=0.0),
                     **({"diff_mean": b.mean, "lower": b.lower, "upper": b.upper,
                         "plain_upper": b.plain_upper, "power": b.power, "n": b.n}
                        if b is not None else {}))
        evidence["configs"][str(c)] = stats

    def pt(x: float) -> str:
        return f"{signed(x * scale)}{unit}"

    def fresh(n: int) -> str:
        return f"{n} fresh paired repeat{'s' if n != 1 else ''}"

    tail = f"{rule.level:.0%} one-sided paired t, Bonferroni over {len(candidates)} " \
           f"candidate{'s' if len(candidates) != 1 else ''} and the looks"
    if _crossfitted(trials, [n for c in candidates for n in _trials_of(values[c])]):
        tail += f"; {CROSSFIT_WORDS}"
        evidence["values"] = CROSSFIT_WORDS
    if verdict.adopt is not None:
        c = verdict.adopt
        b = verdict.bounds[c]
        evidence["best"] = c
        return _result(by_number[c], stage, "adopted",
                       f"adopted trial {c}: {pt(b.mean)} over {fresh(b.n)}, lower bound "
                       f"{pt(b.lower)} > min gain {pt(rule.min_gain)} ({tail}); "
                       f"{stage.shown_metric} {evidence['configs'][str(c)]['mean']:.3f} vs "
                       f"incumbent {evidence['configs'][str(incumbent)]['mean']:.3f}",
                       evidence["configs"][str(c)]["mean"], _trials_of(values[c]), evidence)
    if not candidates:
        return _result(by_number[incumbent], stage, "kept incumbent",
                       "kept incumbent: nothing to race (no search trial completed with "
                       "settings other than the incumbent's: pruned, failed or the same)",
                       kept_value, _trials_of(base), evidence)
    looked = verdict.bounds
    if not looked:
        why = "no candidate completed its repeats"
    else:
        c = max(looked, key=lambda c: (looked[c].mean, -c))
        b = looked[c]
        evidence["best"] = c
        if not verdict.alive:
            reason = (f"upper bound {pt(b.plain_upper)} <= min gain {pt(rule.min_gain)}"
                      if b.plain_upper <= rule.min_gain else
                      f"futile: at this trend max_repeats would not show it better "
                      f"(conditional power {b.power:.0%} < futility {rule.futility:.0%})")
            why = (f"every candidate dropped; the best, trial {c}: {pt(b.mean)} over "
                   f"{fresh(b.n)}, {reason}")
        else:
            why = (f"the best candidate, trial {c}: {pt(b.mean)} over {fresh(b.n)}, lower "
                   f"bound {pt(b.lower)}, not above min gain {pt(rule.min_gain)} by "
                   f"max_repeats")
    return _result(by_number[incumbent], stage, "kept incumbent",
                   f"kept incumbent: {why} ({tail})", kept_value, _trials_of(base), evidence)


def _trials_of(values: dict[int, tuple[float, int]]) -> list[int]:
    return [values[r][1] for r in sorted(values)]


def _describe_fresh(values: dict[int, tuple[float, int]]) -> dict[str, Any]:
    """Like _describe, over the fresh repeats only; the search trial (repeat 0) is shown
    apart, as `search_value`."""
    fresh = {r: vn for r, vn in values.items() if r >= 1}
    out = _describe(fresh) if fresh else {"values": {}, "trials": {}, "mean": math.nan,
                                          "std": 0.0}
    if 0 in values:
        out["search_value"] = values[0][0]
        out["search_trial"] = values[0][1]
    return out
