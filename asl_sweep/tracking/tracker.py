"""The only module that imports mlflow. Experiment = study; runs nest study -> stage ->
trial (the mlflow.parentRunId tag), so the MLflow UI shows the search as a tree. The model
registry, model logging and model loading go through here too.

Per-epoch metrics are batched: one log_batch call at most every `interval` seconds (and at
the end of the trial), not one call per value or per epoch."""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from asl_sweep.runtime import environment
from asl_sweep.runtime.errors import StoreError, WriteError, environment_fault, refusal
from asl_sweep.runtime.outage import Retrying, retrying
from asl_sweep.runtime.workspace import Workspace, shown
from asl_sweep.tracking import blank
from asl_sweep.tracking.views import (
    KIND,
    KIND_TAG,
    PRIMARY_METRIC_TAG,
    SHARED_VIEW_TAG,
    TRIALS_VIEW,
    dump,
)

PARENT = "mlflow.parentRunId"
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_person_mean",
                 "val_person_q25", "val_person_worst", "images_per_s")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """One MLflow param per setting, and a list also per element (hidden.0, dropout.1) so
    the UI can sort and filter by each; the list whole (cnn.channels = 16-32-64) keeps an
    architecture with fewer layers in the parallel-coordinates plot. An empty list is []."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list | tuple) and value and all(
                not isinstance(v, dict | list) for v in value):
            flat[f"{prefix}{key}"] = "-".join(str(v) for v in value)[:6000]
            flat.update({f"{prefix}{key}.{i}": str(v) for i, v in enumerate(value)})
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]
    return flat


# MLflow's own notices on registering a model: printed to stderr past any logging level
# (its modules switch its stream back on as they load); asl-sweep says what it registered.
_REGISTRY_NOTICES = ("Successfully registered model ", "Registered model ", "Created version ")


@contextlib.contextmanager
def _mlflow_says_nothing():
    """stderr while the block runs, less MLflow's registry notices: the rest is passed on."""
    import io
    import sys

    caught = io.StringIO()
    try:
        with contextlib.redirect_stderr(caught):
            yield
    finally:
        kept = [line for line in caught.getvalue().splitlines(keepends=True)
                if not line.startswith(_REGISTRY_NOTICES)]
        sys.stderr.write("".join(kept))


