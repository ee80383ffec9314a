"""Stage orchestration, the flow only. Each stage is an Optuna study that starts from `base`
plus what the stages before it adopted. It trains that configuration unchanged first (the
incumbent), then its seed trials and its search budget; then, with confirmation, the best
candidates and the incumbent again on paired seeds and folds (in the stage's repeats study,
store.py); then it adopts a change only on evidence (selection.py). After the last stage the
final configuration is scored once on the untouched test split (evaluation.py).

What the workers share is state.py's, what MLflow shows is mirror.py's. A rerun continues
where the last one stopped; several workers may run this at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from asl_sweep.runtime import signals
from asl_sweep.runtime.errors import ConfigError, GateNotReached, environment_fault
from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.evaluation import final_score
from asl_sweep.search.optuna_api import storage_of, tell, trial_id_of
from asl_sweep.search.progress import StageProgress, shown_settings
from asl_sweep.search.record import first_difference
from asl_sweep.search.reuse import forget_runs
from asl_sweep.search.selection import (
    StageResult,
    counts_as_done,
    counts_toward_budget,
    decide,
    decide_race,
    is_previous_family,
    pick_winner,
    plan_candidates,
    race_line,
    race_verdict,
    reached_target,
    role_of,
    search_gains,
)
from asl_sweep.search.session import Session, open_session
from asl_sweep.search.space import decode_params, encode_params
from asl_sweep.search.stageview import StageView
from asl_sweep.search.state import (
    GRACE_S,
    HEARTBEAT_S,
    MIRROR_CLAIM,
    SEARCH_ROLES,
    ConfirmPlan,
    Failure,
    Requeue,
    Role,
    StageKey,
    SummaryKey,
    TrialKey,
    budget_queued,
    does_job,
    fail_dead_trials,
    holding,
    jittered,
    mirrors_decision,
    queue_budget,
    queued_key,
    read,
    release_unused,
    reused_from,
    round_key,
    take_waiting,
    wait_for,
    worker_id,
    write,
)
from asl_sweep.search.store import (
    create_stage_study,
    joined,
    load_stage_study,
    repeats_study,
    stage_trials,
)
from asl_sweep.search.trial import TrialFailed, TrialRunner, settings_digest
from asl_sweep.settings.config import TrainConfig, apply_overrides
from asl_sweep.settings.spec import StageConfig, StudyConfig


def run_study(cfg: StudyConfig, ws: Workspace, log: Callable[[str], None] = print,
              worker: int = 0, score: bool = True,
              say: Callable[[str], None] | None = None, bars: bool = False,
              searched: Callable[[], None] | None = None) -> list[StageResult]:
    """Run (or join, or resume) the staged search; with `score`, then the final test. `log`
    takes this process's trial lines, `say` the study's and stages' (default: `log`);
    `bars`: a progress bar per trial (a terminal with one worker); `searched`: called once
    every stage is decided, before the final test (run_pool: its workers leave, and this
    process takes their threads)."""
    session = open_session(cfg, ws, log, worker, say)
    session.bars = bars
    status = "FAILED"
    try:
        carried: dict[str, Any] = {}
        decided_by: dict[str, str] = {}
        reference: dict[str, Any] | None = None  # what the last stage carried, whole
        for index, stage in enumerate(cfg.stages):
            result = run_stage(session, index, carried, decided_by, reference)
            session.results.append(result)
            reference = result.config
            carried.update(result.params)
            decided_by.update({name: stage.name for name in result.params})
        if score:
            if searched is not None:
                searched()
            for index, stage in enumerate(cfg.stages):  # one read a stage
                study = load_stage_study(cfg, stage, session.storage)
                if study is not None:
                    _mirror_undone(session, stage, study, read(study),
                                   session.results[index])
            restore_checkpoints(session)
            final_score(session)
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        session.mirror.study_ended(status)
    return session.results


def run_stage(session: Session, index: int, carried: dict[str, Any],
              decided_by: dict[str, str], reference: dict[str, Any] | None = None
              ) -> StageResult:
    cfg, stage = session.cfg, session.cfg.stages[index]
    if session.edited:  # no stage starts, or goes on, from settings the ones before lacked
        known = load_stage_study(cfg, stage, session.storage)
        if known is None or StageKey.RESULT not in read(known):
            raise ConfigError(
                f"study {cfg.study}, stage {stage.name}: the stages before it were decided "
                f"from other settings ({session.edited}), and a study resumes only from the "
                "settings it started with: restore them to resume it, or start a new study "
                "with --set study=NEW")
    study, created = create_stage_study(cfg, index, session.storage, session.worker)
    shared = None if created else wait_for(study, StageKey.CARRIED)  # set up by its creator
    if shared is None:  # this worker created it, or its creator died setting it up
        _initialize_stage(session, study, index, carried, decided_by, reference)
        shared = read(study)
    edited = _start_edited(session.cfg, index, shared)
    if StageKey.RESULT in shared:  # finished in an earlier run: its decision stands
        result = StageResult(**shared[StageKey.RESULT])
        session.say(f"stage {stage.name}: finished earlier: {result.decision}")
        if edited:
            session.edited = session.edited or f"stage {stage.name}: {edited}"
            session.say(f"stage {stage.name}: decided from {edited}; a decided stage is not "
                        f"reopened (its race and every later stage stand on it): for these "
                        f"settings, run a new study, e.g. --set study={cfg.study}-new")
        _mirror_undone(session, stage, study, shared, result)
        ran = shared.get(StageKey.BUDGET, stage.trials)
        if stage.trials > ran:
            session.say(f"stage {stage.name}: finished with a budget of {ran} trials; --trials "
                        f"{stage.trials} does not reopen a decided stage (its race and every "
                        f"later stage stand on it): for more trials, run it as a new study, "
                        f"e.g. --set study={cfg.study}-more --trials {stage.trials}")
        return result
    if edited:
        raise ConfigError(
            f"study {cfg.study}, stage {stage.name}: its trials so far started from {edited}, "
            "and a study resumes only from the settings it started with: restore them to "
            "resume it, or start a new study with --set study=NEW")
    stage_run = shared[StageKey.STAGE_RUN]
    if StageKey.RUN_ENDED in shared:  # a worker ended it early: RUNNING again while searched
        session.mirror.stage_reopened(stage_run)
    status, outcome = "FAILED", {}
    if shared.get(StageKey.STOPPED):  # run again (more trials, on_fail edited): no longer
        write(study, StageKey.STOPPED, None)
    try:
        result, trials = _search_and_decide(session, stage, study, stage_run, shared)
        result = _carried_whole(stage, trials, shared, result)
        status = "FINISHED"
    except GateNotReached as e:
        outcome = {"outcome": "target missed"}
        write(study, StageKey.STOPPED, str(e).split(": ", 1)[-1])  # for status, export, ...
        raise
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":  # never leave the stage's run RUNNING; ended once
            _stop_stage_run(session, study, stage_run, status, **outcome)
    write(study, StageKey.RESULT, asdict(result))  # by every worker: a decider may die
    if mirrors_decision(study, trials):
        with holding(study, MIRROR_CLAIM):
            _mirror_decision(session, stage, study, stage_run, trials, result)
    session.say(f"stage {stage.name}: {result.decision}; carries "
                f"{shown_settings(result.params) or 'no change'}")
    return result


def _mirror_undone(session: Session, stage: StageConfig, study: optuna.Study,
                   shared: dict[str, Any], result: StageResult) -> None:
    """A decided stage's decision into MLflow where nobody has mirrored it (`shared`: the
    stage's keys, just read): its mirroring's worker died first (killed as it mirrored, or
    after it finished the stage's last trial and before it began; the others leave the
    mirroring to it, state.mirrors_decision). A rerun does it as it passes the stage, and
    `run` once every stage is decided and its own workers are done, so that no stage's run
    is left RUNNING under a finished study (a worker of `run --workers 2` killed mid-race
    left it so)."""
    if StageKey.MIRRORED not in shared and does_job(study, MIRROR_CLAIM, StageKey.MIRRORED):
        with holding(study, MIRROR_CLAIM):
            _mirror_decision(session, stage, study, shared[StageKey.STAGE_RUN],
                             stage_trials(study), result)


def _stop_stage_run(session: Session, study: optuna.Study, stage_run: str, status: str,
                    **tags: str) -> None:
    """The stage's run ended before its decision, and the stage marked so that a worker
    joining it later reopens the run (the others find it RUNNING and leave it)."""
    session.mirror.stage_stopped(stage_run, status, **tags)
    write(study, StageKey.RUN_ENDED, status)


def _fit_budget(session: Session, study: optuna.Study, stage: StageConfig,
                shared: dict[str, Any], trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The stage's search slots, queued up to its budget: a rerun with a larger --trials
    queues the difference (one with a smaller one leaves the rest unused, state.py), and
    says so: a worker started by hand with another --trials changes the stage for every
    worker. The stage's trials (`trials`, just read) as it leaves them."""
    ran = shared.get(StageKey.BUDGET)
    if ran != stage.trials:
        write(study, StageKey.BUDGET, stage.trials)  # what status and the report show
        if ran is not None:
            session.say(f"stage {stage.name}: budget {ran} -> {stage.trials} trials, as this "
                        "command asks (--trials or the study file), for every worker of the "
                        "stage" + ("" if stage.trials > ran else
                                   "; trials queued past it are left unused"))
    wanted = max(0, stage.trials - len(stage.seed_trials))
    queued = budget_queued(trials)
    if queued >= wanted:
        return trials
    queue_budget(study, wanted - queued)
    return study.get_trials(deepcopy=False)


