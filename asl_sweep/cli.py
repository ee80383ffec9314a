"""Command line: parse arguments, build typed settings once, call the functions that work.

Errors end here, in one place: a UserError is one line on stderr and its exit code (2 for
what the user can fix, 3 for a stage gate that stopped the run), Ctrl-C, SIGTERM and a
closed terminal (SIGHUP) exit 130, and anything else is a bug that surfaces as its traceback
(exit 1). Logging and warning filters are set here, when the program starts, never when a
module is imported. Each command validates its settings before it imports torch, Optuna or
MLflow, so a bad setting is reported in well under a second."""

from __future__ import annotations

import argparse
import difflib
import gc
import logging
import os
import sys
import warnings
from pathlib import Path

from asl_sweep.runtime import environment, machine, signals
from asl_sweep.runtime.errors import (
    ConfigError,
    UserError,
    WriteError,
    as_text,
    environment_fault,
    is_text,
    not_here,
    not_text_folder,
)
from asl_sweep.runtime.workspace import Workspace, shown
from asl_sweep.settings.spec import StudyConfig
from asl_sweep.settings.studyfile import build_study, is_study_file, load_study, study_named


def _home(text: str) -> Path:
    """--home: a folder; an empty one would be Path(""), the current folder, silently."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give the folder for the study's records "
                                          "(default ./mlruns)")
    return Path(text).expanduser()  # a quoted '~/x', or one from a file, met no shell


def _path(text: str) -> Path:
    """A path argument; an empty one would be Path(""), the current folder, silently."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: an empty path (it would be the current "
                                          "folder); give one")
    if (line := not_here(text)) is not None:
        raise argparse.ArgumentTypeError(line)
    return Path(text).expanduser()


# The forms `export` writes (results/export.FORMATS, which imports torch).
EXPORT_FORMATS = ("torchscript", "onnx", "mlflow")


