"""The MLflow model lifecycle of a `train` run: each run's model becomes a version of
the registered model `multimodal_doubleloop`, and the alias `champion` moves to it
only when its `test_accuracy` beats the current champion's on the same test set (a
run on other data, e.g. `--env image_folder`, never displaces an easy-VQA champion
with a figure that does not compare). Either way the version is tagged with its figure
and the decision, so `mlflow ui` shows why.

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
TEST_SET_TAG = "test_set_sha256"  # a run's test rows (set by hooks.MlflowRunHooks)
SOURCE_TAG = "data_source"  # its data's source (runs from before the test-set tag have it)


def _scored(client: mlflow.MlflowClient, run_id: str) -> tuple[float | None, dict]:
    """A run's test accuracy and what it was measured on (test-set fingerprint, source)."""
    data = client.get_run(run_id).data
    return data.metrics.get(METRIC), {k: data.tags.get(k) for k in (TEST_SET_TAG, SOURCE_TAG)}


def _comparable(run: dict, champion: dict) -> bool:
    """Two runs' test accuracies compare when they were measured on the same test set;
    against a champion from before the test-set tag, on the same data source; runs
    that record neither compare as they always did."""
    for key in (TEST_SET_TAG, SOURCE_TAG):
        if run.get(key) and champion.get(key):
            return run[key] == champion[key]
    return True


def register_and_promote(client: mlflow.MlflowClient, run_id: str, model_uri: str, name: str = REGISTERED_MODEL) -> dict:
    """Register `model_uri` (logged by run `run_id`) as a new version of `name`; move the
    champion alias to it when its test accuracy is higher than the champion's (or
    there is no champion yet). Returns what was decided."""
    version = mlflow.register_model(model_uri, name).version
    accuracy, measured = _scored(client, run_id)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
        best, champion_measured = _scored(client, champion.run_id)
    except MlflowException:  # no champion yet
        champion, best, champion_measured = None, None, {}
    comparable = _comparable(measured, champion_measured)
    promote = accuracy is not None and comparable and (best is None or accuracy > best)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    tags = {
        METRIC: "none" if accuracy is None else f"{accuracy:.6f}",
        "champion_before": "none" if champion is None else f"v{champion.version} ({best})",
        "promoted_to_champion": str(promote).lower(),
    }
    if not comparable:
        what = lambda m: (m.get(TEST_SET_TAG) or "")[:12] or f"source {m.get(SOURCE_TAG)}"  # noqa: E731
        tags["champion_decision"] = (
            f"not compared: scored on another test set ({what(measured)}) than champion "
            f"v{champion.version} ({what(champion_measured)})"
        )
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if promote:
        logger.info("Registered %s version %s (%s %s); champion moved to v%s", name, version, METRIC, accuracy, version)
    elif champion is None:
        logger.info("Registered %s version %s; it has no %s, so it does not become champion", name, version, METRIC)
    elif comparable:
        logger.info("Registered %s version %s (%s %s); champion stays v%s (%s %s)",
                    name, version, METRIC, accuracy, champion.version, METRIC, best)
    else:
        logger.warning(
            "Registered %s version %s (%s %s), scored on another test set than champion v%s: the champion "
            "stays. Serve this one as models:/%s/%s, or make it the champion with "
            "mlflow.MlflowClient().set_registered_model_alias(%r, %r, %s)",
            name, version, METRIC, accuracy, champion.version, name, version, name, CHAMPION, version,
        )
    return {"version": int(version), "promoted": promote, METRIC: accuracy, "champion_accuracy": best}