def _mirror_decision(session: Session, stage: StageConfig, study: optuna.Study,
                     stage_run: str, trials: list[FrozenTrial], result: StageResult) -> None:
    """The decision into MLflow and into the study's summary (what `optuna studies` shows),
    and the checkpoints nobody will read deleted: by one process of the many that reach the
    same decision (each doing it put N times the requests on the stores)."""
    candidates = (read(study).get(StageKey.PLAN) or {}).get("candidates", [])
    session.mirror.stage_decided(stage_run, stage, result,
                                 _decision_marks(trials, result, candidates),
                                 _spent_checkpoints(session, stage, trials, result))
    # Short, so that `optuna studies` prints a readable table; the whole line is in MLflow.
    study.set_user_attr(SummaryKey.DECISION,
                        result.decision.split(" over ")[0].split(" (")[0][:60])
    # The trial the stage chose, beside Optuna's best (its best search result, which a race
    # may not have adopted).
    study.set_user_attr(SummaryKey.CHOSEN_TRIAL, result.trial)
    write(study, StageKey.MIRRORED, True)


def _decision_marks(trials: list[FrozenTrial], result: StageResult,
                    candidates: list[int]) -> dict[str, str]:
    """The stage's word on its trials' runs, a column of the MLflow trial view: the trial it
    carries, and each candidate raced and not adopted. A run an earlier stage trained keeps
    its own stage's word."""
    by_number = {t.number: t for t in trials}
    words = {result.trial: f"carried ({result.status})"}
    for c in candidates:
        words.setdefault(c, "raced, not adopted")
    marks = {}
    for number, word in words.items():
        t = by_number.get(number)
        run_id = t.user_attrs.get(TrialKey.RUN) if t is not None else None
        if run_id and not reused_from(t):
            marks[run_id] = word
    return marks