def _formats(text: str) -> list[str]:
    """--format: one form, several with commas (`--format onnx,mlflow` was an invalid
    choice), or all."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in (*EXPORT_FORMATS, "all")]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {'no form named ' + ', '.join(unknown) if unknown else 'no form'}; "
            f"give {', '.join(EXPORT_FORMATS)} or all, or several with commas (onnx,mlflow)")
    return list(EXPORT_FORMATS) if "all" in names else list(dict.fromkeys(names))


# What a file the report or an export writes is called: an --out that ends so names a file,
# where --out takes the folder they go in (`--out r.md` made a folder r.md/).
_FILE_SUFFIXES = (".md", ".html", ".htm", ".pdf", ".onnx", ".pt", ".pth", ".zip")


def _out_folder(text: str) -> Path:
    """--out of report and export: a folder, whose path the report and the MLflow store
    keep (one named in another encoding was a UnicodeEncodeError traceback)."""
    path = _path(text)
    if not is_text(path.absolute()):
        raise argparse.ArgumentTypeError(not_text_folder(as_text(text)))
    if path.suffix.lower() in _FILE_SUFFIXES and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text}: names a file; --out takes the folder the files go in (e.g. "
            f"--out {path.parent / path.stem})")
    return path


def _default_home() -> Path:
    return Path(environment.text(environment.HOME)).expanduser()  # an env file's ~/mlruns


def _study_args(p: argparse.ArgumentParser, search: bool = True,
                without: str | None = None) -> None:
    """The arguments that say which study, data and stores. `search`: the command reads the
    Optuna store and the trial budget (`train` does neither, and refuses them), and finds a
    study there by its name alone (`_recorded`). `without`: what the command does when no
    study is given (where it may be left out)."""
    p.add_argument("study", type=_path, nargs="?" if without else None,
                   help="study YAML, e.g. sweeps/quick.yaml"
                   + (", or the name of a study recorded in --home (read with the settings "
                      "its last run recorded)" if search else "")
                   + (f"; without one: {without}" if without else ""))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting by key path, e.g. base.epochs=5 or "
                        "stages.0.space.cnn.kernel=[3, 5] (repeatable)")
    p.add_argument("--data", type=_path, help="ImageFolder root (one folder per class)")
    p.add_argument("--home", type=_home, default=_default_home(),
                   help="folder for databases, artifacts and caches (default ./mlruns)")
    p.add_argument("--tracking", default=environment.from_variable(environment.TRACKING),
                   help="MLflow tracking URI (default $ASL_SWEEP_TRACKING, else sqlite in "
                        "--home)")
    if search:
        p.add_argument("--storage", default=environment.from_variable(environment.STORAGE),
                       help="Optuna storage URL (default $ASL_SWEEP_STORAGE, else sqlite in "
                            "--home)")
        p.add_argument("--trials", type=int, help="trial budget of every stage")
    else:
        p.set_defaults(storage=None, trials=None)
    p.add_argument("--epochs", type=int, help="epochs of every stage (base and each stage's "
                   "fixed epochs): a quick look")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asl-sweep")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


class _Parser(argparse.ArgumentParser):
    """argparse, saying which command a mistyped one most likely meant (`asl-sweep rn`:
    Python 3.11's argparse lists them all and leaves the spelling to the user)."""

    def error(self, message: str):
        import re

        from asl_sweep.settings.config import closest

        typed = re.match(r"argument command: invalid choice: '([^']*)'", message)
        meant = closest(typed[1], COMMANDS) if typed else None
        if meant:
            message = f"{typed[1]!r} is not a command; did you mean {meant}?"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="asl-sweep", description="Staged, fully recorded hyperparameter search for "
        "image classifiers (Optuna + MLflow + PyTorch).")
    parser.add_argument("--version", action="version", version=f"asl-sweep {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) the staged search of a study")
    _study_args(run)
    run.add_argument("--workers", type=_workers_arg,
                     help="trainings side by side on this machine: a number, or auto (one "
                          "per CPU core with a thread each, or one per GPU; one where the "
                          "SQLite stores lie on a network file system; default: auto, or "
                          "$ASL_SWEEP_WORKERS)")
    run.add_argument("--per-device", type=_per_device_arg, default=1, metavar="K",
                     help="on GPUs: K workers share each GPU, each with 1/K of its memory "
                          "(small trials that leave a big GPU idle; default 1)")
    run.add_argument("--dry-run", action="store_true",
                     help="check the settings and the data, split it as a run will (no "
                     "image decoded), and say what each stage will search and how many "
                     "trainings it plans, and the final's (final_model: refit trains each "
                     "final repeat again), and how many workers train side by side here; "
                     "train and record nothing")

    worker = sub.add_parser("worker", help="join a study's search (e.g. from another machine)")
    _study_args(worker)
    worker.add_argument("--worker-index", type=_worker_index_arg,
                        help="sampler seed offset, 0 to 9999; 0 is the lone worker's "
                             "(default: from the PID)")
    worker.add_argument("--threads", type=_threads_arg, help="CPU threads for this worker")
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # run's: stop with it
    worker.add_argument("--gpu-share", type=_share_arg, default=1.0,
                        help="this worker's share of its GPU's memory (run --per-device K "
                             "gives 1/K)")

    train = sub.add_parser("train", help="one training run with the base settings, tracked")
    _study_args(train, search=False)

    status = sub.add_parser("status", help="stages, trials by state, best so far")
    _study_args(status, without="the studies recorded in --home")

    report = sub.add_parser("report", help="Markdown + HTML report with plots, logged to MLflow")
    _study_args(report)
    report.add_argument("--out", type=_out_folder,
                        help="report folder (default <home>/reports/<study>)")

    exp = sub.add_parser("export", help="best model -> TorchScript / ONNX / MLflow registry")
    _study_args(exp)
    exp.add_argument("--stage", help="export this stage's winner (default: the last finished)")
    exp.add_argument("--format", default="all", type=_formats,
                     metavar="{torchscript,onnx,mlflow,all}",
                     help="which forms to write, one or several with commas (onnx,mlflow); "
                     "default all")
    exp.add_argument("--out", type=_out_folder,
                     help="folder for the files (default <home>/exports/<study>)")

    ev = sub.add_parser("evaluate", help="score a stage's stored checkpoints on the test (or "
                        "validation) split")
    _study_args(ev)
    ev.add_argument("--split", default="test", choices=["test", "val"],
                    help="the split to score (val: each repeat's own validation fold, the "
                    "split that chose it)")
    ev.add_argument("--stage", help="this stage's configuration (default: the last finished)")

    pred = sub.add_parser("predict", help="class and probability per image")
    pred.add_argument("model", help="model.torchscript.pt, model.onnx, an export folder, "
                      "models:/NAME/VERSION (or NAME/latest, NAME@ALIAS, m-ID), or a study's "
                      "YAML or name (its export in --home)")
    pred.add_argument("images", nargs="+", type=_path, help="image files or folders")
    pred.add_argument("--json", action="store_true", help="print JSON lines")
    pred.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="for a study YAML: the --set it ran with "
                      "(study=NAME finds its export)")
    pred.add_argument("--home", type=_home, default=_default_home(),
                      help="for models:/ URIs and study YAMLs: the folder holding mlflow.db "
                      "and exports/")
    pred.add_argument("--tracking", default=environment.from_variable(environment.TRACKING),
                      help="for models:/ URIs: an MLflow tracking server or database URI "
                      "(default: $ASL_SWEEP_TRACKING, else the home's mlflow.db)")

    cmp = sub.add_parser("compare", help="two studies side by side: what each stage adopted "
                         "and the final test scores", description="Compare two studies. "
                         "--set, --data, --home, --storage and --tracking name the first; "
                         "--other-set, --other-data, --other-home, --other-storage, "
                         "--other-tracking and the other YAML name the second (a study run "
                         "with --set study=NAME is named the same way here: --other-set "
                         "study=NAME). With --other-home the second study's stores are that "
                         "home's, not the first's --storage and --tracking.")
    _study_args(cmp)
    cmp.add_argument("other", type=_path, help="the second study's YAML (may be the same file)")
    cmp.add_argument("--other-set", dest="other_overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="a setting of the second study, e.g. "
                     "study=cnn-more (repeatable)")
    cmp.add_argument("--other-data", type=_path, help="the second study's --data")
    cmp.add_argument("--other-home", type=_path,
                     help="the second study's home (default: the same --home)")
    cmp.add_argument("--other-storage", help="the second study's Optuna storage URI (default: "
                     "its --other-home's optuna.db, or the first's --storage without one)")
    cmp.add_argument("--other-tracking", help="the second study's MLflow tracking URI "
                     "(default: as for --other-storage)")

    proxy = sub.add_parser("store-proxy", help="Optuna's gRPC storage proxy in front of the "
                           "database, for many workers (--storage grpc://HOST:PORT)")
    proxy.add_argument("--storage", required=True, help="the database: postgresql://... or "
                       "sqlite:///...")
    proxy.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    proxy.add_argument("--port", type=int, default=13000, help="the port workers reach it on")

    srv = sub.add_parser("serve", help="serve a registered model over REST (MLflow's scoring "
                         "server: POST /invocations), with this environment's own commands")
    srv.add_argument("model", help="models:/asl-sweep-STUDY/N (from `export`; or /latest, "
                     "@ALIAS), runs:/... or an MLflow model folder")
    srv.add_argument("--home", type=_home, default=_default_home(),
                     help="the study home whose registry holds the model (default ./mlruns)")
    srv.add_argument("--port", type=int, default=5001, help="the port to serve on")
    srv.add_argument("--host", default="127.0.0.1", help="the address to bind (default: this "
                     "machine only)")

    ui = sub.add_parser("ui", help="MLflow UI on the local store")
    ui.add_argument("--home", type=_home, default=_default_home(),
                    help="the study home whose MLflow store to serve (default ./mlruns)")
    ui.add_argument("--port", type=int, default=5000, help="the port to serve on")
    ui.add_argument("--host", default="127.0.0.1", help="the address to bind (default: this "
                    "machine only)")
    return parser


