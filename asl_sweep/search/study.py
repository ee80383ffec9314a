"""Stage orchestration. Each stage is an Optuna study that starts from `base` plus what the
stages before it adopted. It trains that configuration unchanged first (the incumbent), then
its seed trials and its search; then, with confirmation, the best candidates and the
incumbent again on paired seeds and folds (in the stage's repeats study, store.py); then it
adopts a change only on evidence (selection.py). After the last stage the final
configuration is scored once on the untouched test split. Optuna holds the truth; MLflow
mirrors it as study -> stage -> trial runs. A rerun continues where the last one stopped;
several workers may run this at once."""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from asl_sweep.runtime import signals
from asl_sweep.runtime.errors import GateNotReached
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.evaluation import (
    TEST_RULE,
    breakdown,
    failure_lines,
    score_trials,
    summarize,
)
from asl_sweep.search.progress import StageProgress, shown_settings
from asl_sweep.search.record import save_final
from asl_sweep.search.reuse import forget
from asl_sweep.search.selection import (
    SEARCH_ROLES,
    StageResult,
    counts_toward_budget,
    decide,
    decide_race,
    pick_winner,
    plan_candidates,
    previous_family,
    race_line,
    race_verdict,
    reached_target,
    role_of,
)
from asl_sweep.search.session import Session, open_session
from asl_sweep.search.space import decode_params, encode_params
from asl_sweep.search.stageview import StageView
from asl_sweep.search.store import (
    HEARTBEAT_S,
    attrs,
    create_stage_study,
    fail_dead_trials,
    put,
    records_decision,
    repeats_study,
    stage_trials,
    wait_for,
    worker_id,
)
from asl_sweep.search.trial import TrialFailed, TrialRunner, settings_digest
from asl_sweep.settings.config import METRICS, apply_overrides
from asl_sweep.settings.spec import StageConfig, StudyConfig


def run_study(cfg: StudyConfig, ws: Workspace, log: Callable[[str], None] = print,
              worker: int = 0, score: bool = True,
              say: Callable[[str], None] | None = None) -> list[StageResult]:
    """Run (or join, or resume) the staged search; with `score`, then the final test. `log`
    takes this process's trial lines, `say` the study's and stages' (default: `log`)."""
    s = open_session(cfg, ws, log, worker, say)
    status = "FAILED"
    try:
        carried: dict[str, Any] = {}
        decided_by: dict[str, str] = {}
        reference: dict[str, Any] | None = None  # what the last stage carried, whole
        for index, stage in enumerate(cfg.stages):
            result = run_stage(s, index, carried, decided_by, reference)
            s.results.append(result)
            reference = result.config
            carried.update(result.params)
            decided_by.update({name: stage.name for name in result.params})
        if score:
            final_score(s)
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        s.tracker.end(s.study_run, status)
    return s.results


def run_stage(s: Session, index: int, carried: dict[str, Any],
              decided_by: dict[str, str], reference: dict[str, Any] | None = None
              ) -> StageResult:
    cfg, stage = s.cfg, s.cfg.stages[index]
    study, created = create_stage_study(cfg, index, s.storage, s.worker)
    if created or not wait_for(study, "carried"):
        _initialize_stage(s, study, index, carried, decided_by, reference)
    a = attrs(study)
    if "result" in a:  # finished in an earlier run: its decision stands
        result = StageResult(**a["result"])
        s.say(f"stage {stage.name}: finished earlier: {result.decision}")
        if RECORDED not in a:  # the process that decided it stopped before recording it
            _record_decision(s, stage, study, a["mlflow_stage_run"], stage_trials(study),
                             result)
        ran = a.get("budget", stage.trials)
        if stage.trials > ran:
            s.say(f"stage {stage.name}: finished with a budget of {ran} trials; --trials "
                  f"{stage.trials} does not reopen a decided stage (its race and every later "
                  f"stage stand on it): for more trials, run it as a new study, e.g. --set "
                  f"study={cfg.study}-more --trials {stage.trials}")
        return result
    stage_run = a["mlflow_stage_run"]
    s.tracker.reopen(stage_run)
    put(study, "budget", stage.trials)  # what status and the report say it ran with
    status = "FAILED"
    try:
        result = _run(s, stage, study, stage_run, a)
        trials = stage_trials(study)  # decided: read once for what follows
        result = _carried_whole(stage, trials, a, result)
        status = "FINISHED"
    except GateNotReached:
        s.tracker.end(stage_run, "FAILED", outcome="target missed")
        raise
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":  # never leave the stage's run RUNNING
            s.tracker.end(stage_run, status)
    put(study, "result", asdict(result))
    # Short, so that `optuna studies` prints a readable table; the whole line is in MLflow.
    study.set_user_attr("decision", result.decision.split(" over ")[0].split(" (")[0][:60])
    # The trial the stage chose, beside Optuna's best (its best search result, which a race
    # may not have adopted).
    study.set_user_attr("chosen_trial", result.trial)
    if records_decision(trials):
        _record_decision(s, stage, study, stage_run, trials, result)
    s.say(f"stage {stage.name}: {result.decision}; carries "
          f"{shown_settings(result.params) or 'no change'}")
    return result