def _spent_checkpoints(session: Session, stage: StageConfig, trials: list[FrozenTrial],
                       result: StageResult) -> list[str]:
    """The runs whose best checkpoint nobody will read once the stage has decided (the
    study's keep_checkpoints): the carried configuration's repeats are what the final score,
    evaluate and export use; with top_k also the best search trials; with all, every one. A
    training whose checkpoint goes is no longer one a later trial may reuse (reuse.py)."""
    if session.cfg.keep_checkpoints == "all":
        return []
    keep = set(result.repeats) | {result.trial}
    if session.cfg.keep_checkpoints == "top_k":
        ranked = StageView(stage, trials, result, {}).ranked(SEARCH_ROLES)
        keep |= {t.number for t in ranked[:session.cfg.keep_top]}
    spent = []
    for t in trials:
        run_id = t.user_attrs.get(TrialKey.RUN)
        if reused_from(t):
            continue  # trained by an earlier stage, whose decision keeps or deletes it
        if t.number not in keep and run_id and t.state == TrialState.COMPLETE:
            spent.append(run_id)
    if spent and session.cfg.reuse_trainings:
        forget_runs(session.record, set(spent))
    return spent


RUN_ONLY = ("device", "checkpoint_every", "checkpoint_seconds")  # where and how often it
# saves: a resume (another machine) may change them; they never change what is trained


def stage_start(cfg: StudyConfig, stage: StageConfig, carried: dict[str, Any]
                ) -> dict[str, Any]:
    """The settings a stage's trials start from (base, what the stages before carried, the
    stage's `fixed`), but for RUN_ONLY: what a rerun must give again to resume the stage."""
    return _without_run_only(apply_overrides(cfg.base, {**carried, **stage.fixed}))


def _without_run_only(settings: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in settings.model_dump(mode="json").items() if k not in RUN_ONLY}


def _start_edited(cfg: StudyConfig, index: int, shared: dict[str, Any]) -> str | None:
    """Where this command's settings for stage `index` differ from those the stage started
    from (stored by its creator; stages begun before it was stored are not checked), as
    "SETTING THEN, but this command says NOW", named by the YAML key it comes from. The
    stored settings are read through today's TrainConfig, so a setting added since takes
    its default on both sides; one since removed leaves the stage unchecked."""
    stage, stored = cfg.stages[index], shared.get(StageKey.START)
    if not stored:
        return None
    try:
        then = _without_run_only(TrainConfig.model_validate(stored))
    except ValidationError:
        return None
    found = first_difference(then, stage_start(cfg, stage, shared[StageKey.CARRIED]))
    if not found:
        return None
    path, before, now = found
    fixed = any(path == k or path.startswith(k + ".") for k in stage.fixed)
    where = f"stages.{index}.fixed.{path}" if fixed else f"base.{path}"
    return f"{where} {_shown(before)}, but this command says {_shown(now)}"


