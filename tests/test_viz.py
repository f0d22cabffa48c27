"""`kedro viz build` on a copy of the project: the DAG it exports has the stage nodes,
named as in the pipelines, and the dataset edges between them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parents[1]


def _graph(api_file: Path) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """Node names by type and edges as (source name, target name)."""
    data = json.loads(api_file.read_text())
    names = {n["id"]: n["name"] for n in data["nodes"]}
    kinds = {n["name"]: n["type"] for n in data["nodes"]}
    return kinds, {(names[e["source"]], names[e["target"]]) for e in data["edges"]}


@pytest.fixture(scope="module")
def viz_build(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("viz_project")
    shutil.copytree(PROJECT / "conf", path / "conf", ignore=shutil.ignore_patterns("local"))
    (path / "conf" / "local").mkdir()
    shutil.copy(PROJECT / "pyproject.toml", path / "pyproject.toml")
    (path / "src").mkdir()
    kedro = Path(sys.executable).parent / "kedro"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    result = subprocess.run([kedro, "viz", "build"], cwd=path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return path / "build" / "api"


def test_train_dag_has_every_stage_and_its_edges(viz_build):
    kinds, edges = _graph(viz_build / "main")  # the default pipeline: train
    stages = {
        "ingestion": ["ingest_samples", "decode_images"],
        "tokenization": ["fit_tokenizer", "encode_texts", "build_answer_vocab"],
        "training": ["train_model"],
        "evaluation": ["evaluate_model"],
        "packaging for serving": ["package_for_serving", "make_example_requests"],
    }
    for nodes in stages.values():
        for node in nodes:
            assert kinds.get(node) == "task", node
    flow = [
        ("raw_annotations", "ingest_samples"),
        ("raw_images", "ingest_samples"),
        ("raw_images", "decode_images"),
        ("params:ingestion", "ingest_samples"),
        ("ingest_samples", "samples"),
        ("samples", "decode_images"),
        ("decode_images", "images"),
        ("samples", "fit_tokenizer"),
        ("fit_tokenizer", "tokenizer"),
        ("tokenizer", "encode_texts"),
        ("encode_texts", "encoded_texts"),
        ("build_answer_vocab", "answer_vocab"),
        ("images", "train_model"),
        ("encoded_texts", "train_model"),
        ("tokenizer", "train_model"),
        ("answer_vocab", "train_model"),
        ("train_model", "trained_model"),
        ("trained_model", "evaluate_model"),
        ("evaluate_model", "metrics"),
        ("trained_model", "package_for_serving"),
        ("package_for_serving", "inference_model"),
        ("make_example_requests", "inference_requests"),
    ]
    missing = [edge for edge in flow if edge not in edges]
    assert not missing, missing


def test_serving_and_batch_inference_dags(viz_build):
    kinds, edges = _graph(viz_build / "pipelines" / "inference")  # a request table, in batches
    assert kinds.get("score_requests") == "task"
    for edge in [("batch_requests", "score_requests"), ("inference_model", "score_requests"), ("score_requests", "batch_predictions")]:  # fmt: skip
        assert edge in edges, edge
    kinds, edges = _graph(viz_build / "pipelines" / "serving")  # what the MLflow model runs per request
    assert [n for n in ("preprocess_requests", "predict", "postprocess_predictions") if kinds.get(n) != "task"] == []  # fmt: skip
    for edge in [
        ("inference_requests", "preprocess_requests"),
        ("inference_tokenizer", "preprocess_requests"),
        ("preprocess_requests", "inference_batch"),
        ("inference_batch", "predict"),
        ("inference_model", "predict"),
        ("predict", "inference_outputs"),
        ("inference_outputs", "postprocess_predictions"),
        ("params:inference.top_k", "postprocess_predictions"),
        ("postprocess_predictions", "predictions"),
    ]:
        assert edge in edges, edge


def test_stages_are_namespaces_and_datasets_have_layers(viz_build):
    """Each stage collapses into one box, and the layers run raw -> reporting in order."""
    data = json.loads((viz_build / "main").read_text())
    assert {"ingestion", "tokenization", "training", "evaluation", "packaging"} <= set(data["modular_pipelines"])
    tasks = {n["name"]: n["modular_pipelines"] for n in data["nodes"] if n["type"] == "task"}
    assert tasks["ingest_samples"] == ["ingestion"] and tasks["train_model"] == ["training"]
    layers = {n["name"]: n.get("layer") for n in data["nodes"] if n["type"] == "data"}
    assert layers["raw_annotations"] == layers["raw_images"] == "raw"
    assert (layers["samples"], layers["images"], layers["trained_model"], layers["metrics"]) == (
        "intermediate", "primary", "models", "reporting"
    )
    unlayered = sorted(name for name, layer in layers.items() if layer is None)
    assert not unlayered, unlayered
    # kedro-viz orders layers only when they form a DAG (it shows none otherwise)
    order = data["layers"]
    assert order[0] == "raw" and order[-1] == "reporting" and order.index("primary") < order.index("models")