def _reach(uri: str) -> None:
    """One connection to a tracking database, opened and closed: it answers, or the driver's
    error (MLflow's own opening would retry for about 100 s before its traceback)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


class _OneTry:
    """While any thread is inside it, MLflow tries each HTTP request once (its own retries
    off; it reads them from the environment at every request). For a tracking server that
    gave up: what a stopping run still writes fails at once instead of after MLflow's
    backoff."""

    KEY = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"

    def __init__(self) -> None:
        self._lock, self._inside, self._saved = threading.Lock(), 0, None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._inside == 0:
                self._saved = os.environ.get(self.KEY)
                os.environ[self.KEY] = "0"
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    if self._saved is None:
                        os.environ.pop(self.KEY, None)
                    else:
                        os.environ[self.KEY] = self._saved


_one_try = _OneTry()


def _build_store(uri: str) -> None:
    """Have MLflow build a new store at `uri` (every migration), and let go of it."""
    import tempfile

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with tempfile.TemporaryDirectory() as artifacts:
        SqlAlchemyStore(uri, artifacts).engine.dispose()


class Tracker:
    def __init__(self, workspace: Workspace):
        # A tracking database or server that stops answering is waited for (runtime.outage),
        # within one budget: MLflow's own retries of a request (7 by default, minutes of
        # backoff) are cut to 2 unless the user set them, and a database server is reached
        # here first, in that budget, before MLflow opens it with its own retries.
        if workspace.tracking_server:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            # Their backoff too (2 s, then 4, plus up to 1 s of jitter; now 1, 2 and 0.2):
            # the waiting is runtime.outage's, and MLflow's own made each closing write of a
            # run stopping for a server that is gone take 6-8 s (22 s in all) after the
            # budget was spent.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.2")
        self._store = (f"the MLflow tracking server at {shown(workspace.tracking_uri)}"
                       if workspace.tracking_server else "the MLflow store (--tracking)")
        try:
            if not (workspace.tracking_server or workspace.tracking_uri.startswith("sqlite")):
                retrying(_reach, self._store)(workspace.tracking_uri)
            blank.seed(workspace.tracking_file, _build_store)  # a new home: copied, not migrated
            client = MlflowClient(tracking_uri=workspace.tracking_uri,
                                  registry_uri=workspace.tracking_uri)
            self.client = (client if workspace.tracking_uri.startswith("sqlite")
                           else Retrying(client, self._store, _one_try
                                         if workspace.tracking_server else None))
            self.client.search_experiments(max_results=1)  # creates or migrates the store now
        except Exception as e:  # a damaged mlflow.db, a full disk, an address refused: one
            # line naming this store
            fault = environment_fault(e, self._store if refusal(e) else
                                      "the MLflow store (mlflow.db, or --tracking)")
            if fault is None:
                raise
            raise fault from None
        self.tracking_uri = workspace.tracking_uri
        self.server = workspace.tracking_server
        self.artifact_root = workspace.artifacts
        self._repos: dict[str, Any] = {}
        self._uris: dict[str, str] = {}  # runs this process made: their artifact location

    def _artifacts(self, run_id: str) -> Any:
        """The run's artifact repository, its location read once per run: MLflow's client
        reads the run again for every artifact call (and searches logged models for every
        listing), which behind a tracking server were half the requests of a trial."""
        repo = self._repos.get(run_id)
        if repo is None:
            from mlflow.store.artifact.artifact_repository_registry import (
                get_artifact_repository,
            )
            from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

            uri = self._uris.pop(run_id, None) or self.client.get_run(run_id).info.artifact_uri
            repo = get_artifact_repository(uri, tracking_uri=self.tracking_uri)
            # Behind a tracking server the artifacts are the server's, waited for as it is; a
            # database's are the home's folder: a write there that succeeds while the
            # database is away is not the store answering, so it must not end the outage.
            if not (self.tracking_uri.startswith("sqlite")
                    or isinstance(repo, LocalArtifactRepository)):
                repo = Retrying(repo, self._store, _one_try if self.server else None)
            if len(self._repos) >= 256:  # a long study's runs: keep the recent ones
                self._repos.pop(next(iter(self._repos)))
            self._repos[run_id] = repo
        return repo

    # ------------------------------------------------------------ experiments and runs
    def experiment(self, study: str, description: str = "", view: dict | None = None,
                   metric: str | None = None) -> str:
        """The study's experiment; its description (the study's) shows in the MLflow UI, it
        opens on the model-training tabs, `view` is the trial view it shares and `metric`
        the chart drawn first."""
        tags = {KIND_TAG: KIND, **({"mlflow.note.content": description} if description else {}),
                **({SHARED_VIEW_TAG + TRIALS_VIEW: dump(view)} if view else {}),
                **({PRIMARY_METRIC_TAG: metric} if metric else {})}
        found = self.client.get_experiment_by_name(study)
        if found is None:
            try:
                return self.client.create_experiment(
                    study, artifact_location=self._artifact_location(study), tags=tags)
            except Exception:  # another worker created it first
                found = self.client.get_experiment_by_name(study)
                if found is None:
                    raise
        self.refuse_elsewhere(found.artifact_location, f"study {study}")
        for key, value in tags.items():  # an experiment made by an older asl-sweep
            if found.tags.get(key) != value:
                self.client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id

    def has_experiment(self, study: str) -> bool:
        """Whether the store holds the study's experiment (its runs)."""
        return self.client.get_experiment_by_name(study) is not None

    def _artifact_location(self, study: str) -> str | None:
        """A local store's artifacts live in the home; a tracking server's behind the server
        (its --serve-artifacts destination, or its default root): no folder is shared."""
        if self.server:
            return None
        return (self.artifact_root / study).resolve().as_uri()

    def find_run(self, experiment_id: str, **tags: str) -> str | None:
        clause = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([experiment_id], filter_string=clause,
                                       order_by=["attributes.start_time ASC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def running_runs(self, experiment_id: str, **tags: str) -> list[str]:
        """The runs with these tags that are still RUNNING."""
        clause = " and ".join([*(f"tags.{k} = '{v}'" for k, v in tags.items()),
                               "attributes.status = 'RUNNING'"])
        return [r.info.run_id for r in self.client.search_runs([experiment_id], clause)]

    def has_study_tag(self, key: str) -> bool:
        """Whether any study run in this store carries the tag `key`."""
        for experiment in self.client.search_experiments():
            for run in self.client.search_runs([experiment.experiment_id], "tags.kind = 'study'"):
                if key in run.data.tags:
                    return True
        return False

    def open_run(self, experiment_id: str, name: str, parent: str | None = None,
                 **tags: str) -> str:
        """The run with these tags, reopened, or a new one: a resumed study reuses its runs."""
        run_id = self.find_run(experiment_id, **tags)
        if run_id is None:
            return self.new_run(experiment_id, name, parent, **tags)
        self.reopened(run_id)
        return run_id

    def reopened(self, run_id: str) -> Any | None:
        """The run, RUNNING again, read once (its params and tags with it); None where the
        store no longer holds it or it was deleted (a run id kept elsewhere may name a
        tracking store since emptied)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        if run.info.lifecycle_stage != "active":
            return None
        if run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        return run

    def new_run(self, experiment_id: str, name: str, parent: str | None = None,
                **tags: str) -> str:
        # Tag values go over REST to a tracking server as strings: none may be another type.
        all_tags = {k: str(v) for k, v in tags.items() if v is not None}
        if parent:
            all_tags[PARENT] = parent
        info = self.client.create_run(experiment_id, run_name=name, tags=all_tags).info
        if len(self._uris) >= 256:  # runs made and never given an artifact (pruned ones)
            self._uris.pop(next(iter(self._uris)))
        self._uris[info.run_id] = info.artifact_uri  # its artifacts: no read of the run later
        return info.run_id

    def rename(self, run_id: str, name: str) -> None:
        self.client.update_run(run_id, name=name)

    def end(self, run_id: str, status: str = "FINISHED",
            metrics: dict[str, float] | None = None, **tags: str) -> None:
        """The run ended with `status`; its last metrics and tags in the same batch."""
        if tags or metrics:
            ts = _now_ms()
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0)
                                                   for k, v in (metrics or {}).items()],
                                  tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.set_terminated(run_id, status=status)

    # ------------------------------------------------------------ logging
    def set_tags(self, run_id: str, **tags: Any) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        flat = _flatten(params)
        items = [Param(k, v) for k, v in flat.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        ts = _now_ms()
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step)
                                               for k, v in metrics.items()])

    @contextlib.contextmanager
    def system_metrics(self, into: EpochLog):
        """The trial's own process while the block runs: its CPU (percent of one core), its
        resident memory and threads, and the GPU memory torch holds where there is a GPU,
        sampled at the start, every ASL_SWEEP_SYSTEM_METRICS_S seconds (default 5) and at the
        end, so every trial has them, a pruned one of two seconds too. Kept off the hot path:
        a thread samples, and the samples go to MLflow with the trial's epoch metrics (`into`,
        its EpochLog: no request of their own), into the run's System metrics
        (`system/process_*`). 0 turns them off. (MLflow's own monitor measured the whole
        machine, and not at all for a trial shorter than its interval.)"""
        seconds = environment.system_metrics_seconds()
        if seconds <= 0:
            yield
            return
        sampler = ProcessSampler(into, seconds)
        sampler.start()
        try:
            yield
        finally:
            # The last sample is waited for a moment at most (it is only a reading).
            sampler.stop(wait=5.0)

    def epoch_log(self, run_id: str, interval: float = 2.0, lead: str | None = None) -> EpochLog:
        return EpochLog(self.client, run_id, interval, lead)

    def log_datasets(self, run_id: str, records: Iterable[Mapping[str, Any]]) -> None:
        """Dataset inputs (MLflow's Dataset column): name, digest, source and counts, each
        with its context (training, validation, testing)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for r in records:
            profile = {"num_rows": r["rows"], **({"people": r["people"]} if r["people"] else {})}
            dataset = Dataset(name=r["name"], digest=r["digest"], source_type="local",
                              source=json.dumps({"uri": r["source"]}),
                              profile=json.dumps(profile))
            inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", r["context"])]))
        from mlflow.exceptions import MlflowException

        for attempt in range(1, 4):
            try:
                self.client.log_inputs(run_id, datasets=inputs)
                return
            except MlflowException as e:
                # Workers that log a new dataset at once: MLflow's store inserts it for each,
                # and all but the first collide on its key; once it exists, each links it.
                said = str(e).lower()
                if attempt == 3 or not ("duplicate key" in said or "unique constraint" in said):
                    raise
                time.sleep(0.2 + 0.5 * random.random())

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        import tempfile

        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            self.log_artifacts(run_id, [path], folder or None)

    def log_table(self, run_id: str, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        """Rows of one shape as an MLflow table (the UI's artifact view shows it as one)."""
        if rows:
            columns = {k: [r[k] for r in rows] for k in rows[0]}
            self.client.log_table(run_id, data=columns, artifact_file=artifact_file)

    def keep_file(self, run_id: str, path: Path, folder: str) -> None:
        """Log a file that is about to be deleted (a checkpoint): on a local artifact store it
        is hard-linked into place instead of copied, which saves writing it twice."""
        root = self._artifacts(run_id).artifact_uri
        if root.startswith("file://"):
            target = Path(urllib.parse.unquote(urllib.parse.urlparse(root).path)) / folder
            try:
                target.mkdir(parents=True, exist_ok=True)
                os.link(path, target / Path(path).name)
                return
            except OSError:  # another filesystem, or no hard links there: copy it
                (target / Path(path).name).unlink(missing_ok=True)
        self.log_artifacts(run_id, [path], folder)

    def log_artifacts(self, run_id: str, paths: Iterable[Path], folder: str | None = None) -> None:
        for path in paths:
            try:
                self._artifacts(run_id).log_artifact(str(path), artifact_path=folder)
            except OSError as e:
                fault = environment_fault(e)
                if fault is None:
                    raise
                where = f"{folder}/{Path(path).name}" if folder else Path(path).name
                raise WriteError.of(f"MLflow artifact {where} of run {run_id}", e) from None

    def delete_artifacts(self, run_id: str, path: str) -> None:
        """Delete a run's artifact folder (a checkpoint no longer needed), in a local store
        or behind a tracking server (its artifact proxy's DELETE); gone already is fine."""
        repo = self._artifacts(run_id)
        if not repo.list_artifacts(path):
            return
        try:
            repo.delete_artifacts(path)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------ reading back
    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def metric_history(self, run_id: str, key: str) -> list:
        return self.client.get_metric_history(run_id, key)

    def artifact_file(self, run_id: str, path: str, dst: Path) -> Path:
        """A run's artifact file to read: in place where the artifacts are a local folder
        (nothing copied), else downloaded into `dst`. A copy the disk did not take is one
        WriteError naming `dst` (MLflow's own download says only 'ensure that the path is
        correct')."""
        from mlflow.exceptions import MlflowException
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

        self.refuse_elsewhere(self.client.get_run(run_id).info.artifact_uri, f"run {run_id}")
        repo = self._artifacts(run_id)
        if isinstance(repo, LocalArtifactRepository):
            local = Path(repo.artifact_dir) / path
            if local.is_file():
                return local
        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(repo.download_artifacts(path, str(dst)))
        except MlflowException as e:  # its failures are text: "[Errno 28] No space left ..."
            found = re.search(r"\[Errno (\d+)\]", str(e))
            fault = environment_fault(OSError(int(found[1]), os.strerror(int(found[1])), dst)
                                      ) if found else None
            if fault is not None:
                raise fault from None
            raise

    def has_artifact(self, run_id: str, path: str) -> bool:
        """Whether the run's artifacts still hold `path` (a file a user or a cleanup may
        have deleted since)."""
        folder = path.rpartition("/")[0] or None
        return any(a.path == path for a in self._artifacts(run_id).list_artifacts(folder))

    def fetch_folder(self, run_id: str, folder: str, dst: Path) -> bool:
        """Copy a run's artifact folder's files into dst; False when the run has none."""
        repo = self._artifacts(run_id)
        files = [a.path for a in repo.list_artifacts(folder) if not a.is_dir]
        if not files:
            return False
        dst.mkdir(parents=True, exist_ok=True)
        for path in files:
            got = Path(repo.download_artifacts(path, str(dst)))
            got.replace(dst / got.name)
        return True

    def refuse_elsewhere(self, uri: str, what: str) -> None:
        """A local artifact location outside this home's artifacts folder means the home was
        moved or copied after the runs were made: its files are read (and written) there, not
        here, so refuse in one line rather than fail later or write into the original."""
        if not uri or not uri.startswith("file:"):
            return  # a tracking server's artifacts (mlflow-artifacts:, s3: ...) stay put
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
        root = self.artifact_root.resolve()
        if not path.resolve().is_relative_to(root):
            raise StoreError(f"{what}: MLflow records its artifacts under {path}, outside this "
                             f"home's {root}: the home was moved or copied after the runs were "
                             "made. Use the home where it was made (--home), or move it back")

    # ------------------------------------------------------------ models and the registry
    def log_pytorch_model(self, run_id: str, model, name: str, example, outputs,
                          metadata: dict[str, Any], files: Mapping[str, str],
                          extra_files: list[Path] | None = None,
                          requirements: list[str] | None = None) -> tuple[str, str]:
        """Log `model` with the pytorch flavor (torch.export, no pickle) as a new version of
        the registered model `name`, plus text files beside it; returns (version, uri). The
        signature takes float32 images [B, 3, H, W] of any batch, height and width (values
        0..255 or 0..1: the model tells them apart)."""
        import mlflow
        import mlflow.pytorch
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types.schema import Schema, TensorSpec

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, outputs.shape[1]))]))
        with mlflow.start_run(run_id=run_id), _mlflow_says_nothing():
            info = mlflow.pytorch.log_model(
                model, name="model", registered_model_name=name, signature=signature,
                input_example=example, serialization_format="pt2", metadata=metadata,
                extra_files=[str(p) for p in extra_files or []],
                pip_requirements=requirements)
            for file_name, text in files.items():
                mlflow.log_text(text, file_name)
        version = next(v for v in self.client.search_model_versions(f"name='{name}'")
                       if v.run_id == run_id)
        return str(version.version), info.model_uri

    def describe_model(self, name: str, version: str, text: str) -> None:
        """The text the registry's pages show first, on the version and the model."""
        self.client.update_model_version(name, version, description=text)
        self.client.update_registered_model(name, description=text)

    def tag_model_version(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value[:5000])

    def model_source(self, uri: str) -> str:
        """Where the files of a models:/ or runs:/ model lie, looked up here first: a
        models:/ URI as MLflow takes it (NAME/VERSION, NAME/latest, NAME, NAME@ALIAS or a
        logged model's id, m-...), and one line naming what this store holds where it has no
        such model, version or run."""
        from mlflow.exceptions import MlflowException

        from asl_sweep.runtime.errors import ModelFileError

        where = shown(self.tracking_uri)
        if uri.startswith("runs:/"):
            run_id = uri.removeprefix("runs:/").partition("/")[0]
            try:
                self.client.get_run(run_id)
            except MlflowException:
                raise ModelFileError(f"{uri}: no run {run_id} in {where}; give the run id "
                                     "the MLflow UI shows, or models:/NAME/VERSION") from None
            return uri
        path = uri.removeprefix("models:/")
        name, at, alias = path.partition("@")
        name, _, version = name.partition("/")
        if not name or "/" in version or (at and (not alias or version)):
            raise ModelFileError(f"{uri}: not a model URI; give models:/NAME/VERSION, "
                                 "models:/NAME/latest or models:/NAME@ALIAS")
        registered = sorted(m.name for m in self.client.search_registered_models())
        if name not in registered and name.startswith("m-") and not (at or version):
            # A logged model's id (MLflow 3), as `export` prints it beside the version
            try:
                return self.client.get_logged_model(name).artifact_location
            except MlflowException:
                raise ModelFileError(f"{uri}: no logged model {name} in {where}; give the "
                                     "id `export` printed, or models:/NAME/VERSION") from None
        if name not in registered:
            held = (f"registered there: {', '.join(registered)}" if registered else
                    "nothing is registered there yet; `asl-sweep export STUDY.yaml` registers "
                    "models:/asl-sweep-STUDY/N")
            raise ModelFileError(f"{uri}: no registered model {name} in {where} ({held})")
        versions = sorted(int(v.version) for v in
                          self.client.search_model_versions(f"name='{name}'"))
        if at:
            try:
                version = str(self.client.get_model_version_by_alias(name, alias).version)
            except MlflowException:
                aliases = sorted(self.client.get_registered_model(name).aliases)
                raise ModelFileError(
                    f"{uri}: {name} has no alias {alias} ("
                    f"{'its aliases: ' + ', '.join(aliases) if aliases else 'it has none'}; "
                    f"its versions: {_spans(versions)})") from None
        elif version in ("", "latest") and versions:
            version = str(versions[-1])
        if not version.isdigit() or int(version) not in versions:
            raise ModelFileError(f"{uri}: {name} has no version {version or 'yet'} (its "
                                 f"versions: {_spans(versions) or 'none'})")
        return self.client.get_model_version_download_uri(name, version)

    def download_model(self, uri: str, dst: Path) -> Path:
        """The files of a models:/ (any form model_source takes) or runs:/ model, copied to
        `dst`: nothing in them is loaded or run here."""
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException

        from asl_sweep.runtime.errors import ModelFileError

        source = self.model_source(uri)
        try:
            return Path(download_artifacts(artifact_uri=source, dst_path=str(dst),
                                           tracking_uri=self.tracking_uri))
        except MlflowException as e:
            raise ModelFileError(f"{uri}: not found in {shown(self.tracking_uri)} "
                                 f"({str(e).splitlines()[0][:160]})") from None