def _shown(value: Any) -> str:
    return "(not set)" if value is None else str(value)


def switched_family(cfg: StudyConfig, stage: StageConfig, carried: dict[str, Any],
                    reference: dict[str, Any] | None) -> str | None:
    """The model family the earlier stages carried, when this stage trains another one."""
    if reference is None:
        return None
    before = apply_overrides(cfg.base, reference).model
    after = apply_overrides(cfg.base, {**carried, **stage.fixed}).model
    return before if before != after else None


def _carried_whole(stage: StageConfig, trials: list[FrozenTrial], shared: dict[str, Any],
                   result: StageResult) -> StageResult:
    """The configuration the stage carries, whole (for the next stage that switches family),
    and, in a stage that switched, the decision worded for the two families."""
    chosen = next(t for t in trials if t.number == result.trial)
    if is_previous_family(chosen):
        result.config = dict(shared.get(StageKey.REFERENCE) or {})
    else:
        result.config = {**shared[StageKey.CARRIED], **stage.fixed, **result.params}
    family = shared.get(StageKey.SWITCHED_FROM)
    if family:
        incumbent = _incumbent(trials, switching=True)
        words = f"the previous family ({family}" + (
            f", trial {incumbent.number})" if incumbent is not None else ")")
        result.decision = result.decision.replace("kept incumbent", f"kept {words}").replace(
            "vs incumbent", f"vs {words}")
    return result


def _search_and_decide(session: Session, stage: StageConfig, study: optuna.Study,
                       stage_run: str, shared: dict[str, Any]
                       ) -> tuple[StageResult, list[FrozenTrial]]:
    """The stage's search, then its confirmation (a race or fixed repeats), then its
    decision, with the stage's trials it was made on (all of them: finished)."""
    runner = _runner(session, stage, study, stage_run, shared)
    runner.check_space(study.get_trials(deepcopy=False))  # a resumed stage's edited space
    base, family, confirm = runner.base, shared.get(StageKey.SWITCHED_FROM), runner.confirm
    progress = StageProgress(session.log, session.cfg,
                             shared.get(StageKey.INDEX, session.cfg.stages.index(stage)))
    if family:
        progress.planned += 1
        session.say(f"stage {stage.name}: a new model family ({base.model}): the configuration "
                    f"the earlier stages carried ({family}) runs beside it as a second "
                    f"incumbent, and {base.model} is adopted only on the same evidence")
    session.say(f"stage {stage.name} ({progress.where}): "
                f"{stage.goal + ' ' if stage.goal else ''}[incumbent + {stage.trials} trials"
                f"{f' + confirmation of the top {confirm.top}' if confirm else ''}, "
                f"{stage.metric_heading}]")
    if runner.search_folds < stage.folds:
        why = (f"the split has {runner.search_folds} validation folds of the people outside "
               "test" if runner.use_folds else "its validation stays on one fold (no people "
               "in the data, or confirm.folds: false)")
        session.say(f"stage {stage.name}: folds {stage.folds}, but {why}: each search trial "
                    f"is the mean over {runner.search_folds} fold(s)")
    trials = _search(session, stage, study, runner, progress, shared)
    incumbent = _incumbent(trials, bool(family))
    if confirm is None or incumbent is None:
        # An incumbent that failed (diverged, say) leaves nothing to race a candidate against.
        why = ("no confirmation" if confirm is None else "not raced: the incumbent failed, so "
               "there was nothing to confirm it against")
        return pick_winner(trials, stage, why), trials
    shared = read(study)  # the plan, where it is made; the rounds a race has queued
    plan = _confirm_plan(session, stage, study, runner, incumbent.number, shared)
    # The repeats train in the stage's repeats study (a plan made before there was one
    # keeps them in the stage's own study), numbered after the stage's trials.
    offset = plan.first_repeat
    into = study if offset is None else repeats_study(session.cfg, progress.index,
                                                      session.storage)
    runner = runner.for_repeats(into, offset or 0)
    progress.numbered(offset or 0, 0 if into is study else sum(counts_as_done(t)
                                                               for t in trials))
    searched = trials  # settled: the repeats study is all that changes from here

    def whole(repeated: list[FrozenTrial]) -> list[FrozenTrial]:  # _drain's last read
        return repeated if into is study else joined(searched, repeated, plan.first_repeat)

    if confirm.racing:
        return _race(session, stage, study, into, runner, progress, plan, whole,
                     shared.get(StageKey.ROUNDS_QUEUED, 0))
    _queue_repeats(study, into, "repeats", StageKey.QUEUED,
                   [plan.incumbent, *plan.candidates], 1, plan.repeats - 1, shared)
    trials = whole(_drain(session, into, runner, progress))
    return decide(trials, stage, plan.incumbent, plan.candidates, confirm.min_gain), trials


