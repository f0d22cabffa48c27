"""`MlflowMetricsBatchDataset` logs what kedro-mlflow's dataset logs, in batches."""

import mlflow
import pytest
from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from multimodal_doubleloop.io import MlflowMetricsBatchDataset


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(uri)
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def curves(points: int) -> dict:
    return {
        "step_loss": [{"step": 20 * i, "value": 1.0 / (i + 1)} for i in range(points)],
        "controller/lr_scale/vision": [{"step": 16 * i, "value": 0.5 + i} for i in range(points)],
        "val_accuracy": {"step": 7, "value": 0.99},
    }


def test_saves_what_kedro_mlflow_saves_and_loads_it_back(tracking):
    data = curves(MAX_METRICS_PER_BATCH)  # 2001 points: three batches
    runs = {}
    for name, cls in (("ours", MlflowMetricsBatchDataset), ("kedro_mlflow", MlflowMetricsHistoryDataset)):
        with mlflow.start_run() as run:
            cls(prefix="").save(data)
        runs[name] = cls(run_id=run.info.run_id).load()  # prefix None: every metric of the run
    assert runs["ours"] == runs["kedro_mlflow"]
    assert len(runs["ours"]["step_loss"]) == MAX_METRICS_PER_BATCH
    assert runs["ours"]["val_accuracy"] == {"step": 7, "value": 0.99}


def test_a_repeated_point_is_kept_as_kedro_mlflow_keeps_it(tracking):
    with mlflow.start_run() as run:
        MlflowMetricsBatchDataset().save({"loss": [{"step": 1, "value": 1.0}] * 2})
    assert len(tracking.get_metric_history(run.info.run_id, "loss")) == 2


def test_prefix_and_explicit_run_id(tracking):
    run = tracking.create_run(tracking.create_experiment("metrics"))
    MlflowMetricsBatchDataset(run_id=run.info.run_id, prefix="curves").save(curves(3))
    history = tracking.get_metric_history(run.info.run_id, "curves.step_loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (20, 0.5), (40, 1 / 3)]
    assert mlflow.active_run() is None  # logged to the run named, none started


def test_a_malformed_metric_names_the_expected_shape(tracking):
    with mlflow.start_run(), pytest.raises(Exception, match="Unexpected metric value"):
        MlflowMetricsBatchDataset().save({"loss": 0.5})
