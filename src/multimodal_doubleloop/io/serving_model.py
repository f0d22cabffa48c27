"""The model the inference pipeline serves: the trained-model file, loaded as a
`models.serving.ServingModel` (network built once, on the best device).

Saving writes the same `.pt` as `TorchModelDataset` (the train run's
`package_for_serving` refreshes it); loading builds the network, so kedro-mlflow's
pyfunc model builds it once, at model load, never per request.
"""

from __future__ import annotations

from ..models.serving import ServingModel
from ..training.precision import resolve_device
from .torch_model import TorchModelDataset


class ServingModelDataset(TorchModelDataset):
    def load(self) -> ServingModel:  # type: ignore[override]
        return ServingModel(super().load(), resolve_device("auto"))