def _runner(session: Session, stage: StageConfig, study: optuna.Study, stage_run: str,
            shared: dict[str, Any]) -> TrialRunner:
    """What trains a stage's trials: its starting point (carried + fixed), the previous
    family's configuration where it switched, and whether repeats change fold."""
    base = apply_overrides(session.cfg.base, {**shared[StageKey.CARRIED], **stage.fixed})
    reference = (apply_overrides(session.cfg.base, shared.get(StageKey.REFERENCE) or {})
                 if shared.get(StageKey.SWITCHED_FROM) else None)
    confirm = stage.confirmation
    use_folds = (confirm.folds if confirm is not None and confirm.folds is not None
                 else session.data.splits.grouped)
    return TrialRunner(session, stage, study, stage_run, base, shared[StageKey.DECIDED_BY],
                       shared[StageKey.UID], use_folds, reference, show_bar=session.bars)


def restore_checkpoints(session: Session) -> None:
    """The final configuration's repeats are what the final score, evaluate and export
    read: one whose checkpoint was deleted since (by hand, or a lost artifact file) is
    trained again with its settings, seed and fold, and put back on its run."""
    if not session.results:
        return
    index = len(session.cfg.stages) - 1
    stage = session.cfg.stages[index]
    study = create_stage_study(session.cfg, index, session.storage, session.worker)[0]
    shared = read(study)
    view = StageView(stage, stage_trials(study), session.results[-1], {})
    runner = None
    for t in view.repeats():
        if not session.mirror.has_checkpoint(t.user_attrs[TrialKey.RUN]):
            runner = runner or _runner(session, stage, study, shared[StageKey.STAGE_RUN],
                                       shared)
            runner.retrain(t)


def _incumbent(trials: list[FrozenTrial], switching: bool = False) -> FrozenTrial | None:
    """The configuration candidates must beat: the stage's starting point, or, in a stage
    that switches family, the previous family's configuration."""
    done = [t for t in trials if role_of(t) == Role.INCUMBENT
            and t.state == TrialState.COMPLETE and is_previous_family(t) == switching]
    return done[0] if done else None


def _search(session: Session, stage: StageConfig, study: optuna.Study, runner: TrialRunner,
            progress: StageProgress, shared: dict[str, Any]) -> list[FrozenTrial]:
    """The incumbent, the seed trials and the search budget (queued up to it first), each a
    queued trial that one worker takes. `timeout` bounds the search across reruns: the
    seconds spent by earlier runs are kept in the study (time between runs does not count;
    workers share one clock). The stage's trials once none waits or runs."""
    spent, started = shared.get(StageKey.SEARCH_SECONDS, 0.0), time.monotonic()

    def elapsed() -> float:
        return spent + time.monotonic() - started

    idle, finished = Idle(session), None
    # The process's first look for dead trials of the stage reads its trials for the budget.
    trials: list[FrozenTrial] | None = _fit_budget(
        session, study, stage, shared,
        _close_lost_runs(session, study) or study.get_trials(deepcopy=False))
    while True:
        signals.check()
        trials = _close_lost_runs(session, study) or trials or study.get_trials(deepcopy=False)
        if finished is not None:  # its line, counted with this read
            progress.finished(finished, trials)
            finished = None
        done = sum(counts_toward_budget(t) for t in trials)
        over = reached_target(trials, stage) or done >= stage.trials or bool(
            stage.timeout and elapsed() > stage.timeout)

        wanted = _baselines if over else _any  # once over, only the baselines still run
        if any(t.state == TrialState.WAITING and wanted(t) for t in trials):
            try:
                finished = run_one(study, runner.objective, wanted, trials, session.worker)
            finally:
                if stage.timeout:  # the search time so far, for a rerun's timeout
                    write(study, StageKey.SEARCH_SECONDS,
                          max(elapsed(), read(study).get(StageKey.SEARCH_SECONDS, 0.0)))
            idle.after_take(finished, trials)
            trials = None
            continue
        if not any(t.state == TrialState.RUNNING for t in trials):
            if over and release_unused(study, trials):
                trials = study.get_trials(deepcopy=False)
            return trials
        idle.wait(trials)  # other workers still run trials of this stage
        trials = None


def _baselines(t: FrozenTrial) -> bool:
    return role_of(t) in (Role.INCUMBENT, Role.SEED)


