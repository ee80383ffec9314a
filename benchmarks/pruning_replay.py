"""What each pruner costs, by replaying recorded learning curves (no training): the curves
of real studies run without pruning (benchmarks/data/curves_*.json, or any result that
end_to_end.run wrote: each stage's `curves`) are fed, epoch by epoch, to the pruner a stage would build
(search/store.make_pruner, the real Optuna and asl-sweep pruners, on an in-memory Optuna
study), trial after trial in the order they ran and in shuffled orders of the search trials.

For every pruner it reports
- the pruned share: the share of the search trials' epochs not trained (search trials only:
  the incumbent, seed trials and race repeats are never pruned, as in a study);
- false prune (the issue's measure): the share of cases (a stage in one order) in which the
  trial the stage adopted was pruned, over the stages that adopted a search trial (a seed
  trial is never pruned: a stage that adopted one is no case);
- lost candidate: the share of cases in which the stage's race candidate was pruned: its
  best seed or search trial by value, where that is a search trial that ended above the
  incumbent (a trial the race would have looked at; whether it then adopted it or not);
- better trials lost: the share of search trials that ended above the incumbent that were
  pruned.
Besides the pruners a stage can name, it replays one rule that was tried and not shipped
(LevelFutility below): a search-phase futility rule that also stops a trial level with the
incumbent from a share of the epochs on.
A pruned candidate never reaches the race: the stage races the next best, or keeps the
incumbent.

    .venv/bin/python -m benchmarks.pruning_replay [--orders 200] [RESULT.json ...]
    .venv/bin/python -m benchmarks.pruning_replay --record report|cnn   # the curves, once

--record runs the curves this replays by default, every stage with `pruner: none`: report
(report.yaml's five MLP goals on the ASL photos, --cpu-sized as benchmarks/time_to_quality.py
runs them; about 45 minutes on 2 cores) and cnn (cnn.yaml as shipped, on its built-in
people). The curves are committed as data (benchmarks/data/curves_*.json); the run's figures
go to results/ as any run's.

Only stages recorded with `pruner: none` and a metric (not a target) are replayed: a curve
cut by a pruner cannot say what would have followed."""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from asl_sweep.search.pruning import IncumbentPruner
from asl_sweep.search.state import Role, TrialKey
from asl_sweep.search.store import make_pruner
from asl_sweep.settings.spec import StageConfig
from benchmarks.common import ASL, write_result
from benchmarks.end_to_end import run
from benchmarks.time_to_quality import CPU_SIZED

PRUNERS = ["median", "incumbent", "incumbent:0~1", "best", "best:0~1", "halving", "hyperband",
           "incumbent^0.5", "incumbent^0.67@0"]
DATA = Path(__file__).parent / "data"  # recorded curves, committed
DEFAULT_SOURCES = ["curves_report_mlp", "curves_cnn"]  # RECORDS' files


def stages_of(result: dict, source: str) -> list[dict]:
    """The replayable stages of one benchmark result."""
    runs = [result] if "stages" in result else [v for v in result.values()
                                                 if isinstance(v, dict) and "stages" in v]
    found = []
    for one in runs:
        for stage in one["stages"]:
            c = stage.get("curves")
            if not c or c["pruner"] != "none" or c["target"] is not None:
                continue
            trials = [t for t in c["trials"] if t["state"] == "COMPLETE" and t["curve"]
                      and t["role"] != Role.CONFIRM]
            if sum(t["role"] == Role.SEARCH for t in trials) < 2:
                continue
            found.append({"source": source, "stage": stage["stage"], "metric": c["metric"],
                          "direction": c["direction"], "carried": c["carried"],
                          "status": c["status"], "trials": trials})
    return found


def _sign(stage: dict) -> int:
    return 1 if stage["direction"] == "maximize" else -1


def adopted(stage: dict) -> int | None:
    """The search trial the stage adopted, if it adopted one."""
    search = {t["number"] for t in stage["trials"] if t["role"] == Role.SEARCH}
    return stage["carried"] if (stage["status"] == "adopted"
                                and stage["carried"] in search) else None


def better(stage: dict) -> list[dict]:
    """The search trials that ended above the incumbent."""
    incumbent = next(t for t in stage["trials"] if t["role"] == Role.INCUMBENT)
    sign = _sign(stage)
    return [t for t in stage["trials"] if t["role"] == Role.SEARCH
            and sign * t["value"] > sign * incumbent["value"]]


def candidate(stage: dict) -> int | None:
    """The race's first candidate, where it is a search trial above the incumbent."""
    sign = _sign(stage)
    pool = [t for t in stage["trials"] if t["role"] in (Role.SEARCH, Role.SEED)]
    best = max(pool, key=lambda t: (sign * t["value"], -t["number"]))
    return best["number"] if best in better(stage) else None


