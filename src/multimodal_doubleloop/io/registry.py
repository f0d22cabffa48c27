"""The MLflow model lifecycle of a `train` run: each run's model becomes a version of
the registered model `multimodal_doubleloop`, and the alias `champion` moves to it
only when its `test_accuracy` beats the current champion's. Either way the version is
tagged with its figure and the decision, so `mlflow ui` shows why.

Serve the champion with `mlflow models serve -m models:/multimodal_doubleloop@champion`.
"""

from __future__ import annotations

import logging

import mlflow
from mlflow.exceptions import MlflowException

logger = logging.getLogger(__name__)

REGISTERED_MODEL = "multimodal_doubleloop"
CHAMPION = "champion"
METRIC = "test_accuracy"


def _accuracy(client: mlflow.MlflowClient, run_id: str) -> float | None:
    return client.get_run(run_id).data.metrics.get(METRIC)


def register_and_promote(client: mlflow.MlflowClient, run_id: str, model_uri: str, name: str = REGISTERED_MODEL) -> dict:
    """Register `model_uri` (logged by run `run_id`) as a new version of `name`; move the
    champion alias to it when its test accuracy is higher than the champion's (or
    there is no champion yet). Returns what was decided."""
    version = mlflow.register_model(model_uri, name).version
    accuracy = _accuracy(client, run_id)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
        best = _accuracy(client, champion.run_id)
    except MlflowException:  # no champion yet
        champion, best = None, None
    promote = accuracy is not None and (best is None or accuracy > best)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    tags = {
        METRIC: "none" if accuracy is None else f"{accuracy:.6f}",
        "champion_before": "none" if champion is None else f"v{champion.version} ({best})",
        "promoted_to_champion": str(promote).lower(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    logger.info(
        "Registered %s version %s (%s %s); champion %s",
        name, version, METRIC, accuracy,
        f"moved to v{version}" if promote else f"stays v{champion.version} ({METRIC} {best})",
    )
    return {"version": int(version), "promoted": promote, METRIC: accuracy, "champion_accuracy": best}