def _any(t: FrozenTrial) -> bool:
    return True


def run_one(study: optuna.Study, objective: Callable[[optuna.Trial], float],
            accept: Callable[[FrozenTrial], bool] = _any,
            trials: list[FrozenTrial] | None = None, spread: int = 0) -> int | None:
    """Take one queued trial of `study` (one worker alone takes each; `trials`: the study's,
    just read), run `objective` on it and tell Optuna how it ended: its value, pruned, or
    failed (its own failure, TrialFailed: the search goes on; anything else is raised once
    told). The trial's number (the caller's next read of the study has it as it ended);
    None when none waited."""
    trial = take_waiting(study, accept, trials, spread)
    if trial is None:
        return None
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        tell(study, trial, state=TrialState.PRUNED)
    except TrialFailed:
        tell(study, trial, state=TrialState.FAIL)
    except BaseException as e:
        try:
            _stopped_before_training(study, trial, e)
            study.tell(trial, state=TrialState.FAIL)
        except Exception:  # the store itself may be what failed: the first error stands
            pass
        raise
    else:
        tell(study, trial, value)
    return trial.number


def _stopped_before_training(study: optuna.Study, trial: optuna.Trial,
                             error: BaseException) -> None:
    """A trial stopped before its training's own policy saw it (trial.TrialRunner._train
    queues what it stops): queued again here, with why."""
    if TrialKey.FAILURE in storage_of(study).get_trial_user_attrs(trial_id_of(trial)):
        return
    why = (Failure.INTERRUPTED if isinstance(error, KeyboardInterrupt | SystemExit)
           else Failure.STOPPED if environment_fault(error) is not None else Failure.CRASHED)
    trial.set_user_attr(TrialKey.FAILURE, why)
    Requeue()(study, storage_of(study).get_trial(trial_id_of(trial)))


def _confirm_plan(session: Session, stage: StageConfig, study: optuna.Study,
                  runner: TrialRunner, incumbent: int, shared: dict[str, Any]) -> ConfirmPlan:
    """Which configurations are repeated, decided once, by the worker that claims the plan:
    the top distinct candidates and the incumbent. The fixed rule queues repeats 1..R-1
    once it is made; a race queues its rounds as it goes (_race). `shared`: the stage's
    keys, just read."""
    confirm = stage.confirm
    stored = shared.get(StageKey.PLAN)
    if stored is None and does_job(study, StageKey.PLAN, StageKey.PLAN):
        trials = study.get_trials(deepcopy=False)
        switching = runner.reference is not None
        plain = settings_digest(runner.reference if switching else runner.base)

        def same_as_incumbent(t: FrozenTrial) -> bool:
            return settings_digest(apply_overrides(runner.base, decode_params(t.params))) == plain

        candidates = plan_candidates(trials, stage, confirm.top, same_as_incumbent, switching)
        unraced: dict[str, float] = {}
        if confirm.racing and confirm.search_gain:
            gains = search_gains(trials, stage, incumbent, candidates)
            unraced = {str(c): gain for c, gain in gains.items() if gain <= 0}
            candidates = [c for c in candidates if gains[c] > 0]
        write(study, StageKey.PLAN, asdict(ConfirmPlan(
            incumbent, candidates, first_repeat=len(trials),
            rule="race" if confirm.racing else "fixed",
            repeats=confirm.max_repeats if confirm.racing else confirm.repeats,
            by=worker_id(), unraced=unraced)))
    if stored is None:  # made a moment ago, by this worker or another one
        stored = read(study)[StageKey.PLAN]
    plan = ConfirmPlan.of(stored)
    if plan.unraced:
        session.say(f"stage {stage.name}: trial{'s' if len(plan.unraced) != 1 else ''} "
                    f"{', '.join(plan.unraced)} did not beat the incumbent on the search's "
                    f"fold and seed: not raced (confirm.search_gain)")
    if plan.rule == "race":
        if plan.candidates:
            session.say(f"stage {stage.name}: racing trials {plan.candidates} against the "
                        f"incumbent (trial {plan.incumbent}) on fresh paired repeats "
                        f"({confirm.min_repeats} to {confirm.max_repeats})")
        return plan
    session.say(f"stage {stage.name}: confirming trials {plan.candidates} against the "
                f"incumbent (trial {plan.incumbent}) over {plan.repeats} paired repeats")
    return plan