def _load(args: argparse.Namespace) -> tuple[StudyConfig, Workspace]:
    cfg = load_study(args.study, args.overrides, args.data, args.trials, args.epochs)
    ws = Workspace.at(args.home, args.storage, args.tracking)
    quiet_optuna()
    return cfg, ws


def _explicit_data(args: argparse.Namespace) -> set[str]:
    """The data settings this command line names itself (not the YAML's defaults)."""
    keys = {"data.root"} if args.data is not None else set()
    for item in args.overrides:
        key = item.partition("=")[0].strip()
        if key == "data" or key.startswith("data."):
            keys.add(key)
    return keys


def _load_bound(args: argparse.Namespace) -> tuple[StudyConfig, Workspace]:
    """A study to read back, with the data it ran with (stored in its record): the YAML's data
    section is not used, and a --data or --set data.* that disagrees is an error."""
    from asl_sweep.runtime.errors import StoreError
    from asl_sweep.search import optuna_storage, stored_data

    cfg, ws = _recorded(args) or _load(args)
    if not ws.has_storage:
        if ws.has_tracking_store and _mlflow_has_study(ws, cfg.study):
            raise StoreError(f"study {cfg.study}: its Optuna store {shown(ws.storage)} is missing, "
                             f"though its MLflow runs are in {shown(ws.tracking_uri)}; the stages, "
                             "decisions and final score live in the Optuna store: restore it "
                             "(or pass --storage where it is), or run the study again as a new "
                             "one with --set study=NEW")
        raise StoreError(f"study {cfg.study}: nothing recorded yet at {shown(ws.storage)}; run it "
                         "first (asl-sweep run), or pass --home (or --storage) with the study's "
                         "store")
    data = stored_data(optuna_storage(ws.storage), cfg, _explicit_data(args))
    return cfg.with_data(data), ws


