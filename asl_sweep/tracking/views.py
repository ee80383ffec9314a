"""The MLflow UI view a study opens on: its trial runs, flat (not folded under their stage),
best first, with the columns a person compares trials by. MLflow keeps a shareable view
as an experiment tag (`mlflow.sharedViewState.<key>`, the state its own "Share" button
saves); the address `asl-sweep ui` prints names the key (`?viewStateShareKey=<key>`)."""

from __future__ import annotations

import json
from collections.abc import Iterable

SHARED_VIEW_TAG = "mlflow.sharedViewState."
TRIALS_VIEW = "asl-sweep-trials"
# The experiment kind MLflow's UI reads to open an experiment on its model-training tabs
# (runs, charts), not on its GenAI ones (traces).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
# The metric MLflow's chart view draws first (a line per run: one per trial).
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"
# What each trial run says about itself (tags the search sets; see search/trial.py).
TRIAL_TAGS = ("decision", "role", "state", "stage", "repeat")


def column(kind: str, name: str) -> str:
    """A column of MLflow's runs table, as its UI names it: kind.`name`."""
    return f"{kind}.`{name}`"


def trials_view(metrics: Iterable[str], params: Iterable[str]) -> dict:
    """Every trial run of the study, flat, best by the first stage metric first, with the
    stage metrics (each trial's best epoch), what each trial is, and the settings searched;
    the chart view opens on the charts of the first stage metric (by epoch, a line per
    trial, every trial; and its best per trial), the others a search away."""
    metrics = list(dict.fromkeys(metrics))
    return {
        "searchFilter": "tags.kind = 'trial'",
        "orderByKey": column("metrics", f"best_{metrics[0]}"),
        "orderByAsc": metrics[0].endswith("loss"),
        "selectedColumns": [
            *(column("metrics", f"best_{m}") for m in metrics),
            *(column("tags", t) for t in TRIAL_TAGS),
            *(column("params", p) for p in dict.fromkeys(params)),
        ],
        "chartsSearchFilter": metrics[0],
        # MLflow's charts draw the first 10 runs unless told otherwise: every trial, pruned
        # ones too, is drawn.
        "runsHiddenMode": "SHOW_ALL",
    }


def dump(view: dict) -> str:
    return json.dumps(view, separators=(",", ":"))