def _queue_repeats(study: optuna.Study, into: optuna.Study, name: str, done: str,
                   targets: list[int], first: int, last: int, shared: dict[str, Any]) -> None:
    """Queue repeats first..last of `targets` (trials of the stage's study) into the repeats
    study `into`, once: the worker that claims `name` does it and then sets `done`; the
    others wait for that (and do it themselves if the holder died). `shared`: the stage's
    keys, just read."""
    if done in shared or not does_job(study, name, done):
        return
    if done in read(study):
        return
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for repeat in range(first, last + 1):
        for target in targets:
            of = by_number[target]
            as_it_came = role_of(of) == Role.INCUMBENT  # either family's: no params
            into.enqueue_trial(
                {} if as_it_came else dict(of.params),
                user_attrs={TrialKey.ROLE: Role.CONFIRM, TrialKey.CONFIRMS: target,
                            TrialKey.REPEAT: repeat,
                            **({TrialKey.INCUMBENT: True} if as_it_came else {}),
                            **({TrialKey.PREVIOUS_FAMILY: True} if is_previous_family(of)
                               else {})})
    write(study, done, True)


def _race(session: Session, stage: StageConfig, study: optuna.Study, into: optuna.Study,
          runner: TrialRunner, progress: StageProgress, plan: ConfirmPlan,
          whole: Callable[[list[FrozenTrial]], list[FrozenTrial]], queued: int
          ) -> tuple[StageResult, list[FrozenTrial]]:
    """Rounds of fresh paired repeats until the race is decided (search/racing.py). The
    verdict is replayed from the trials at every look, so workers and reruns agree; the
    rounds queued so far are read before draining, so a look never counts a round another
    worker queued a moment ago and nobody has run yet (`queued`: read before the first;
    a count read too early only costs a look). `whole`: the stage's trials from the
    repeats study's (its search trials are settled)."""
    confirm, incumbent, candidates = stage.confirm, plan.incumbent, plan.candidates
    # The study's last stage with nothing to race still trains the incumbent's first round
    # (min_repeats fresh repeats, reused where an earlier stage trained the same ones): the
    # final score and the ensemble stand on those repeats, and one trial has no seed spread.
    last = progress.index == len(session.cfg.stages) - 1
    floor = confirm.min_repeats if last and not candidates else 0
    while True:
        trials = whole(_drain(session, into, runner, progress))
        verdict = race_verdict(trials, stage, incumbent, candidates, queued)
        if (verdict.done or not candidates) and queued >= floor:
            return decide_race(trials, stage, incumbent, candidates, verdict,
                               plan.unraced), trials
        if not candidates:
            session.say(f"stage {stage.name}: nothing to race; the incumbent's {floor} "
                        f"fresh repeats for the final score's seed spread")
        elif queued:
            session.say(f"stage {stage.name}: after {queued} round{'s' if queued != 1 else ''}"
                        f": {race_line(stage, verdict)}")
        upto = min(confirm.max_repeats, max(queued + 1, confirm.min_repeats))
        progress.planned += max(0, upto - max(queued, confirm.min_repeats)) * (
            len(verdict.alive) + 1)  # a round past the planned minimum
        shared = read(study)
        _queue_repeats(study, into, round_key(upto), queued_key(round_key(upto)),
                       [incumbent, *verdict.alive], queued + 1, upto, shared)
        queued = shared.get(StageKey.ROUNDS_QUEUED, 0)  # read before the next drain
        if queued < upto:  # read again: never written lower than another worker wrote it
            queued = read(study).get(StageKey.ROUNDS_QUEUED, 0)
            if queued < upto:
                write(study, StageKey.ROUNDS_QUEUED, upto)
                queued = upto


def _drain(session: Session, study: optuna.Study, runner: TrialRunner,
           progress: StageProgress) -> list[FrozenTrial]:
    """Run queued trials (confirmation repeats, retries) until none waits or runs; the
    study's trials then."""
    idle, finished = Idle(session), None
    while True:
        signals.check()
        trials = _close_lost_runs(session, study) or study.get_trials(deepcopy=False)
        if finished is not None:  # its line, counted with this read
            progress.finished(finished, trials)
            finished = None
        if any(t.state == TrialState.WAITING for t in trials):
            finished = run_one(study, runner.objective, trials=trials, spread=session.worker)
            idle.after_take(finished, trials)
        elif any(t.state == TrialState.RUNNING for t in trials):
            idle.wait(trials)
        else:
            return trials


