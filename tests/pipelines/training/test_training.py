import torch
from conftest import run_pipeline, training_inputs

from multimodal_doubleloop.pipelines.training import create_pipeline
from multimodal_doubleloop.pipelines.training.nodes import train_model


def _inputs(samples, images, tokenized, model_params, training_params, tasks_params=None):
    return training_inputs(samples, images, tokenized, model_params, training_params, **{"params:tasks": tasks_params})


def test_train_model_learns_and_reports(samples, images, tokenized, model_params, training_params, tasks_params):
    inputs = _inputs(samples, images, tokenized, model_params, {**training_params, "epochs": 3}, tasks_params)
    trained, curves, history = train_model(*[inputs[k] for k in inputs])
    assert set(trained) == {"config", "state_dict", "labels"}
    assert trained["labels"] == {"answer": list(tokenized["answer_vocab"])}  # class names per head, for serving
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert [p["step"] for p in curves["val_accuracy"]] == [0, 1, 2]
    assert all(torch.isfinite(v).all() for v in trained["state_dict"].values())


def test_training_pipeline_on_memory_catalog(samples, images, tokenized, model_params, training_params, tasks_params):
    catalog = run_pipeline(
        create_pipeline(), _inputs(samples, images, tokenized, model_params, training_params, tasks_params)
    )
    assert catalog.load("trained_model")["config"]["heads"]["answer"]["num_outputs"] == len(
        tokenized["answer_vocab"]
    )