# Set once a stage's decision is recorded in MLflow.
RECORDED = "recorded"


def _record_decision(s: Session, stage: StageConfig, study: optuna.Study, stage_run: str,
                     trials: list[FrozenTrial], result: StageResult) -> None:
    """The decision on the stage's MLflow run and its trials' runs, and the checkpoints
    nobody will read deleted: by one process of the many that reach the same decision (each
    doing it put N times the requests on the tracking server)."""
    s.tracker.log_params(stage_run, {"adopted": result.params or "nothing (kept incumbent)"})
    s.tracker.log_metrics(stage_run, {f"winner_{k}": v for k, v in result.metrics.items()
                                      if k in METRICS} | {"winner_value": result.value})
    _log_curves(s, stage_run, result, stage.name)
    _mark_decision(s, trials, result, (attrs(study).get("plan") or {}).get("candidates", []))
    _keep_checkpoints(s, stage, trials, result)
    s.tracker.end(stage_run, outcome=result.status, winner_trial=result.trial,
                  winner_run=result.run_id, decision=result.decision)
    put(study, RECORDED, True)


def switched_family(cfg: StudyConfig, stage: StageConfig, carried: dict[str, Any],
                    reference: dict[str, Any] | None) -> str | None:
    """The model family the earlier stages carried, when this stage trains another one."""
    if reference is None:
        return None
    before = apply_overrides(cfg.base, reference).model
    after = apply_overrides(cfg.base, {**carried, **stage.fixed}).model
    return before if before != after else None


def _carried_whole(stage: StageConfig, trials: list[FrozenTrial], a: dict[str, Any],
                   result: StageResult) -> StageResult:
    """The configuration the stage carries, whole (for the next stage that switches family),
    and, in a stage that switched, the decision worded for the two families."""
    chosen = next(t for t in trials if t.number == result.trial)
    if previous_family(chosen):
        result.config = dict(a.get("reference") or {})
    else:
        result.config = {**a["carried"], **stage.fixed, **result.params}
    family = a.get("previous_family")
    if family:
        first = _incumbent(trials, switching=True)
        words = f"the previous family ({family}" + (
            f", trial {first.number})" if first is not None else ")")
        result.decision = result.decision.replace("kept incumbent", f"kept {words}").replace(
            "vs incumbent", f"vs {words}")
    return result