def _spans(numbers: list[int]) -> str:
    """1, 2, 3, 5 -> '1-3, 5'."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


class EpochLog:
    """Per-epoch metrics, sent in one log_batch at most every `interval` seconds: a long
    trial's curves stay live in the UI, a short trial costs one call instead of one per epoch.
    `lead` (the stage's metric) goes first in every batch: MLflow's compare page charts a
    run's first logged metric by default, which would otherwise be a process sample."""

    def __init__(self, client: MlflowClient, run_id: str, interval: float,
                 lead: str | None = None):
        self.client, self.run_id, self.interval, self.lead = client, run_id, interval, lead
        self.pending: list[Metric] = []
        self.lock = threading.Lock()  # the process sampler adds from its own thread
        self.sent_at = time.monotonic()

    def add(self, step: int, values: Mapping[str, float],
            keys: tuple[str, ...] = EPOCH_METRICS) -> None:
        ts = _now_ms()
        self.extend([Metric(k, float(values[k]), ts, step) for k in keys])
        if time.monotonic() - self.sent_at >= self.interval:
            self.flush()

    def extend(self, metrics: list[Metric]) -> None:
        """Metrics to go with the next batch (the process samples ride along)."""
        with self.lock:
            self.pending += metrics

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        if self.lead is not None:
            batch.sort(key=lambda m: m.key != self.lead)  # stable: the rest keep their order
        for start in range(0, len(batch), 1000):  # MLflow's per-batch limit
            self.client.log_batch(self.run_id, metrics=batch[start:start + 1000])
        self.sent_at = time.monotonic()


class ProcessSampler:
    """Samples this process on a daemon thread into a trial's epoch log (see
    Tracker.system_metrics)."""

    def __init__(self, into: EpochLog, interval: float):
        import psutil

        self.into, self.interval = into, interval
        self.process = psutil.Process()
        self.step = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="process-metrics", daemon=True)

    def start(self) -> None:
        self.process.cpu_percent(None)  # the first reading starts the CPU clock
        self._sample()
        self.thread.start()

    def stop(self, wait: float) -> None:
        self.done.set()
        self.thread.join(wait)

    def _sample(self) -> None:
        ts = _now_ms()
        with self.process.oneshot():
            values = {"system/process_cpu_percent": self.process.cpu_percent(None),
                      "system/process_rss_mb": self.process.memory_info().rss / 2**20,
                      "system/process_threads": self.process.num_threads()}
        torch = sys.modules.get("torch")  # only where the trial already loaded it
        if torch is not None and torch.cuda.is_available():
            values["system/process_gpu_memory_mb"] = torch.cuda.memory_allocated() / 2**20
        self.into.extend([Metric(k, float(v), ts, self.step) for k, v in values.items()])
        self.step += 1

    def _loop(self) -> None:
        while not self.done.wait(self.interval):
            self._sample()
        self._sample()  # the end