def _recorded(args: argparse.Namespace) -> tuple[StudyConfig, Workspace] | None:
    """A study named by its name alone (`asl-sweep report quick`, no such file here), read
    with the settings its last run recorded (its YAML with the --set it ran with), the
    command's own --set applied on top; None where the name is a path or no run recorded it.
    `run` and `worker` resume it so (a worker on a machine without the YAML), and bind
    checks the data as for any run."""
    named = Path(args.study)
    if named.exists() or str(named) != named.name or is_study_file(named):
        return None
    ws = Workspace.at(args.home, args.storage, args.tracking)
    if not ws.has_storage:
        return None
    from asl_sweep.search import optuna_storage, recorded_studies, recorded_study

    quiet_optuna()
    storage = optuna_storage(ws.storage)
    try:
        raw = recorded_study(storage, named.name)
    except ConfigError:  # recorded without its settings
        if study_named(named):
            return None  # _load names the file it most likely meant
        raise
    if raw is None:
        recorded = recorded_studies(storage)
        if not recorded or study_named(named):
            return None  # _load names the file it most likely meant, or no file
        close = difflib.get_close_matches(named.name, recorded, n=1)
        raise ConfigError(
            f"{named}: no such study file, nor a study of that name recorded in "
            f"{shown(ws.storage)}" + (f": did you mean {close[0]}?" if close else "")
            + f" (recorded: {', '.join(recorded[:8])}{', ...' if len(recorded) > 8 else ''}"
            "); give a study YAML's path or a recorded study's name")
    source = f"study {named.name} (its settings recorded in {shown(ws.storage)})"
    cfg = build_study(raw, source, args.overrides, args.data, args.trials, args.epochs)
    if getattr(args, "parent_pid", None) is None:  # a worker `run` started: `run` said it
        print(f"study {named.name}: read with the settings its last run recorded (no file "
              f"{named} here)", file=sys.stderr)
    return cfg, ws


def _mlflow_has_study(ws: Workspace, study: str) -> bool:
    from asl_sweep.tracking.tracker import Tracker

    return Tracker(ws).has_experiment(study)