def _run(s: Session, stage: StageConfig, study: optuna.Study, stage_run: str,
         a: dict[str, Any]) -> StageResult:
    base = apply_overrides(s.cfg.base, {**a["carried"], **stage.fixed})
    family = a.get("previous_family")
    reference = apply_overrides(s.cfg.base, a.get("reference") or {}) if family else None
    confirm = stage.confirm if stage.target is None else None
    use_folds = (confirm.folds if confirm is not None and confirm.folds is not None
                 else s.data.splits.grouped)
    runner = TrialRunner(s, stage, study, stage_run, base, a["decided_by"], a["uid"], use_folds,
                         reference)
    progress = StageProgress(s.log, s.cfg, a.get("index", s.cfg.stages.index(stage)))
    if family:
        progress.planned += 1
        s.say(f"stage {stage.name}: a new model family ({base.model}): the configuration the "
              f"earlier stages carried ({family}) runs beside it as a second incumbent, and "
              f"{base.model} is adopted only on the same evidence")
    s.say(f"stage {stage.name} ({progress.where}): {stage.goal + ' ' if stage.goal else ''}"
          f"[incumbent + "
          f"{stage.trials} trials"
          f"{f' + confirmation of the top {confirm.top}' if confirm else ''}, {stage.metric}]")
    _search(s, stage, study, runner, progress)
    trials = study.get_trials(deepcopy=False)
    incumbent = _incumbent(trials, bool(family))
    if confirm is None or incumbent is None:
        return pick_winner(trials, stage)
    runner.phase = "confirm"
    plan = _confirm_plan(s, stage, study, runner, incumbent.number)
    # The repeats train in the stage's repeats study (a plan made before there was one
    # keeps them in the stage's own study), numbered after the stage's trials.
    first = plan.get("first_repeat")
    into = study if first is None else repeats_study(s.cfg, progress.index, s.storage)
    runner = runner.moved(into, first or 0)
    progress.numbered(first or 0, lambda: stage_trials(study, into))
    if confirm.racing:
        return _race(s, stage, study, into, runner, progress, plan)
    _queue_once(study, into, "queued", plan, [plan["incumbent"], *plan["candidates"]], 1,
                plan["repeats"] - 1, mine=plan["by"] == worker_id())
    _drain(s, into, runner, progress)
    return decide(stage_trials(study, into), stage, plan["incumbent"],
                  plan["candidates"], confirm.min_gain)


def _log_curves(s: Session, stage_run: str, result: StageResult, stage: str) -> None:
    """The carried trial's learning curves, as a PNG on the stage's run."""
    if not result.run_id:
        return
    from asl_sweep.tracking.plots import (
        plot_curves,  # matplotlib: loaded when a stage ends, not at start
    )
    history = {k: s.tracker.metric_history(result.run_id, k) for k in METRICS}
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_curves([m.step for m in history["val_acc"]],
                          {k: [m.value for m in v] for k, v in history.items()},
                          Path(tmp) / "curves.png", f"{stage}: trial {result.trial}")
        s.tracker.log_artifacts(stage_run, [png])


def _keep_checkpoints(s: Session, stage: StageConfig, trials: list[FrozenTrial],
                      result: StageResult) -> None:
    """Once the stage has decided, delete the best checkpoints nobody will read (the study's
    keep_checkpoints): the carried configuration's repeats are what the final score,
    evaluate and export use; with top_k also the best search trials; with all, every one.
    A training deleted is no longer one a later trial may reuse (search/reuse.py)."""
    if s.cfg.keep_checkpoints == "all":
        return
    keep = set(result.repeats) | {result.trial}
    if s.cfg.keep_checkpoints == "top_k":
        ranked = StageView(stage, trials, result, {}).ranked(SEARCH_ROLES)
        keep |= {t.number for t in ranked[:s.cfg.keep_top]}
    for t in trials:
        run_id = t.user_attrs.get("mlflow_run_id")
        if t.user_attrs.get("reused_from"):
            continue  # trained by an earlier stage, whose decision keeps or deletes it
        if t.number not in keep and run_id and t.state == TrialState.COMPLETE:
            if "training_key" in t.user_attrs:
                forget(s.record, t.user_attrs["training_key"])
            s.tracker.delete_artifacts(run_id, "checkpoints")


def _mark_decision(s: Session, trials: list[FrozenTrial], result: StageResult,
                   candidates: list[int]) -> None:
    """The stage's decision on its trials' runs, a column of the MLflow trial view: the
    trial it carries, and each candidate raced and not adopted."""
    by_number = {t.number: t for t in trials}
    marks = {result.trial: f"carried ({result.status})"}
    for c in candidates:
        marks.setdefault(c, "raced, not adopted")
    for number, word in marks.items():
        t = by_number.get(number)
        run_id = t.user_attrs.get("mlflow_run_id") if t is not None else None
        if run_id and not t.user_attrs.get("reused_from"):  # its own stage's word stands
            s.tracker.set_tags(run_id, decision=word)