class Idle:
    """The pause of a worker with nothing to run while others finish theirs: 1 s (with many
    workers, a sixteenth of a second a worker, 4 s at most), doubling while it stays idle up
    to 4 s, or, with many workers, up to half a second a worker (30 s at most), a little
    jittered. Each look reads the stores: all the workers together look about twice a
    second however many there are (64 looking every second kept the storage proxy busy
    with nothing else), and a fleet that goes idle at once does not start with a burst of
    looks. The worker that finishes a race's round queues the next and runs it at once, so
    the others joining later costs little."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.reset()

    def reset(self) -> None:
        self.seconds = min(4.0, max(1.0, self.session.workers_seen / 16))

    def after_take(self, ran: int | None, trials: list[FrozenTrial]) -> None:
        """After a try at the waiting trials of `trials` (just read): where it ran one, the
        pause starts again from its first; where others had taken every one since the
        read, the worker waits its pause as it was before it looks again (a look at once
        finds them running, and 64 workers that each lost a race's new repeat all looked
        every 4 s again)."""
        if ran is not None:
            self.reset()
        else:
            self.wait(trials)

    def wait(self, trials: list[FrozenTrial]) -> None:
        """Pause; `trials` (just read) tell how many workers the study has (the most this
        process has seen of its stages)."""
        session = self.session
        signals.check()
        signals.wait(jittered(self.seconds))  # up to 30 s: a stop ends it
        session.workers_seen = max(session.workers_seen,
                                   len({t.user_attrs.get(TrialKey.WORKER) for t in trials}))
        self.seconds = min(max(4.0, min(30.0, session.workers_seen / 2)), self.seconds * 2)


# How often a worker between trials looks for trials whose worker died: every heartbeat with
# a few workers, less often with many (64 workers looking every few seconds were most of the
# storage's load; a silent one is dead only after GRACE_S anyway). The first look of a
# process is at once (a rerun after kill -9 need not wait); its first look at a later stage
# after the usual pause (a fleet reaching a stage together looked at once, 64 reads at a time).
LOOK_S = HEARTBEAT_S


def _close_lost_runs(session: Session, study: optuna.Study) -> list[FrozenTrial] | None:
    """Trials whose worker died without a word: queued again, and said so in MLflow instead
    of leaving RUNNING. Looked for at most every LOOK_S (jittered) per stage and process, or
    half a second a worker where there are many (all of them together about twice a
    second). The study's trials where it looked (read for the look), else None."""
    now, name = time.monotonic(), study.study_name
    every = max(LOOK_S, min(2 * GRACE_S, session.workers_seen / 2))  # many: each less often
    due = now + jittered(every)  # the next look
    if name not in session.lost_looked and session.lost_looked:  # looked elsewhere before
        session.lost_looked[name] = due
    if now < session.lost_looked.get(name, now):
        return None
    session.lost_looked[name] = due
    first = name not in session.lost_swept
    session.lost_swept.add(name)
    lost, trials = fail_dead_trials(study, every=first, since=session.began)
    for t in lost:
        run_id = t.user_attrs.get(TrialKey.RUN)
        if run_id is None:  # died before it named its run, or before it opened one
            session.mirror.unnamed_runs_closed(study.study_name, t.number)
            continue
        if run_id not in session.closed_runs:
            session.mirror.lost_trial_closed(run_id, t.user_attrs.get(TrialKey.FAILURE))
        session.closed_runs.add(run_id)
    return trials


def _initialize_stage(session: Session, study: optuna.Study, index: int,
                      carried: dict[str, Any], decided_by: dict[str, str],
                      reference: dict[str, Any] | None) -> None:
    """Done once per stage, by the worker that created its study: its MLflow run, its keys,
    and its queue (the incumbent, a second incumbent where the family switches, the seed
    trials, the search budget). `carried` goes last, as the sign for the other workers that
    the stage is ready."""
    stage = session.cfg.stages[index]
    stage_run = session.mirror.stage_opened(index, stage, carried)
    study.set_metric_names([stage.metric])
    family = switched_family(session.cfg, stage, carried, reference)
    for key, value in {StageKey.STAGE_RUN: stage_run, StageKey.INDEX: index,
                       StageKey.UID: uuid.uuid4().hex, StageKey.DECIDED_BY: decided_by,
                       StageKey.REFERENCE: reference, StageKey.SWITCHED_FROM: family,
                       StageKey.START: stage_start(session.cfg, stage, carried)}.items():
        write(study, key, value)
    if not any(TrialKey.ROLE in t.user_attrs for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial({}, user_attrs={TrialKey.ROLE: Role.INCUMBENT})
        if family:
            study.enqueue_trial({}, user_attrs={TrialKey.ROLE: Role.INCUMBENT,
                                                TrialKey.PREVIOUS_FAMILY: True})
        for seeded in stage.seed_trials:
            study.enqueue_trial(encode_params(seeded.params), user_attrs={
                TrialKey.ROLE: Role.SEED, TrialKey.SEED_TRIAL: True,
                **({TrialKey.REPORTED: seeded.reported} if seeded.reported is not None
                   else {})})
        queue_budget(study, max(0, stage.trials - len(stage.seed_trials)))
        write(study, StageKey.BUDGET, stage.trials)
    write(study, StageKey.CARRIED, carried)

