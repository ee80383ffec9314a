"""The study as MLflow shows it (search/mirror.py), on a real MLflow store: a trial's run is
named on the trial as soon as it exists, and a run its worker never named is closed, not
left RUNNING."""

from asl_sweep.runtime.workspace import Workspace
from asl_sweep.search.mirror import Mirror
from asl_sweep.settings.config import TrainConfig
from asl_sweep.tracking.tracker import Tracker


def _mirror(tmp_path) -> Mirror:
    mirror = Mirror(Tracker(Workspace.at(tmp_path / "home")))
    mirror.experiment_id = mirror.tracker.experiment("s", "a study")
    return mirror


def test_a_trial_run_is_named_at_once_and_one_never_named_is_closed(tmp_path):
    """One store for both (an MLflow store is slow to create)."""
    mirror = _mirror(tmp_path)
    client = mirror.tracker.client
    named = []

    def name_it(run_id: str) -> None:  # what a worker killed right after it leaves behind
        named.append((run_id, dict(client.get_run(run_id).data.params)))

    def open_trial(n: int, study: str = "s.a") -> str:
        return mirror.trial_opened(f"t{n}", "", TrainConfig(), {
            "optuna_study": study, "optuna_trial": str(n)}, {}, [], "val_acc",
            named=name_it).run_id

    first = open_trial(0)
    assert named == [(first, {})]  # named while it had no parameters yet
    assert client.get_run(first).data.params  # then they were logged
    ids = [first, open_trial(1), open_trial(1, "s.b")]
    # Trial 1 of s.a died before naming its run: found by its tags, closed.
    assert mirror.unnamed_runs_closed("s.a", 1) == 1
    assert [client.get_run(i).info.status for i in ids] == ["RUNNING", "FAILED", "RUNNING"]
    assert mirror.unnamed_runs_closed("s.a", 1) == 0  # closed once