def _incumbent(trials: list[FrozenTrial], switching: bool = False) -> FrozenTrial | None:
    """The configuration candidates must beat: the stage's starting point, or, in a stage
    that switches family, the previous family's configuration."""
    done = [t for t in trials if role_of(t) == "incumbent" and t.state == TrialState.COMPLETE
            and previous_family(t) == switching]
    return done[0] if done else None


def _search(s: Session, stage: StageConfig, study: optuna.Study, runner: TrialRunner,
            progress: StageProgress) -> None:
    """The incumbent, the seed trials and the search budget. `timeout` bounds the search
    across reruns: the seconds spent by earlier runs are kept in the study (time between runs
    does not count; workers share one clock)."""
    spent, started = attrs(study).get("search_seconds", 0.0), time.monotonic()

    def elapsed() -> float:
        return spent + time.monotonic() - started

    idle = Idle()
    while True:
        signals.check()
        _close_lost_runs(s, study)
        trials = study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        baselines_waiting = any(role_of(t) in ("incumbent", "seed") for t in waiting)
        done = sum(counts_toward_budget(t) for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        searching = sum(role_of(t) in SEARCH_ROLES for t in running)
        over = reached_target(trials, stage) or done >= stage.trials or bool(
            stage.timeout and elapsed() > stage.timeout)
        if over and not baselines_waiting:
            if not running:
                return
        elif waiting or done + searching < stage.trials:
            idle.reset()
            try:
                study.optimize(runner.objective, n_trials=1, catch=(TrialFailed,),
                               callbacks=[progress])
            finally:
                put(study, "search_seconds",
                    max(elapsed(), attrs(study).get("search_seconds", 0.0)))
            continue
        idle.wait()  # other workers still run trials of this stage


def _confirm_plan(s: Session, stage: StageConfig, study: optuna.Study, runner: TrialRunner,
                  incumbent: int) -> dict[str, Any]:
    """Which configurations are repeated, decided once: the top distinct candidates and the
    incumbent. The fixed rule queues repeats 1..R-1 once it is made; a race queues its rounds
    as it goes (_race)."""
    confirm = stage.confirm
    if "plan" not in attrs(study):
        trials = study.get_trials(deepcopy=False)
        switching = runner.reference is not None
        plain = settings_digest(runner.reference if switching else runner.base)

        def same_as_incumbent(t: FrozenTrial) -> bool:
            return settings_digest(apply_overrides(runner.base, decode_params(t.params))) == plain

        candidates = plan_candidates(trials, stage, confirm.top, same_as_incumbent, switching)
        put(study, "plan", {"incumbent": incumbent, "candidates": candidates,
                            "first_repeat": len(trials),
                            "rule": "race" if confirm.racing else "fixed",
                            "repeats": confirm.max_repeats if confirm.racing else
                            confirm.repeats, "by": worker_id()})
        time.sleep(0.2)  # two workers that planned at once: the last write wins
    plan = attrs(study)["plan"]
    if plan.get("rule") == "race":
        s.say(f"stage {stage.name}: racing trials {plan['candidates']} against the incumbent "
              f"(trial {plan['incumbent']}) on fresh paired repeats ({confirm.min_repeats} to "
              f"{confirm.max_repeats})")
        return plan
    s.say(f"stage {stage.name}: confirming trials {plan['candidates']} against the incumbent "
          f"(trial {plan['incumbent']}) over {plan['repeats']} paired repeats")
    return plan


def _queue_once(study: optuna.Study, into: optuna.Study, key: str, plan: dict[str, Any],
                targets: list[int], first: int, last: int, mine: bool) -> None:
    """Queue repeats first..last of `targets` (trials of the stage's study) into the
    repeats study `into`, once whichever worker gets here: the one that claimed `key` does
    it; the others wait for it (and do it themselves if it died)."""
    if mine or not wait_for(study, key, 60.0):
        if key not in attrs(study):
            by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
            for repeat in range(first, last + 1):
                for target in targets:
                    of = by_number[target]
                    as_it_came = role_of(of) == "incumbent"  # either family's: no params
                    into.enqueue_trial(
                        {} if as_it_came else dict(of.params),
                        user_attrs={"role": "confirm", "confirms": target, "repeat": repeat,
                                    **({"incumbent": True} if as_it_came else {}),
                                    **({"previous_family": True} if previous_family(of)
                                       else {})})
            put(study, key, True)


def _race(s: Session, stage: StageConfig, study: optuna.Study, into: optuna.Study,
          runner: TrialRunner, progress: StageProgress, plan: dict[str, Any]) -> StageResult:
    """Rounds of fresh paired repeats until the race is decided (search/racing.py). The
    verdict is replayed from the trials at every look, so workers and reruns agree; the
    rounds queued so far are read before draining, so a look never counts a round another
    worker queued a moment ago and nobody has run yet."""
    confirm, incumbent, candidates = stage.confirm, plan["incumbent"], plan["candidates"]
    while True:
        queued = attrs(study).get("rounds_queued", 0)
        _drain(s, into, runner, progress)
        trials = stage_trials(study, into)
        verdict = race_verdict(trials, stage, incumbent, candidates, queued)
        if verdict.done or not candidates:
            return decide_race(trials, stage, incumbent, candidates, verdict)
        if queued:
            s.say(f"stage {stage.name}: after {queued} round{'s' if queued != 1 else ''}: "
                  f"{race_line(stage, verdict)}")
        upto = min(confirm.max_repeats, max(queued + 1, confirm.min_repeats))
        progress.planned += max(0, upto - max(queued, confirm.min_repeats)) * (
            len(verdict.alive) + 1)  # a round past the planned minimum
        key = f"round_{upto}"
        if key not in attrs(study):
            put(study, key, worker_id())
            time.sleep(0.2)  # two workers that claimed at once: the last write wins
        _queue_once(study, into, f"{key}_queued", plan, [incumbent, *verdict.alive], queued + 1,
                    upto, mine=attrs(study)[key] == worker_id())
        if attrs(study).get("rounds_queued", 0) < upto:
            put(study, "rounds_queued", upto)


def _drain(s: Session, study: optuna.Study, runner: TrialRunner,
           progress: StageProgress) -> None:
    """Run queued trials (confirmation repeats, retries) until none waits or runs."""
    idle = Idle()
    while True:
        signals.check()
        _close_lost_runs(s, study)
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            idle.reset()
            study.optimize(runner.objective, n_trials=1, catch=(TrialFailed,),
                           callbacks=[progress])
        elif any(t.state == TrialState.RUNNING for t in trials):
            idle.wait()
        else:
            return


class Idle:
    """The pause of a worker with nothing to run while others finish theirs: 1 s, doubling
    up to 4 s while it stays idle, a little jittered. Each look reads the stores, and 64
    idle workers looking every second kept the storage proxy busy with nothing else."""

    def __init__(self) -> None:
        self.seconds = 1.0

    def reset(self) -> None:
        self.seconds = 1.0

    def wait(self) -> None:
        signals.check()
        time.sleep(self.seconds * (0.75 + 0.5 * random.random()))
        self.seconds = min(4.0, self.seconds * 2)


def _close_lost_runs(s: Session, study: optuna.Study) -> None:
    """Trials whose worker died without a word: queued again, and said so in MLflow instead
    of leaving RUNNING. Looked for at most once a heartbeat per stage and process (a dead
    worker is found after GRACE_S of silence anyway)."""
    now = time.monotonic()
    if now - s.lost_looked.get(study.study_name, -HEARTBEAT_S) < HEARTBEAT_S:
        return
    s.lost_looked[study.study_name] = now
    for t in fail_dead_trials(study):
        run_id = t.user_attrs["mlflow_run_id"]
        if run_id not in s.closed_runs and s.tracker.status(run_id) == "RUNNING":
            why = t.user_attrs.get("failure")
            s.tracker.end(run_id, "FAILED", state="FAIL",
                          error=f"{why}; its run closed by a later run" if why
                          else "worker lost (killed or crashed)")
        s.closed_runs.add(run_id)


def _initialize_stage(s: Session, study: optuna.Study, index: int, carried: dict[str, Any],
                      decided_by: dict[str, str], reference: dict[str, Any] | None) -> None:
    """Done once per stage, by the worker that created its study; `carried` goes last, as
    the sign for the other workers that the stage is ready."""
    stage = s.cfg.stages[index]
    stage_run = s.tracker.new_run(s.experiment_id, f"{index + 1}-{stage.name}",
                                  parent=s.study_run, kind="stage", stage=stage.name,
                                  goal=stage.goal, index=index,
                                  **{"mlflow.note.content": stage.goal})
    s.tracker.log_params(stage_run, {"carried": carried, "metric": stage.metric,
                                     "trials": stage.trials, "target": stage.target})
    study.set_metric_names([stage.metric])
    put(study, "mlflow_stage_run", stage_run)
    put(study, "index", index)
    put(study, "uid", uuid.uuid4().hex)
    put(study, "decided_by", decided_by)
    put(study, "reference", reference)
    family = switched_family(s.cfg, stage, carried, reference)
    put(study, "previous_family", family)
    if not any("role" in t.user_attrs for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial({}, user_attrs={"role": "incumbent"})
        if family:
            study.enqueue_trial({}, user_attrs={"role": "incumbent", "previous_family": True})
        for seeded in stage.seed_trials:
            study.enqueue_trial(encode_params(seeded.params), user_attrs={
                "role": "seed", "seed_trial": True,
                **({"reported": seeded.reported} if seeded.reported is not None else {})})
    put(study, "carried", carried)


def final_score(s: Session) -> dict[str, Any]:
    """The final configuration (the last stage's) scored once per repeat on the test split.
    The model to export is its best repeat by validation, never chosen by test."""
    if not s.results:
        return {}
    stage = s.cfg.stages[-1]
    stored = attrs(s.record).get("final")
    if stored and stored.get("trials") == s.results[-1].repeats:  # scored in an earlier run
        s.log(f"final test accuracy ({stage.name}'s configuration, scored earlier): "
              f"{stored['summary']}")
        return stored
    study = create_stage_study(s.cfg, len(s.cfg.stages) - 1, s.storage, s.worker)[0]
    view = StageView(stage, stage_trials(study), s.results[-1], {})
    scored = score_trials(s.data, s.tracker, view.repeats(), "test")
    final = summarize(scored, s.data.test().groups, "test")
    final.update(stage=stage.name, rule=TEST_RULE, export_trial=view.export_trial().number)
    final["breakdown"] = breakdown(scored, s.data.test().groups, list(s.data.classes))
    signals.check()  # a stop asked for while scoring: exit 130, and a rerun scores again
    save_final(s.record, final)
    b = final["breakdown"]
    s.tracker.log_table(s.study_run, b["by_person"], "test/by_person.json")
    s.tracker.log_table(s.study_run, b["by_class"], "test/by_class.json")
    s.tracker.log_table(s.study_run, [{"true": c, **dict(zip(b["classes"], row, strict=True))}
                                      for c, row in zip(b["classes"], b["confusion"],
                                                        strict=True)], "test/confusion.json")
    s.tracker.log_metrics(s.study_run, {"test_acc_mean": final["mean"],
                                        "test_acc_std": final["std"],
                                        "test_acc_ci_low": final["ci"][0],
                                        "test_acc_ci_high": final["ci"][1]})
    s.tracker.set_tags(s.study_run, test_acc=final["summary"], test_rule=TEST_RULE)
    s.tracker.log_datasets(s.study_run, [s.data.test_dataset()])
    s.log(f"\nfinal test accuracy of {stage.name}'s configuration: {final['summary']}\n"
          f"  rule: {TEST_RULE}\n"
          f"  exported model: trial {final['export_trial']} (the best repeat by validation)")
    for line in failure_lines(final["breakdown"]):
        s.log(f"  {line}")
    return final
