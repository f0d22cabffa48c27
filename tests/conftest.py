"""Shared fixtures: a small real slice of easy-VQA and tiny parameters."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
torch.set_num_threads(2)

TINY_MODEL = {
    "preset": "tiny",
    "presets": {
        "tiny": {
            "vision": {"image_size": 64, "patch_size": 16, "stem_channels": [8, 16], "dim": 32, "depth": 1, "heads": 2},
            "text": {"dim": 32, "depth": 1, "heads": 2},
            "fusion": {"kind": "hybrid", "dim": 32, "depth": 1, "heads": 2},
            "heads": {"answer": {"type": "classification", "hidden": 32}},
        }
    },
}


@pytest.fixture(scope="session")
def ingestion_params() -> dict:
    return {
        "source": "easy_vqa",
        "val_fraction": 0.1,
        "seed": 0,
        "image_size": 64,
        "in_memory_images": True,
        "max_images_per_split": 20,
    }


@pytest.fixture
def tasks_params() -> dict:
    """The project's task definitions (conf/base/parameters_tasks.yml) with `answer`
    alone active, as the `samples` fixture has no derived columns (tests/test_run.py
    runs the project's default task set through a real session)."""
    import copy
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "conf/base/parameters_tasks.yml"
    return {**copy.deepcopy(yaml.safe_load(path.read_text())["tasks"]), "active": ["answer"]}


@pytest.fixture(scope="session")
def tokenization_params() -> dict:
    return {"vocab_size": 200, "min_frequency": 1, "max_length": 16}


@pytest.fixture
def training_params(tmp_path) -> dict:
    return {
        "epochs": 2,
        "images_per_batch": 4,
        "lr": 3e-3,
        "warmup_steps": 2,
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "checkpoint_every": 3,
        "progress_bar": False,
        "log_every": 1,
    }


@pytest.fixture
def model_params() -> dict:
    import copy

    return copy.deepcopy(TINY_MODEL)


@pytest.fixture(scope="session")
def easy_vqa_raw() -> tuple:
    """(raw_annotations, raw_images) of easy-VQA, loaded through the base catalog's entries."""
    from layouts import load_raw

    return load_raw("easy_vqa")


@pytest.fixture(scope="session")
def samples(easy_vqa_raw, ingestion_params):
    from multimodal_doubleloop.pipelines.ingestion.nodes import ingest_samples

    return ingest_samples(*easy_vqa_raw, ingestion_params)


@pytest.fixture(scope="session")
def images(samples, easy_vqa_raw, ingestion_params):
    from multimodal_doubleloop.pipelines.ingestion.nodes import decode_images

    return decode_images(samples, easy_vqa_raw[1], ingestion_params)


@pytest.fixture(scope="session")
def tokenized(samples, tokenization_params):
    from multimodal_doubleloop.models.starting_point import StartingPoint
    from multimodal_doubleloop.pipelines.tokenization.nodes import (
        build_answer_vocab,
        encode_texts,
        fit_tokenizer,
    )

    tokenizer = fit_tokenizer(samples, StartingPoint(), tokenization_params)
    return {
        "tokenizer": tokenizer,
        "encoded_texts": encode_texts(samples, tokenizer, tokenization_params),
        "answer_vocab": build_answer_vocab(samples),
    }


def training_inputs(samples, images, tokenized, model_params, training_params, **extra) -> dict:
    """The catalog entries a training run reads (`TRAINING_INPUTS`), plus `extra`, and
    last the starting point (random init unless `extra` names one)."""
    from multimodal_doubleloop.models.starting_point import StartingPoint

    inputs = {
        "samples": samples,
        "images": images,
        "encoded_texts": tokenized["encoded_texts"],
        "answer_vocab": tokenized["answer_vocab"],
        "tokenizer": tokenized["tokenizer"],
        "params:model": model_params,
        "params:training": training_params,
        **extra,
    }
    inputs["initial_weights"] = inputs.pop("initial_weights", StartingPoint())
    return inputs


def run_pipeline(pipeline, inputs: dict, datasets: dict | None = None):
    """Run `pipeline` with SequentialRunner on an in-memory catalog (plus `datasets`,
    real ones by name); return the catalog holding every dataset, intermediate outputs
    included (the runner would release them)."""
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    class KeptDataset(MemoryDataset):
        def _release(self) -> None:
            pass

    if "initial_weights" in pipeline.inputs() and "initial_weights" not in inputs:
        from multimodal_doubleloop.models.starting_point import StartingPoint

        inputs = {**inputs, "initial_weights": StartingPoint()}  # random init, as the base catalog's entry
    catalog = DataCatalog({k: KeptDataset(v, copy_mode="assign") for k, v in inputs.items()})
    for name, dataset in (datasets or {}).items():
        catalog[name] = dataset
    for name in pipeline.datasets() - set(inputs) - set(datasets or {}):
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(pipeline, catalog)
    return catalog


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory):
    """A copy of the project (conf, notebooks) after one `kedro run --pipelines=train
    --env test`, with its own data/, mlflow.db and mlruns/: the MLflow model it logged
    is what the serving, CLI and notebook tests use. The run is a subprocess: an
    in-process one would leave kedro-mlflow's runs on MLflow's active-run stack
    (its before_node_run pushes the run once per node), and a later session in the
    same process would log into them."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace
    from urllib.parse import urlparse

    import mlflow

    source = Path(__file__).resolve().parents[1]
    path = tmp_path_factory.mktemp("trained_project")
    shutil.copytree(source / "conf", path / "conf", ignore=shutil.ignore_patterns("local"))
    (path / "conf" / "local").mkdir()
    shutil.copytree(source / "notebooks", path / "notebooks")
    shutil.copy(source / "pyproject.toml", path / "pyproject.toml")
    (path / "src").mkdir()  # the package itself is installed (pip install -e .)
    (path / "data").mkdir()
    kedro = Path(sys.executable).parent / "kedro"
    command = [kedro, "run", "--pipelines", "train", "--env", "test"]
    result = subprocess.run(command, cwd=path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tracking_uri = f"sqlite:///{path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("multimodal_doubleloop").experiment_id
    (run,) = client.search_runs([experiment])
    (model,) = client.search_logged_models([experiment])
    return SimpleNamespace(
        path=path,
        tracking_uri=tracking_uri,
        run_id=run.info.run_id,
        model_uri=f"runs:/{run.info.run_id}/model",
        model_dir=Path(urlparse(model.artifact_location).path),  # MLmodel, artifacts/, examples
    )


@pytest.fixture
def train_setup(samples, images, tokenized, model_params):
    """(tiny model config, train split, image store) for tests that drive the loop."""
    from tokenizers import Tokenizer

    from multimodal_doubleloop.data.batching import encoded_split
    from multimodal_doubleloop.data.images import image_store
    from multimodal_doubleloop.models import resolve_model_config

    config = resolve_model_config(
        model_params,
        Tokenizer.from_str(tokenized["tokenizer"]).get_vocab_size(),
        16,
        len(tokenized["answer_vocab"]),
    )
    split = encoded_split(samples, tokenized["encoded_texts"], images["image_ids"], tokenized["answer_vocab"], "train")
    return config, split, image_store(images)
