"""Project hooks: check every parameter before anything runs; log versioned catalog
files to the active MLflow run.

kedro-mlflow's `MlflowArtifactDataset` cannot wrap a *versioned* dataset under
Kedro 1.x lazy catalogs (the wrapper gets its own save version and the catalog
refuses it), so versioned artifacts say `metadata: {mlflow_artifact_path: ...}`
and this hook logs the exact file that was just saved.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


class MlflowVersionedArtifactHooks:
    def __init__(self):
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data, node) -> None:
        if self._catalog is None or mlflow.active_run() is None:
            return
        dataset = self._catalog.get(dataset_name)
        artifact_path = (getattr(dataset, "metadata", None) or {}).get("mlflow_artifact_path")
        if artifact_path is None:
            return
        path = Path(str(dataset._get_versioned_path(dataset.resolve_save_version())))
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
        logger.info("Logged %s to MLflow as %s/%s", path, artifact_path, path.name)


class ParameterCheckHooks:
    """Build every stage's config from the parameters (`--params` included) as soon as
    the Kedro context exists: a wrong key or value fails in seconds, naming the key,
    before the first node runs."""

    @hook_impl
    def after_context_created(self, context) -> None:
        from ..pipelines.parameters import check_parameters

        check_parameters(context.params)
