"""The model the inference pipeline serves: the trained-model file, loaded as a
`models.serving.ServingModel` (network built once, on the best device).

Saving writes the same `.pt` as `TorchModelDataset` (the train run's
`package_for_serving` refreshes it); loading builds the network, so kedro-mlflow's
pyfunc model builds it once, at model load, never per request. Loading it also turns
Kedro's per-node INFO logging down to warnings (`PER_REQUEST_LOGGERS`): where this
model is loaded, requests follow.
"""

from __future__ import annotations

import logging

from ..models.serving import ServingModel
from ..training.precision import resolve_device
from .torch_model import TorchModelDataset

# Loggers of what runs once per request in a served model: kedro-mlflow runs the inference
# pipeline for each request, and their INFO lines (about fifteen per request, through
# Rich) took 23 of 40 ms of a single-row request in process. Warnings still show.
PER_REQUEST_LOGGERS = ("kedro.runner", "kedro.io", "kedro.pipeline", "kedro_mlflow.mlflow")


class ServingModelDataset(TorchModelDataset):
    def load(self) -> ServingModel:  # type: ignore[override]
        for name in PER_REQUEST_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        return ServingModel(super().load(), resolve_device("auto"))
