"""A catalog dataset that logs one nested MLflow run per entry (write-only).

`{run_name: {"tags": {...}, "params": {...}, "metrics": {name: [{"step", "value"}]}}}`
becomes one child run each under the active (kedro-mlflow) run, so a study's cells
are separate, comparable runs while nodes stay free of MLflow calls.
"""

from __future__ import annotations

import time
from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError
from mlflow.entities import Metric, Param, RunTag


class MlflowNestedRunsDataset(AbstractDataset[dict, dict]):
    def __init__(self, metadata: dict[str, Any] | None = None):
        self.metadata = metadata

    def save(self, data: dict) -> None:
        for name, run in data.items():
            with mlflow.start_run(run_name=name, nested=mlflow.active_run() is not None) as active:
                now = int(time.time() * 1000)
                metrics = [
                    Metric(key, float(p["value"]), now, int(p["step"]))
                    for key, points in run.get("metrics", {}).items()
                    for p in points
                ]
                client = mlflow.MlflowClient()
                client.log_batch(
                    active.info.run_id,
                    params=[Param(k, str(v)) for k, v in run.get("params", {}).items()],
                    tags=[RunTag(k, str(v)) for k, v in run.get("tags", {}).items()],
                )
                for start in range(0, len(metrics), 1000):  # MLflow's per-batch limit
                    client.log_batch(active.info.run_id, metrics=metrics[start : start + 1000])

    def load(self) -> dict:
        raise DatasetError("MlflowNestedRunsDataset is write-only; read the runs in MLflow")

    def _describe(self) -> dict[str, Any]:
        return {}
