"""One file of a logged MLflow model, read through the dataset type that wrote it: how
the batch `inference` pipeline scores with the registry's model (e.g.
`models:/multimodal_doubleloop@champion`) instead of the project's own packaged copy.

    inference_model:
      type: multimodal_doubleloop.io.MlflowModelArtifactDataset
      model_uri: models:/multimodal_doubleloop@champion   # or runs:/<run_id>/model
      artifact: model.pt                                  # under the model's artifacts/
      dataset: multimodal_doubleloop.io.ServingModelDataset

The model is downloaded (once per URI and process) from the tracking server the
project's `mlflow.yml` names; the dataset is read-only.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from kedro.io.core import parse_dataset_definition


def download_model(model_uri: str) -> Path:
    """A local copy of the MLflow model at `model_uri` on the current tracking server
    (resolved once per process, so an alias that moves mid-run does not mix two models)."""
    import mlflow

    return _download(model_uri, mlflow.get_tracking_uri())


@functools.lru_cache(maxsize=8)
def _download(model_uri: str, tracking_uri: str) -> Path:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except mlflow.exceptions.MlflowException as exc:
        raise DatasetError(
            f"cannot download the MLflow model {model_uri!r} from {mlflow.get_tracking_uri()}: {exc}. "
            "Train one first (`kedro run --pipeline=train` registers multimodal_doubleloop@champion)"
        ) from exc


class MlflowModelArtifactDataset(AbstractDataset[None, Any]):
    def __init__(self, model_uri: str, artifact: str, dataset: str | dict, metadata: dict[str, Any] | None = None):
        self._model_uri = model_uri
        self._artifact = artifact
        config = {"type": dataset} if isinstance(dataset, str) else dict(dataset)
        self._dataset_class, self._dataset_args = parse_dataset_definition(config)
        self.metadata = metadata

    def load(self) -> Any:
        path = download_model(self._model_uri) / "artifacts" / self._artifact
        if not path.exists():
            raise DatasetError(f"the MLflow model {self._model_uri!r} has no artifacts/{self._artifact}")
        return self._dataset_class(filepath=str(path), **self._dataset_args).load()

    def save(self, data: Any) -> None:
        raise DatasetError(f"MlflowModelArtifactDataset {self._model_uri!r} is read-only: the model is logged by a train run")

    def _describe(self) -> dict[str, Any]:
        return {"model_uri": self._model_uri, "artifact": self._artifact}
