"""One real `kedro run --pipeline=train --env test` (a KedroSession in a subprocess), with its own
MLflow sqlite store, in a copy of the project's conf so nothing touches ./data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path):
    shutil.copytree(PROJECT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    shutil.copy(PROJECT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "src").mkdir()  # the package itself is installed (pip install -e .)
    (tmp_path / "data").mkdir()
    return tmp_path  # kedro runs with cwd=tmp_path: the sqlite MLflow store is tmp_path/mlflow.db


def run_kedro(project: Path, pipeline: str = "train") -> None:
    """`kedro run --pipeline=<pipeline> --env test` in its own process: kedro-mlflow
    keeps an MLflow run active per process, which would leak into other tests' stores."""
    proc = subprocess.run(
        [sys.executable, "-m", "kedro", "run", f"--pipeline={pipeline}", "--env", "test"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_train_pipeline_end_to_end(project):
    run_kedro(project)
    metrics = json.loads((project / "data/08_reporting/metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert {"test_answer_accuracy_yes_no", "test_answer_accuracy_color", "test_answer_accuracy_shape"} <= set(metrics)
    # the default task set: answer (primary: test_accuracy is its accuracy) + attributes
    assert metrics["test_answer_accuracy"] == metrics["test_accuracy"]
    assert 0.0 <= metrics["test_attributes_map"] <= 1.0
    assert (project / "data/08_reporting/confusion_matrix.png").stat().st_size > 1000
    versions = list((project / "data/06_models/model.pt").iterdir())
    assert len(versions) == 1 and (versions[0] / "model.pt").exists()
    assert list((project / "data/06_models/tokenizer.json").glob("*/tokenizer.json"))

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["multimodal_doubleloop"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run.data.params["training.lr"] == "0.001"  # parameters are logged, flattened
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "tokenizer")}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "reporting")}
    assert {"tokenizer/tokenizer.json", "tokenizer/answer_vocab.json", "reporting/confusion_matrix.png"} <= artifacts


@pytest.mark.slow
def test_torchrun_entry_point_trains_from_the_catalog(project):
    for name in ("ingestion", "tokenization"):
        run_kedro(project, name)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "multimodal_doubleloop.commands.torchrun", "--env", "test", "--project", str(project)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((project / "data/08_reporting/training_history.json").read_text())
    assert len(history) == 1 and history[0]["train_loss"] > 0
    assert len(list((project / "data/06_models/model.pt").iterdir())) == 1
