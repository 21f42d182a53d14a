"""How the MLflow UI (3.x) shows a sweep: as a model-training experiment, on its trials' runs.

MLflow 3 opens an experiment on its GenAI overview (traces) unless the page is asked for the machine-learning
workflow. The sweep's experiment is tagged as model training (``mlflow.experimentKind``) and holds a saved
view of its runs (a ``mlflow.sharedViewState.<key>`` tag, the form of the UI's own "share view" links): the
trial runs only, the columns that matter, best dev first, and charts that compare learning rates within a
ratio. ``runs_url`` is the link that opens it.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from rmask_tune.runstore.names import BEST_DEV, ROLE_TAG, ROLE_TRIAL, TEST

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # the UI's "Machine learning" experiment type
VIEW_KEY = "rmask-tune-runs"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
# The runs table's columns, in the UI's canonical column keys.
PARAM_COLUMNS = ("method", "ratio", "lr", "seed")
METRIC_COLUMNS = (BEST_DEV, TEST)
SECTION_ID = "rmask-lr-section"


def columns() -> list[str]:
    """The runs table's default columns: method, ratio, lr, seed, then best dev and test metric."""
    return [f"params.`{p}`" for p in PARAM_COLUMNS] + [f"metrics.`{m}`" for m in METRIC_COLUMNS]


def view_state() -> dict:
    """The saved view: search facets (trial runs, best dev first) and UI state (columns, charts, all runs shown)."""
    chart = {"runsCountToCompare": 1000, "metricSectionId": SECTION_ID, "deleted": False, "isGenerated": False}
    charts = [
        {**chart, "uuid": "rmask-ratio-lr-dev", "type": "PARALLEL", "displayName": "ratio, learning rate -> dev, test",
         "selectedParams": ["ratio", "lr"], "selectedMetrics": list(METRIC_COLUMNS), "showAllRuns": True},
        {**chart, "uuid": "rmask-lr-dev", "type": "SCATTER", "displayName": "best dev metric by learning rate",
         "xaxis": {"key": "lr", "type": "PARAM"}, "yaxis": {"key": BEST_DEV, "type": "METRIC"}},
    ]  # fmt: skip
    section = {"uuid": SECTION_ID, "name": "Learning rate within a ratio", "display": True, "isReordered": False,
               "deleted": False, "isGenerated": False}  # fmt: skip
    return {
        "searchFilter": f"tags.`{ROLE_TAG}` = '{ROLE_TRIAL}'",
        "orderByKey": f"metrics.`{BEST_DEV}`",
        "orderByAsc": False,
        "selectedColumns": columns(),
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        "compareRunSections": [section],
    }


def mark_experiment(client, experiment_id: str) -> None:
    """Tag the experiment as model training (unless it already has a kind) and store the sweep's runs view."""
    tags = client.get_experiment(experiment_id).tags
    if EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(view_state(), separators=(",", ":")))


def runs_url(base: str, experiment_id: str, charts: bool = False) -> str:
    """The link to the experiment's runs in the saved view: the table, or with ``charts`` the chart view."""
    query = {"workflowType": "machine_learning", "viewStateShareKey": VIEW_KEY}
    if charts:
        query["compareRunsMode"] = "CHART"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"
