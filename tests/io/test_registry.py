"""The champion rule on a real MLflow store: every train run's model is a new version;
the `champion` alias moves only to a version whose test accuracy beats the champion's."""

from __future__ import annotations

import mlflow
import pytest

from multimodal_doubleloop.io.hooks import run_name
from multimodal_doubleloop.io.registry import CHAMPION, TEST_SET_TAG, register_and_promote


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture
def client(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("registry_test")
    yield mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def _train_run(accuracy: float | None, test_set: str | None = None, source: str | None = None) -> str:
    with mlflow.start_run() as run:
        if accuracy is not None:
            mlflow.log_metric("test_accuracy", accuracy)
        if test_set is not None:
            mlflow.set_tag(TEST_SET_TAG, test_set)
        if source is not None:
            mlflow.set_tag("data_source", source)
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
    return run.info.run_id


def test_champion_moves_only_to_a_better_version(client):
    decisions = []
    for accuracy in (0.90, 0.85, 0.95, 0.95):
        run_id = _train_run(accuracy)
        decisions.append(register_and_promote(client, run_id, f"runs:/{run_id}/model", "mm"))
    assert [d["version"] for d in decisions] == [1, 2, 3, 4]
    assert [d["promoted"] for d in decisions] == [True, False, True, False]  # a tie does not move it
    assert int(client.get_model_version_by_alias("mm", CHAMPION).version) == 3
    tags = client.get_model_version("mm", "2").tags
    assert tags["promoted_to_champion"] == "false" and tags["champion_before"].startswith("v1 (0.9")
    assert tags["test_accuracy"] == "0.850000"


def test_a_version_scored_on_another_test_set_does_not_displace_the_champion(client):
    """An ImageFolder run at 1.0 must not replace an easy-VQA champion at 0.99: the
    figures are on other test sets. On the champion's test set the rule is as before."""
    decisions = [
        register_and_promote(client, run_id, f"runs:/{run_id}/model", "mm")
        for run_id in (_train_run(0.99, "a" * 64), _train_run(1.0, "b" * 64), _train_run(0.995, "a" * 64))
    ]
    assert [d["promoted"] for d in decisions] == [True, False, True]
    tags = client.get_model_version("mm", "2").tags
    assert tags["promoted_to_champion"] == "false"
    assert tags["champion_decision"] == f"not compared: scored on another test set ({'b' * 12}) than champion v1 ({'a' * 12})"
    assert "champion_decision" not in client.get_model_version("mm", "3").tags


def test_a_champion_from_before_the_test_set_tag_is_compared_by_source(client):
    """An existing store's champion has no test-set tag: a run on other data still must
    not displace it, and a run on the same source compares as before."""
    runs = [_train_run(0.99, None, "easy_vqa"), _train_run(1.0, "b" * 64, "image_folder"),
            _train_run(0.995, "a" * 64, "easy_vqa")]
    assert [register_and_promote(client, r, f"runs:/{r}/model", "mm")["promoted"] for r in runs] == [True, False, True]
    assert "source easy_vqa" in client.get_model_version("mm", "2").tags["champion_decision"]


def test_a_first_version_without_test_accuracy_is_registered_not_champion(client):
    run_id = _train_run(None)
    assert register_and_promote(client, run_id, f"runs:/{run_id}/model", "mm")["promoted"] is False


def test_run_names_say_what_differs():
    params = {"ingestion": {"source": "table"}, "model": {"preset": "cpu"},
              "training": {"lr": 0.01, "controller": {"method": "double_loop"}}}
    assert run_name("train", params) == "train table cpu double_loop lr=0.01"