def configure_logging(prefix: str = "") -> None:
    """asl-sweep's own lines go to stderr (`prefix`ed: a worker that `run` started says them
    as its own); libraries say only what a user must act on."""
    logging.basicConfig(level=logging.INFO, format=prefix.replace("%", "%%") + "%(message)s",
                        stream=sys.stderr)
    for name in ("mlflow", "alembic", "optuna", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # psycopg warns of a connection it could not close cleanly ("error ignored terminating
    # <psycopg.Pipeline [BAD]>") when PostgreSQL goes away; the outage is asl-sweep's to say.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    # MLflow's store logs every database error with its traceback, then raises it: the raised
    # error is what asl-sweep reports (one line for a full or read-only disk, a traceback for
    # anything else), so the log is only its echo, 200 lines long.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # A tracking server away: urllib3 says each of MLflow's own retries of each request;
    # asl-sweep says once that it is not answering, then how long it waited (outage.py).
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A tracking server makes MLflow print two links at the end of every run (each trial).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its level on import
    # MLflow's usage telemetry: nothing of a study leaves the machine unasked, and its
    # client sets and pops an environment variable on its own thread while requests read
    # the environment (a KeyError in a trial's log_batch, seen with 64 workers).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # Heartbeats and retries are marked experimental in Optuna but are what keep crashes honest.
    for message in (r".* is experimental \(supported from", r".* is an experimental feature"):
        warnings.filterwarnings("ignore", message=message)


def quiet_optuna() -> None:
    """Trial failures are reported by asl-sweep itself, in one line, not as Optuna's
    tracebacks. Optuna sets its own level when it is imported, so this runs after that,
    once the settings are known to be valid."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _whose(args: argparse.Namespace) -> str:
    """A worker that `run` started says its last line as its trial lines, prefixed: `run`
    says its own beside it (two identical lines read as one said twice)."""
    if args.command == "worker" and args.parent_pid:
        return f"[worker {args.worker_index if args.worker_index is not None else os.getpid()}] "
    return ""


class _NamedOutput:
    """Standard output that names itself in a write error: `status > file` on a full disk
    said "a file: could not be written" (a stream's error names no file). A closed pipe
    (`| head`) stays the BrokenPipeError that main takes as the reader gone."""

    def __init__(self, stream):
        self._stream = stream

    def _named(self, e: OSError) -> OSError:
        if e.filename is not None or isinstance(e, BrokenPipeError):
            return e
        return type(e)(e.errno, e.strerror, "standard output")

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as e:
            raise self._named(e) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            raise self._named(e) from None

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    if not isinstance(sys.stdout, _NamedOutput) and sys.stdout is not None:
        sys.stdout = _NamedOutput(sys.stdout)
    args = build_parser().parse_args(argv)
    configure_logging(_whose(args))
    signals.install()  # SIGTERM ends the current trial like Ctrl-C, at a safe point
    machine.fit_threads()  # a container's CPU quota, before torch is imported
    try:
        environment.check()  # a bad number in the environment: one line now, not mid-run
        return COMMANDS[args.command](args)
    except Exception as e:
        if isinstance(e, BrokenPipeError) and _stdout_gone():
            return 141  # the reader of the output went away (`| head`): stop, as Unix tools do
        fault = environment_fault(e)  # a user error, or a full / read-only disk
        if fault is None:
            raise  # a bug: its traceback, exit 1
        prefix = "stopped" if fault.exit_code == 3 else "error"
        print(f"{_whose(args)}{prefix}: {fault}", file=sys.stderr)
        return fault.exit_code
    except KeyboardInterrupt:
        # Only a search resumes; a command that reads the records (report, export, ...) is
        # simply run again.
        searches = args.command in ("run", "worker")
        print(_whose(args) + "interrupted: " + ("the current trial is queued to run again; "
                                 if signals.stopped_in_trial() else "nothing recorded was lost; ")
              + "rerun the same command" + (" to resume" if searches else ""), file=sys.stderr)
        return 130


def _stdout_gone() -> bool:
    """Whether standard output's reader has closed it; if so, it points at /dev/null from
    here on, so that Python's own flush at exit raises nothing more."""
    import select

    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        gone = any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no file behind it (a test's capture)
        return False
    if gone:
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return gone


def _study_argv(args) -> list[str]:
    """The arguments that say which study and data: passed on to worker processes (the
    stores go through their environment, so a password in a URL stays out of `ps`)."""
    argv = [str(args.study), "--home", str(args.home)]
    for item in args.overrides:
        argv += ["--set", item]
    for flag, value in (("--data", args.data), ("--trials", args.trials),
                        ("--epochs", args.epochs)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _count(value: str, many: str, one: str) -> int:
    """A count of at least 1, or the argparse error that says what to give."""
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of {many}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1 {one}")
    return count


def _workers_arg(value: str) -> str | int:
    return value if value == "auto" else _count(value, "workers or auto", "worker")


def _workers_default() -> str | int:
    """--workers when it is not given: $ASL_SWEEP_WORKERS, or auto."""
    try:
        return _workers_arg(environment.text(environment.WORKERS))
    except argparse.ArgumentTypeError as e:
        raise ConfigError(f"${environment.WORKERS.name}: {e}; or unset it") from None


def _per_device_arg(value: str) -> int:
    return _count(value, "workers a GPU", "worker a GPU")


def _worker_index_arg(value: str) -> int:
    """A sampler seed offset: 0 (the lone worker's) up to 9999, the range of the offsets
    taken from process ids."""
    try:
        index = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number from 0 to 9999") from None
    if not 0 <= index <= 9999:
        raise argparse.ArgumentTypeError(f"{value}: give a number from 0 to 9999")
    return index


def _threads_arg(value: str) -> int:
    return _count(value, "threads", "thread")


def _share_arg(value: str) -> float:
    """A share of a GPU's memory: above 0, at most 1."""
    try:
        share = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give a share of the GPU's memory, "
                                         "e.g. 0.5") from None
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"{value}: a share is above 0 and at most 1 (the "
                                         "whole GPU)")
    return share


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_run(args) -> int:
    # $ASL_SWEEP_WORKERS, read before torch loads: a bad value is refused in under a second.
    requested = _workers_default() if args.workers is None else args.workers
    with signals.at_once():  # reading the study file, loading torch: nothing recorded yet
        cfg, ws = _recorded(args) or _load(args)
        from asl_sweep.search import input_lines, plan_lines

        # The data's listing and split, the weights' files: what the dry run checks, so a
        # pattern that misses a file or a weights path that is not there is refused before
        # a store is made or an image decoded (a large folder decodes for minutes).
        inputs = input_lines(cfg)
        from asl_sweep.search import resolve_workers

        # A worker count the run refuses is refused by the dry run too, and either says
        # how many trainings run side by side.
        workers = resolve_workers(cfg, requested, args.per_device, say=_say,
                                  networked=ws.networked_stores())
        if args.dry_run:
            print("\n".join([*plan_lines(cfg, inputs), _workers_line(workers, requested)]))
            return 0
        from asl_sweep.results.leaderboard import print_leaderboard
        from asl_sweep.search import run_pool

    code = run_pool(cfg, ws, workers, _study_argv(args), bars=sys.stdout.isatty(), say=_say)
    if code != 0:
        return code
    print_leaderboard(cfg, ws, decisions=False)  # decisions and the test score: printed above
    _say_ui(args, ws)
    return 0


def _workers_line(workers, requested: str | int) -> str:
    """The dry run's last line: the trainings the run puts side by side here, and why."""
    why = workers.why if workers.why.startswith("--workers") else (
        f"--workers {requested}: {workers.why}")
    if workers.count == 1:
        return f"workers: one training at a time, in this process ({why})"
    return f"workers: {workers.count} side by side, {workers.threads_each} ({why})"


def _say_ui(args, ws: Workspace) -> None:
    """Where to look at what a command recorded."""
    if ws.tracking_server:
        print(f"\nopen the MLflow UI:  {shown(ws.tracking_uri)}   (the tracking server's own UI)")
    else:
        print(f"\nopen the MLflow UI:  {runnable('asl-sweep')} ui --home {args.home}   "
              f"(or: {runnable('mlflow')} ui --backend-store-uri {ws.tracking_uri})")


def runnable(command: str) -> str:
    """How to run `command` (asl-sweep, mlflow) from here as typed: its bare name where PATH
    finds this environment's own, else its path beside this interpreter (`.venv/bin/...`,
    relative where it lies below the current folder): after the README's install .venv/bin
    is not on PATH."""
    import shutil

    mine = Path(sys.executable).parent / command
    if not mine.exists():
        return command
    found = shutil.which(command)
    if found and Path(found).resolve() == mine.resolve():
        return command
    try:
        return str(mine.relative_to(Path.cwd()))
    except ValueError:
        return str(mine)


def cmd_worker(args) -> int:
    cfg, ws = _recorded(args) or _load(args)
    from asl_sweep.search import input_lines, join_study

    if args.parent_pid is None:  # a worker of its own (another machine): its data, weights
        input_lines(cfg)  # checked as `run` checks them, before it joins (run's: checked)

    index = args.worker_index if args.worker_index is not None else 1 + os.getpid() % 9973
    return join_study(cfg, ws, index, args.threads, args.gpu_share, args.parent_pid)


def cmd_train(args) -> int:
    cfg, ws = _load(args)
    from asl_sweep.search import train_once

    train_once(cfg, ws)
    _say_ui(args, ws)
    return 0


def cmd_status(args) -> int:
    if args.study is None:
        from asl_sweep.results.leaderboard import print_studies

        print_studies(Workspace.at(args.home, storage=args.storage))
        return 0
    with signals.at_once():  # it only reads
        cfg, ws = _load_bound(args)
        from asl_sweep.results.leaderboard import print_status

        print_status(cfg, ws)
    return 0


def cmd_compare(args) -> int:
    from asl_sweep.results.compare import compare_lines

    first = _load_bound(args)
    # Another home is another study's record: its own stores unless named, never the first's.
    apart = args.other_home is not None
    other = argparse.Namespace(**{**vars(args), "study": args.other,
                                  "overrides": args.other_overrides,
                                  "data": args.other_data,
                                  "home": args.other_home or args.home,
                                  "storage": args.other_storage
                                  or (None if apart else args.storage),
                                  "tracking": args.other_tracking
                                  or (None if apart else args.tracking)})
    try:
        second = _load_bound(other)
    except UserError as e:
        raise type(e)(f"the second study: {e} (for it, say --other-home, --other-storage, "
                      "--other-tracking, --other-set or --other-data)") from None
    (cfg_a, ws_a), (cfg_b, ws_b) = first, second
    if cfg_a.study == cfg_b.study and ws_a.storage == ws_b.storage:
        raise ConfigError(f"compare: both sides are study {cfg_a.study!r} in {ws_a.home}: name "
                          "the second with --other-set study=NAME (as it was run with --set "
                          "study=NAME), another YAML, or --other-home DIR")
    print("\n".join(compare_lines(first, second)))
    return 0


def _elsewhere(args, default: Path, write) -> None:
    """Run `write`; where it cannot write the home's own folder (`default`: a results folder
    others may only read, a full disk), the line says --out can put the files elsewhere."""
    try:
        write()
    except WriteError as e:
        if args.out is None and e.path is not None and \
                Path(e.path).absolute().is_relative_to(default.absolute()):
            raise WriteError(f"{e}; or write them to another folder with --out DIR",
                             e.path) from None
        raise


def cmd_report(args) -> int:
    with signals.at_once():  # reading and loading: seconds, before anything is written
        cfg, ws = _load_bound(args)
        from asl_sweep.results.report import write_report

    _elsewhere(args, ws.reports / cfg.study, lambda: write_report(cfg, ws, args.out))
    return 0


def cmd_export(args) -> int:
    with signals.at_once():  # reading and loading: seconds, before anything is written
        cfg, ws = _load_bound(args)
        from asl_sweep.results.export import export

    _elsewhere(args, ws.exports / cfg.study, lambda: export(
        cfg, ws, args.format, args.out, args.stage))
    return 0


def cmd_evaluate(args) -> int:
    with signals.at_once():  # reading and loading: seconds, before anything is written
        cfg, ws = _load_bound(args)
        from asl_sweep.results.readback import finished_stage, read_final, read_stages
        from asl_sweep.search import (
            TEST_RULE,
            breakdown,
            earlier_views,
            failure_lines,
            open_data,
            score_final,
            summarize,
            views_lines,
        )
        from asl_sweep.tracking.tracker import Tracker

    view = finished_stage(cfg, read_stages(cfg, ws), args.stage)
    trials = [view.trial(n) for n in view.result.repeats]
    data = open_data(cfg, ws)
    chosen = earlier_views(read_final(cfg, ws), trials, cfg.tta)  # the run's choice, reused
    scored, views = score_final(data, Tracker(ws), trials, cfg.tta, args.split, chosen)
    groups = data.test().groups if args.split == "test" else None
    summary = summarize(scored, groups, args.split)
    rule = (TEST_RULE if args.split == "test" else "validation split of each repeat's own fold: "
            "the split that chose this configuration, so biased upward")
    print(f"{cfg.study} / {view.stage.name}: {view.result.decision}")
    for s, acc in zip(scored, summary["accuracy"], strict=True):
        print(f"  trial {s.trial} (fold {s.fold}, seed {s.model_file.config.seed}): "
              f"{args.split} accuracy {acc:.4f} on {len(s.truth)} images")
    print(f"{args.split} accuracy: {summary['summary']}\n  rule: {rule}")
    for line in views_lines(views):
        print(f"  {line}")
    for line in failure_lines(breakdown(scored, groups, list(data.classes)), args.split,
                              limit=10):
        print(f"  {line}")
    return 0


def cmd_predict(args) -> int:
    import json

    from asl_sweep.results.predict import predict

    if args.overrides and not is_study_file(args.model):
        raise ConfigError(f"--set: {args.model} is not a study YAML; --set names the study "
                          "whose export to use, and a model file carries its own settings")
    files, results = predict(args.model, args.images, args.home, args.tracking,
                             args.overrides)
    width = max([len(as_text(f)) for f in files] + [4])
    if not args.json:
        print(f"{'file'.ljust(width)}  class  probability")
    done, failed = 0, 0
    try:
        for r in results:  # each line as its image is predicted: a large folder streams
            if "error" in r:
                failed += 1
                print(f"error: {r['file']}: {r['error']}", file=sys.stderr)
            elif args.json:
                print(json.dumps(r))
            else:
                print(f"{r['file'].ljust(width)}  {r['class']:5s}  {r['probability']:.3f}")
            done += 1
    except KeyboardInterrupt:
        print(f"interrupted after {done} of {len(files)} files (those above); rerun the "
              "command for them all", file=sys.stderr)
        return 130
    return 1 if failed else 0


def cmd_ui(args) -> int:
    from asl_sweep.tracking.ui import serve

    return serve(Workspace.at(args.home), args.host, args.port,
                 log=lambda line: print(line, flush=True))


def cmd_serve(args) -> int:
    from asl_sweep.tracking.serving import serve_model

    if is_study_file(args.model) and Path(args.model).is_file():
        from asl_sweep.results.export import registered_name

        name = registered_name(load_study(args.model))
        raise ConfigError(f"{args.model}: a study, not a model: serve its registered model, "
                          f"models:/{name}/VERSION (`asl-sweep export {args.model}` registers "
                          "one and prints its version)")
    return serve_model(Workspace.at(args.home), args.model, args.host, args.port,
                       log=lambda line: print(line, flush=True))


def cmd_store_proxy(args) -> int:
    import signal

    from asl_sweep.runtime.workspace import check_proxied
    from asl_sweep.search import serve_proxy
    from asl_sweep.tracking.ui import check_port

    check_proxied(args.storage)
    check_port(args.host, args.port)
    # The proxy holds no trial: Ctrl-C and SIGTERM stop it at once (not at a trial's next
    # step, which it never reaches: a noted Ctrl-C would wait for a second).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def ready() -> None:  # once the database is open: its faults are said before this
        print(f"Optuna storage proxy for {shown(args.storage)} on grpc://{args.host}:"
              f"{args.port} (Ctrl-C to stop)", flush=True)

    try:
        serve_proxy(args.storage, args.host, args.port, ready)
    except KeyboardInterrupt:
        pass
    return 0


COMMANDS = {"run": cmd_run, "worker": cmd_worker, "train": cmd_train, "status": cmd_status,
            "compare": cmd_compare,
            "report": cmd_report, "evaluate": cmd_evaluate,
            "export": cmd_export, "predict": cmd_predict, "ui": cmd_ui, "serve": cmd_serve,
            "store-proxy": cmd_store_proxy}


def console() -> int:
    """The `asl-sweep` command, and `python -m asl_sweep.cli` (how `run` starts its workers):
    main, then the process ends without Python's last garbage collections, which walk every
    object torch, mlflow and the rest made at import (on 2 cores 0.5-0.9 s of a `status`,
    3-4.6 s of a `run`, and a worker's exit is on the path of the final test:
    benchmarks/process_exit.py).
    Objects freed by their count still are, files are closed and atexit handlers (logging,
    temporary folders) run as before; only garbage in reference cycles is left to the OS."""
    try:
        return main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    sys.exit(console())