def replay(stage: dict, pruner: str, order: list[dict]) -> dict:
    """One pass of the stage's trials, in `order`, under `pruner`: the epochs each trial
    trained and which were pruned."""
    epochs = max(len(t["curve"]) for t in stage["trials"])
    # named, so Hyperband (which assigns trials to brackets by a hash of the study's name)
    # replays the same way every run
    study = optuna.create_study(direction=stage["direction"],
                                study_name=f"{stage['source']}:{stage['stage']}",
                                pruner=pruner_for(pruner, stage, epochs),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    trained, full, pruned = 0, 0, set()
    for t in order:
        trial = study.ask()
        trial.set_user_attr(TrialKey.ROLE, t["role"])
        stopped = None
        for epoch, value in t["curve"]:
            trial.report(value, epoch)
            if t["role"] == Role.SEARCH and trial.should_prune():
                stopped = epoch
                break
        if t["role"] == Role.SEARCH:
            full += len(t["curve"])
            trained += stopped if stopped is not None else len(t["curve"])
        if stopped is None:
            study.tell(trial, t["value"])
        else:
            pruned.add(t["number"])
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return {"trained": trained, "full": full, "pruned": pruned}


class LevelFutility(IncumbentPruner):
    """Tried, not shipped (the thirty-fifth issue's search-phase futility, replayed only):
    the incumbent rule, and from epoch `start` on also a trial that is not ahead of the
    incumbent at the same epochs by more than `lead` (None: the margin, the incumbent's own
    noise) on average over its last `window` epochs, and not pulling further ahead than over
    the `window` before: it cannot end far enough ahead to be worth a race."""

    def __init__(self, base: IncumbentPruner, start: int):
        super().__init__("maximize" if base.sign > 0 else "minimize", warmup=base.warmup,
                         floor=base.floor, width=base.width, against=base.against,
                         top=base.top, window=base.window, pace=base.pace)
        self.start, self.lead = start, None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if super().prune(study, trial):
            return True
        step = trial.last_step
        if step is None or step < max(self.start, self.warmup) or self.window == 0:
            return False
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        incumbent = self.incumbent(trials)
        if incumbent is None:
            return False
        theirs = incumbent.intermediate_values
        leads = [self.sign * (v - theirs[e]) for e, v in
                 sorted(trial.intermediate_values.items()) if e in theirs]
        if len(leads) < 2 * self.window:
            return False
        now, before = self.windows(leads)
        limit = self.lead if self.lead is not None else max(
            self.floor, self.width * self.spread(trials, incumbent, step))
        return now <= limit and now <= before


def pruner_for(name: str, stage: dict, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner a stage naming `name` builds (search/store.make_pruner). Variants of
    `incumbent` and `best` to compare, not settings: "/K" a warmup of epochs // K, ":W" a
    trend window of W epochs (0: no trend), "~P" a pace of P, "^F" the level futility above
    from F of the epochs on, "@L" its lead (default the margin); the rest as shipped. The
    first version of the rule is "incumbent:0~1" (the gap at one epoch, the same epoch)."""
    base = re.split(r"[/:~^@]", name, maxsplit=1)[0]
    # The pruner reads the stage's metric, direction and pruner; a space is what a stage must
    # search (an empty one is refused), not what the pruner reads: the recorded curves are.
    cfg = StageConfig(name=stage["stage"], metric=stage["metric"],
                      direction=stage["direction"], pruner=base,
                      space={"lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    pruner = make_pruner(cfg, epochs)
    start = re.search(r"\^([0-9.]+)", name)
    if start:
        pruner = LevelFutility(pruner, max(1, round(float(start.group(1)) * epochs)))
    for mark, value in re.findall(r"([/:~@])([0-9.]+)", name):
        if mark == "@":
            pruner.lead = float(value)
        elif mark == "/":
            pruner.warmup = max(1, epochs // int(value))
        elif mark == ":":
            pruner.window = int(value)
        else:
            pruner.pace = float(value)
    return pruner


def orders(stage: dict, n: int, rng: random.Random) -> list[list[dict]]:
    """The recorded order first, then shuffles of the search trials (the incumbent and the
    seed trials always run first, as in a study)."""
    first = [t for t in stage["trials"] if t["role"] != Role.SEARCH]
    search = [t for t in stage["trials"] if t["role"] == Role.SEARCH]
    out = [first + search]
    for _ in range(n - 1):
        shuffled = search[:]
        rng.shuffle(shuffled)
        out.append(first + shuffled)
    return out


# What --record runs: the file its curves go to, the study, its data and overrides, and the
# stages it runs.
RECORDS = {
    # report.yaml's five MLP goals on the ASL photos, as time_to_quality runs them
    "report": ("curves_report_mlp", "sweeps/report.yaml", ASL, CPU_SIZED, 5),
    # cnn.yaml as shipped, on its built-in people (120 signers, 30 of them test)
    "cnn": ("curves_cnn", "sweeps/cnn.yaml", None, [], None),
}


def record(which: str) -> None:
    """Run a study with no pruning anywhere; keep its curves as data/<name>.json."""
    from asl_sweep.settings.studyfile import load_study

    name, study, data, overrides, stages = RECORDS[which]
    unpruned = [f"stages.{i}.pruner=none" for i in range(len(load_study(study).stages))]
    result = run(study, data, [*overrides, *unpruned], None, None, stages=stages)
    print(f"written to {write_result(name, result)}")
    DATA.mkdir(exist_ok=True)
    keep = {k: result[k] for k in ("study", "data", "overrides", "wall_s", "final_test_mean")}
    keep["stages"] = [{"stage": s["stage"], "status": s["status"], "curves": s["curves"]}
                      for s in result["stages"]]
    (DATA / f"{name}.json").write_text(json.dumps(keep, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", choices=sorted(RECORDS),
                        help="run the study whose curves are replayed, and stop")
    parser.add_argument("sources", nargs="*", default=DEFAULT_SOURCES,
                        help="recorded curves (names under benchmarks/data, or paths to any "
                        "benchmark result with curves)")
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--pruners", default=",".join(PRUNERS),
                        help="comma-separated; variants of incumbent and best: /K a warmup "
                        "of epochs // K (shipped: epochs // 10), :W a trend window of W epochs "
                        "(shipped: max(2, epochs // 20); 0: no trend), ~P a pace of P "
                        "(shipped: 2/3); incumbent:0~1 is the rule before")
    args = parser.parse_args()
    if args.record:
        record(args.record)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stages = []
    for source in args.sources:
        path = Path(source) if source.endswith(".json") else DATA / f"{source}.json"
        if not path.exists() and source in DEFAULT_SOURCES:
            print(f"{path}: not recorded yet (--record)")
            continue
        stages += stages_of(json.loads(path.read_text()), path.stem)
    if not stages:
        raise SystemExit(f"no stage recorded without pruning in {', '.join(args.sources)}")
    rng = random.Random(0)
    # each stage's trials whose loss is counted, by measure (found once, not per case)
    watched = [{"false": [n for n in [adopted(s)] if n is not None],
                "candidate": [n for n in [candidate(s)] if n is not None],
                "better": [t["number"] for t in better(s)]} for s in stages]
    cases = [(s, w, o) for s, w in zip(stages, watched, strict=True)
             for o in orders(s, args.orders, rng)]
    rows = []
    for pruner in args.pruners.split(","):
        trained = full = 0
        counts = {key: [0, 0] for key in watched[0]}  # [lost, cases]
        for stage, watch, order in cases:
            r = replay(stage, pruner, order)
            trained, full = trained + r["trained"], full + r["full"]
            for key, numbers in watch.items():
                counts[key][0] += sum(n in r["pruned"] for n in numbers)
                counts[key][1] += len(numbers)
        share = {k: round(lost / n, 4) if n else None for k, (lost, n) in counts.items()}

        rows.append({"pruner": pruner, "pruned_share": round(1 - trained / full, 4),
                     "false_prune": share["false"], "false_prune_cases": counts["false"][1],
                     "lost_candidate": share["candidate"],
                     "candidate_cases": counts["candidate"][1],
                     "better_lost": share["better"], "better_trials": counts["better"][1]})
    print(f"{len(stages)} stages ({', '.join(s['source'] + ':' + s['stage'] for s in stages)}), "
          f"{args.orders} orders each")
    print("| pruner | search epochs pruned | false prune (adopted trial pruned) | race "
          "candidate pruned | trials above the incumbent pruned |")
    print("|---|---|---|---|---|")

    def pct(x):
        return "no case" if x is None else f"{x:.1%}"

    for r in rows:
        print(f"| {r['pruner']} | {r['pruned_share']:.1%} | {pct(r['false_prune'])} "
              f"({r['false_prune_cases']} cases) | {pct(r['lost_candidate'])} "
              f"({r['candidate_cases']}) | {pct(r['better_lost'])} ({r['better_trials']}) |")
    # rows first: the front page shows a result's first table
    result = {"sources": args.sources, "orders": args.orders, "rows": rows,
              "stages": [{"source": s["source"], "stage": s["stage"], "status": s["status"],
                          "adopted": adopted(s), "candidate": candidate(s),
                          "above_incumbent": len(better(s)), "trials": len(s["trials"])}
                         for s in stages]}
    name = "pruning_replay" + ("" if args.sources == DEFAULT_SOURCES
                               else "_" + "_".join(Path(s).stem for s in args.sources))
    print(f"written to {write_result(name, result)}")


if __name__ == "__main__":
    main()
